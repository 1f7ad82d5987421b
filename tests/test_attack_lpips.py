"""attacks/lpips.py: LPIPS from a local AlexNet checkpoint (here one with random weights, in
torchvision's layout) equals LPIPS written out by hand from Zhang et al.'s definition, and the
attack runner reports it for the attack and its baselines only when the file is given."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_attack_scoring import PID, recorded_run, replay

from attacks.base import AttackError
from attacks.config import load_attack_config
from attacks.lpips import alexnet_features, load_lpips, lpips
from fedsim.config import ConfigError

pytestmark = pytest.mark.usefixtures("task_identity", "one_thread")

# torchvision's AlexNet features: (state-dict index, stride, padding); a max-pool 3/2 before conv 3 and 6
CONVS = ((0, 4, 2), (3, 1, 2), (6, 1, 1), (8, 1, 1), (10, 1, 1))
SHIFT, SCALE = torch.tensor([-0.030, -0.088, -0.188]), torch.tensor([0.458, 0.448, 0.450])


def backbone_file(tmp_path, seed: int = 0):
    """A torchvision-layout AlexNet state dict (features + a classifier entry) with random weights."""
    torch.manual_seed(seed)
    state = {f"features.{k}": v for k, v in alexnet_features().state_dict().items()}
    state["classifier.1.weight"] = torch.randn(16, 9216)
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(state, path)
    return path, state


def by_hand(state: dict, lins: list[torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d(a, b) = sum_l mean_hw || w_l * (u_l(a) - u_l(b)) ||^2, u_l: channel-unit-normalised ReLU of conv l,
    on inputs mapped [0, 1] -> [-1, 1] and through the scaling layer (Zhang et al. 2018, Eq. 1)."""
    def taps(x):
        h, out = (2 * x - 1 - SHIFT[None, :, None, None]) / SCALE[None, :, None, None], []
        for n, (i, stride, pad) in enumerate(CONVS):
            if n in (1, 2):
                h = F.max_pool2d(h, 3, 2)
            h = F.relu(F.conv2d(h, state[f"features.{i}.weight"], state[f"features.{i}.bias"], stride, pad))
            out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    return sum((w.view(1, -1, 1, 1) * (ua - ub).pow(2)).sum(1).mean((1, 2))
               for w, ua, ub in zip(lins, taps(a), taps(b))).double()


def test_lpips_is_zhang_et_al_definition_on_torchvision_layout(tmp_path):
    path, state = backbone_file(tmp_path)
    net = load_lpips(str(path))
    lins = [getattr(net, f"lin{k}").model[-1].weight.flatten() for k in range(5)]
    assert all((w >= 0).all() and w.sum() > 0 for w in lins)  # torchmetrics' shipped linear layers
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 3, 40, 40, generator=g), torch.rand(3, 3, 40, 40, generator=g)
    got = lpips(net, a, b)
    assert torch.allclose(got, by_hand(state, lins, a, b), rtol=1e-4, atol=1e-7)
    assert (got > 0).all() and torch.equal(lpips(net, a, a), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(lpips(net, b, a), got, rtol=1e-5)
    # grey 28 x 28: three equal channels, upsampled to 64 x 64 first
    a1, b1 = a[:, :1, :28, :28], b[:, :1, :28, :28]
    up = [F.interpolate(x.expand(-1, 3, -1, -1), (64, 64), mode="bilinear", align_corners=False) for x in (a1, b1)]
    assert torch.allclose(lpips(net, a1, b1), by_hand(state, lins, *up), rtol=1e-4, atol=1e-7)


def test_a_file_that_is_not_alexnet_is_one_line(tmp_path):
    bad = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(2, 2)}, bad)
    for path in (bad, tmp_path / "missing.pth"):
        try:
            load_lpips(str(path))
            raise AssertionError("accepted a file that is not an AlexNet checkpoint")
        except AttackError as err:
            assert "\n" not in str(err) and str(path.name) in str(err)
    try:
        load_attack_config({"lpips-backbone": str(tmp_path / "missing.pth")})
        raise AssertionError("a missing lpips-backbone passed the config check")
    except ConfigError as err:
        assert "lpips-backbone" in str(err)


def test_runner_reports_lpips_for_the_attack_and_every_baseline_only_with_the_file(tmp_path, monkeypatch):
    run, _ = recorded_run(tmp_path)
    from attacks.trials import recorded_trial

    targets = recorded_trial(run, PID, 1).targets.images
    without = replay(monkeypatch, tmp_path, run, targets, "none")
    assert all(r["lpips"] is None for r in without)
    path, _ = backbone_file(tmp_path)
    with_file = replay(monkeypatch, tmp_path, run, targets, "lpips", lpips_backbone=str(path))
    assert [r["attack"] for r in with_file] == ["replay", "baseline-grey", "baseline-mean", "baseline-random"]
    assert with_file[0]["lpips"] == 0.0  # the targets themselves
    assert all(r["lpips"] > 0 for r in with_file[1:])
