"""What the unlearning-objective tests share (tests/test_unlearning_*.py): the noise schedule,
seeded generators, sklearn digits 0 (D_r) and 1 (D_f), and a class-conditional tiny UNet
pre-trained for a few dozen steps on both. Import the fixtures by name into a test module
(pytest puts tests/ on sys.path); module-scoped, so each module pre-trains once (about 4 s).
"""

import pytest
import torch

from fedsim.data.datasets import load_dataset
from fedsim.models.diffusion import NoiseSchedule
from fedsim.models.networks import build_model
from fedsim.models.train import DiffusionTask, train_local

SCHED = NoiseSchedule(100, "squaredcos_cap_v2")
SHAPE = (1, 8, 8)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_unet(state=None, conditional=True):
    """The tiny diffusers UNet (10 classes when conditional), loaded with ``state`` if given."""
    model = build_model("ddpm-tiny", SHAPE, 10, conditional=conditional, seed=0)
    if state is not None:
        model.load_state_dict(state)
    return model


@pytest.fixture(scope="module")
def digits01():
    """D_r = all train digits 0 (142), D_f = all train digits 1 (145)."""
    d = load_dataset("digits", "train")
    y = torch.from_numpy(d.labels.copy())
    return (d.images[y == 0], y[y == 0]), (d.images[y == 1], y[y == 1])


@pytest.fixture(scope="module")
def pretrained(digits01):
    """State of a conditional tiny UNet after 36 Adam steps on D_r + D_f (about 4 s)."""
    retain, forget = digits01
    model = tiny_unet()
    x, y = torch.cat([retain[0], forget[0]]), torch.cat([retain[1], forget[1]])
    train_local(model, DiffusionTask(SCHED), x, y, epochs=4, batch_size=32, lr=3e-3, generator=gen(0))
    return {k: v.clone() for k, v in model.state_dict().items()}
