"""Networks only: the eps-predictor (diffusers' UNet2DModel) and a small CNN.

Weights are all that a model holds; the noise schedule lives in diffusion.py so
that nothing but learnable tensors is averaged, compressed or attacked.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class ModelError(ValueError):
    """A model that cannot be built or loaded; one line for the user."""


class SmallCNN(nn.Module):
    """conv-relu-pool x2, adaptive pool, 2 linear layers; any input size >= 4.

    ``features(x)`` (B, 128) is the penultimate activation, used as the
    evaluator's feature space for the Frechet distance.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width}
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.head(self.body(x))

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"_class_name": "SmallCNN", **self.config}))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()},
                  str(path / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SmallCNN:
        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        config.pop("_class_name", None)
        model = cls(**config)
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model


def unet_config(size: str, image_size: int, channels: int, num_classes: int | None) -> dict:
    """UNet2DModel kwargs. "tiny" (about 0.1 M parameters, no attention) makes
    gradient-inversion attacks, which differentiate through the network twice,
    affordable on a CPU; "small" trains at useful speed on a 2-core CPU;
    "large" is a DDPM-CIFAR-like network for GPUs."""
    if image_size % 4 and size == "large" or image_size % 2:
        raise ModelError(f"image size {image_size} must be divisible by {4 if size == 'large' else 2}")
    if size == "tiny":
        blocks = (16, 32)
        down = ("DownBlock2D", "DownBlock2D")
        layers = 1
    elif size == "small" and image_size <= 16:
        blocks = (32, 64)
        down = ("DownBlock2D", "AttnDownBlock2D")
        layers = 1
    elif size == "small":
        blocks = (32, 64, 64)
        down = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
        layers = 1
    else:
        blocks = (64, 128, 256)
        down = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
        layers = 2
    up = tuple(name.replace("Down", "Up") for name in reversed(down))
    return dict(
        sample_size=image_size, in_channels=channels, out_channels=channels,
        block_out_channels=blocks, down_block_types=down, up_block_types=up,
        layers_per_block=layers, norm_num_groups=8, attention_head_dim=8,
        num_class_embeds=num_classes,
    )


def build_model(name: str, shape: tuple[int, int, int], num_classes: int, *,
                conditional: bool = False, pretrained: str = "", seed: int = 0) -> nn.Module:
    """Model registry entry point. Initial weights come from ``seed``."""
    channels, height, width = shape
    if name not in MODELS:
        raise ModelError(f"unknown model '{name}'; known: {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if pretrained:
            model = load_pretrained(pretrained)
        elif name == "cnn":
            model = SmallCNN(channels, num_classes)
        else:
            from diffusers import UNet2DModel  # on first use: CNN-only processes start ~3 s faster

            model = UNet2DModel(**unet_config(
                name.removeprefix("ddpm-"), height, channels, num_classes if conditional else None))
    if not isinstance(model, SmallCNN):  # a UNet2DModel
        cfg = model.config
        if (cfg.in_channels, cfg.sample_size) != (channels, height):
            raise ModelError(
                f"pretrained model expects {cfg.in_channels}x{cfg.sample_size}x{cfg.sample_size} "
                f"images, the dataset has {channels}x{height}x{width}")
    return model


def load_pretrained(path: str | Path) -> nn.Module:
    """A diffusers UNet2DModel directory (or a pipeline folder with ``unet/``),
    or a SmallCNN directory saved by :meth:`SmallCNN.save_pretrained`."""
    path = Path(path)
    if (path / "unet" / "config.json").is_file():
        path = path / "unet"
    config = path / "config.json"
    if not config.is_file():
        raise ModelError(f"pretrained: expected a diffusers model directory with config.json at {path}")
    if json.loads(config.read_text()).get("_class_name") == "SmallCNN":
        return SmallCNN.from_pretrained(path)
    from diffusers import UNet2DModel

    try:
        # low_cpu_mem_usage=False: the default asks for `accelerate` and warns without it
        return UNet2DModel.from_pretrained(str(path), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError) as err:
        raise ModelError(f"pretrained: cannot load a UNet2DModel from {path}: {err}") from None


def save_model(model: nn.Module, path: str | Path) -> None:
    """diffusers format (config.json + safetensors) for both model kinds."""
    model.save_pretrained(str(path))


MODELS = ("ddpm-tiny", "ddpm-small", "ddpm-large", "cnn")
