"""fedsim/evaluation/server.py ServerEvaluator and fedsim/evaluation/inception.py plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.config import RunConfig
from fedsim.evaluation.inception import InceptionError, inception_features, load_inception
from fedsim.evaluation.server import ServerEvaluator


@pytest.fixture(autouse=True)
def _cache(fedsim_cache, monkeypatch):
    monkeypatch.setenv("FEDSIM_CACHE", str(fedsim_cache))


class FakeDetector(torch.nn.Module):
    """Same call convention as NVIDIA's TorchScript Inception: uint8 NCHW in."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8
        f = x.float()
        return torch.cat([f.mean((2, 3)), f.std((2, 3))], 1)


def test_classifier_round_reports_accuracy(tmp_path) -> None:
    ev = ServerEvaluator(RunConfig(model="cnn"), tmp_path)
    row = ev(1, ev.model.state_dict())
    assert 0.0 <= row["test_acc"] <= 1.0 and np.isfinite(row["eval_loss"])
    assert ev.quality_columns == ["test_acc"]


def test_eval_loss_probe_is_fixed(tmp_path) -> None:
    ev = ServerEvaluator(RunConfig(), tmp_path)
    sd = ev.model.state_dict()
    assert ev(1, sd)["eval_loss"] == ev(2, sd)["eval_loss"]


def test_quality_round_with_inception(tmp_path) -> None:
    path = tmp_path / "inception.pt"
    torch.jit.save(torch.jit.script(FakeDetector()), str(path))
    cfg = RunConfig(rounds=1, num_samples=20, sample_steps=2, inception_weights=str(path))
    ev = ServerEvaluator(cfg, tmp_path)
    row = ev(1, ev.model.state_dict())
    assert set(ev.quality_columns) <= set(row) | {"eval_loss"}
    assert np.isfinite(row["fd"]) and np.isfinite(row["inception_fid"])
    # unrecognised samples count for no class; an untrained model draws noise, none recognised
    assert abs(sum(row[f"gen_class_{c}"] for c in range(10)) - row["recognised"]) < 1e-9
    assert row["recognised"] == 0.0
    for key in ("fd", "kid", "precision", "recall"):  # noise against real digits, and the real floor
        assert np.isfinite(row[key]) and np.isfinite(row[f"{key}_floor"])
    assert row["fd"] > 10 * row["fd_floor"] and row["kid"] > 10 * max(row["kid_floor"], 1e-3)
    assert row["precision"] < 0.1 < 0.5 < row["precision_floor"]
    assert (tmp_path / "samples" / "round_001.png").is_file()


def test_inception_features_gray_to_rgb() -> None:
    det = torch.jit.script(FakeDetector())
    feats = inception_features(det, torch.zeros(4, 1, 8, 8))
    assert feats.shape == (4, 6)
    assert np.allclose(feats[:, :3], 127.5, atol=0.5)  # 0.0 in [-1, 1] -> 128 in uint8


def test_inception_bad_path(tmp_path) -> None:
    with pytest.raises(InceptionError, match="no file"):
        load_inception(str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(InceptionError, match="TorchScript"):
        load_inception(str(tmp_path / "junk.pt"))


def test_ema_of_the_global_models_is_what_gets_evaluated(tmp_path) -> None:
    """ema-decay: round 1 takes the global model as it is; round 2 mixes with the warm-up decay
    (1 + 1) / (10 + 1) = 2/11 (diffusers' EMAModel), capped by ema-decay."""
    cfg = RunConfig(ema_decay=0.9, eval_every=0)
    ev = ServerEvaluator(cfg, tmp_path)
    w1 = {k: v.clone() for k, v in ev.model.state_dict().items()}
    w2 = {k: v + 1.0 if v.is_floating_point() else v for k, v in w1.items()}
    plain = ServerEvaluator(cfg.replace(ema_decay=0.0), tmp_path)
    assert ev(1, w1)["eval_loss"] == plain(1, w1)["eval_loss"]
    ev(2, w2)
    name, p = next((n, p) for n, p in ev.model.named_parameters() if p.numel() > 1)
    torch.testing.assert_close(p.detach(), 2 / 11 * w1[name] + 9 / 11 * w2[name], rtol=0, atol=1e-5)
    assert plain(2, w2)["eval_loss"] != ev(2, w2)["eval_loss"]
