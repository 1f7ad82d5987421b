"""fedsim/unlearning/report.py: forget sets, the scored metrics, cost and the written report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fedsim.config import RunConfig
from fedsim.evaluation.server import save_grid
from fedsim.models.train import make_task, train_local
from fedsim.unlearning.membership import AttackConfig
from fedsim.unlearning.report import (COST_KEYS, RATIOS, SCORE_KEYS, Request, across_seeds, cost, forget_set,
                                      mia_verdict, score, target_class, write_report)
from fedsim.data.clients import dataset, split_request
from fedsim.models.workspace import fresh_model

pytestmark = pytest.mark.usefixtures("one_thread")

# exclusive-1: client 9 (the last) alone holds class 1, the rest is dealt round-robin to all.
CFG = RunConfig(model="ddpm-tiny", timesteps=100, beta_schedule="squaredcos_cap_v2", num_clients=10,
                clients_per_round=2, partition="exclusive-1", maverick_class=1, num_samples=64, sample_steps=5)
MAVERICK = Request(frozenset({9}), -1)
MIXED = Request(frozenset({3}), -1)
ATTACK = AttackConfig(reference_epochs=3, draws=1)  # cheap; the attack is tested in test_unlearning_membership.py


@pytest.fixture(scope="module", autouse=True)
def _cache(fedsim_cache):
    """The session's evaluator cache (conftest.py), never ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDSIM_CACHE", str(fedsim_cache))
        yield


def _initial(cfg: RunConfig) -> dict:
    return fresh_model(cfg, dataset(cfg, "test")).state_dict()


def _rows(images: torch.Tensor) -> list[bytes]:
    return sorted(r.tobytes() for r in images.numpy())


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_request_from_config_and_description() -> None:
    assert Request.of(CFG) == Request(frozenset(), -1)
    assert Request.of(CFG.replace(forget_clients="7 3")) == Request(frozenset({3, 7}), -1)
    assert Request.of(CFG.replace(forget_class=0)).describe() == "class 0"
    assert Request(frozenset({19}), -1).describe() == "client 19"
    assert Request(frozenset({7, 3}), -1).describe() == "clients 3 7"
    assert Request(frozenset({2}), 4).describe() == "client 2 and class 4"


def test_forget_set_of_a_class_request_is_that_class() -> None:
    train = dataset(CFG, "train")
    images, labels = forget_set(CFG, Request(frozenset(), 0))
    assert (labels == 0).all() and len(labels) == int((train.labels == 0).sum())
    assert _rows(images) == _rows(train.images[torch.from_numpy(train.labels == 0)])


def test_forget_set_of_a_client_request_is_its_partition() -> None:
    train = dataset(CFG, "train")
    parts = split_request(CFG, train.labels)[0]
    for request, pid in ((MAVERICK, 9), (MIXED, 3)):
        images, labels = forget_set(CFG, request)
        assert torch.equal(images, train.images[torch.from_numpy(parts[pid])])
        assert np.array_equal(labels.numpy(), train.labels[parts[pid]])
    both = forget_set(CFG, Request(frozenset({3, 9}), -1))[0]
    assert len(both) == len(parts[3]) + len(parts[9])
    assert len(forget_set(CFG, Request(frozenset(), -1))[0]) == 0


def test_target_class() -> None:
    assert target_class(CFG, MAVERICK) == 1  # the Maverick owns class 1
    assert target_class(CFG, MIXED) == -1  # round-robin client: no majority class
    assert target_class(CFG, Request(frozenset({3}), 5)) == 5
    assert target_class(CFG, Request(frozenset(), -1)) == -1


def test_score_of_an_untrained_model(tmp_path) -> None:
    sd = _initial(CFG)
    grid = tmp_path / "grid.png"
    first = score(CFG, sd, MAVERICK, num_samples=40, grid_path=grid, attack=ATTACK)
    assert list(first) == SCORE_KEYS
    finite = ["unrecognised", "forget_prob", "forget_entropy", "fd_remaining", "fd_floor", "kid_remaining",
              "kid_floor", "eval_loss_remaining", "forget_loss", "mia_auc", "mia_auc_low", "mia_auc_high",
              "mia_tpr_1fpr", "mia_loss_auc", "test_acc_evaluator"]
    assert all(math.isfinite(first[k]) for k in finite), first
    assert math.isnan(first["forget_rate_cond"])  # unconditional model
    assert first["unrecognised"] > 0.9 and first["test_acc_evaluator"] > 0.8  # an untrained model makes noise
    assert not first["forget_rate"] > 0  # which never counts as the class (NaN: nothing recognised)
    assert first["recognised_n"] == round((1 - first["unrecognised"]) * 40)
    assert first["fd_remaining"] > 3 * first["fd_floor"]
    assert first["mia_auc_low"] < 0.5 < first["mia_auc_high"]  # no training, no membership signal
    assert grid.is_file()
    assert _same(first, score(CFG, sd, MAVERICK, num_samples=40, attack=ATTACK))  # fixed noise and probes
    # a client without a majority class has no target class to count
    assert math.isnan(score(CFG, sd, MIXED, num_samples=20, attack=ATTACK)["forget_rate"])


def test_score_of_a_conditional_model_has_a_class_row_grid(tmp_path) -> None:
    cfg = CFG.replace(conditional=True)
    grid = tmp_path / "grid.png"
    out = score(cfg, _initial(cfg), Request(frozenset(), 0), num_samples=80, grid_path=grid, attack=ATTACK)
    assert math.isfinite(out["unrecognised_cond"]) and math.isfinite(out["fd_remaining"])
    assert 0 <= out["forget_prob"] <= 1 and 0 <= out["forget_entropy"] <= math.log(10)
    # 10 class rows of 8 samples: (10 * 9 + 1) x (8 * 9 + 1) pixels, upscaled 4x
    assert Image.open(grid).size == (73 * 4, 91 * 4)


def test_score_of_a_classifier() -> None:
    cfg = CFG.replace(model="cnn")
    out = score(cfg, _initial(cfg), MAVERICK, attack=ATTACK)
    assert 0 <= out["forget_rate"] <= 1 and math.isfinite(out["eval_loss_remaining"])
    assert math.isnan(out["fd_remaining"]) and math.isnan(out["forget_rate_cond"])
    assert 0 <= out["mia_auc"] <= 1 and out["mia_auc"] == out["mia_loss_auc"]


def test_fine_tuning_on_the_forget_set_shows_in_loss_and_membership() -> None:
    # 100 iid clients: client 3 holds 15 images, few enough to start memorizing in 100 steps
    cfg = CFG.replace(num_clients=100, partition="iid")
    request = Request(frozenset({3}), -1)
    model = fresh_model(cfg, dataset(cfg, "test"))
    before = score(cfg, model.state_dict(), request, num_samples=20, attack=ATTACK)
    images, labels = forget_set(cfg, request)
    train_local(model, make_task(cfg.model, cfg.timesteps, cfg.beta_schedule), images, labels, epochs=100,
                batch_size=16, lr=3e-3, generator=torch.Generator().manual_seed(0))
    after = score(cfg, model.state_dict(), request, num_samples=20, attack=ATTACK)
    assert after["forget_loss"] < 0.5 * before["forget_loss"]
    assert after["mia_auc"] > before["mia_auc"] + 0.05 and after["mia_auc_low"] > 0.5


def test_cost_reads_metrics_csv(tmp_path) -> None:
    pd.DataFrame({"round": [1, 2, 3], "wall_s": [1.5, 2.0, 0.5], "bytes_up_total": [10, 20, 30],
                  "bytes_down_total": [100, 200, 300], "eval_loss": [1.0, 0.9, 0.8]}
                 ).to_csv(tmp_path / "metrics.csv", index=False)
    assert cost(tmp_path) == {"wall_s": 4.0, "rounds": 3.0, "bytes": 330.0}
    with pytest.raises(ValueError, match="metrics.csv"):
        cost(tmp_path / "missing")
    (tmp_path / "metrics.csv").write_text("")
    with pytest.raises(ValueError):
        cost(tmp_path)
    (tmp_path / "metrics.csv").write_text("round,wall_s,bytes_up_total,bytes_down_total\n")
    with pytest.raises(ValueError):
        cost(tmp_path)


def _row(model: str, fd: float, wall: float, nbytes: float) -> dict:
    return {"model": model, **dict.fromkeys(SCORE_KEYS, 0.5), "fd_remaining": fd, "kid_remaining": fd / 10,
            "wall_s": wall, "rounds": 10.0, "bytes": nbytes}


def test_write_report_with_retrain_ratios_and_grids(tmp_path) -> None:
    rows = [_row("original", 10.0, 100.0, 1000.0), _row("retrain", 20.0, 50.0, 500.0),
            _row("salun", 30.0, 5.0, 50.0)]
    rows[2].update(forget_rate=0.01, forget_rate_low=0.005, forget_rate_high=0.02)
    for name in ("original", "salun"):
        save_grid(torch.zeros(16, 1, 8, 8), tmp_path / f"grid_{name}.png", ncol=8)
    write_report(tmp_path, rows, MAVERICK, seed=3)
    df = pd.read_csv(tmp_path / "report.csv")
    columns = ["model", "request", "seed", *SCORE_KEYS[:-1], *COST_KEYS, *RATIOS]
    assert list(df.columns[:len(columns)]) == columns
    assert df["wall_vs_retrain"].tolist() == [2.0, 1.0, 0.1]
    assert df["bytes_vs_retrain"].tolist() == [2.0, 1.0, 0.1]
    assert df["fd_vs_retrain"].tolist() == [0.5, 1.0, 1.5] and df["kid_vs_retrain"].tolist() == [0.5, 1.0, 1.5]
    assert (df["request"] == "client 9").all() and (df["seed"] == 3).all()
    md = (tmp_path / "report.md").read_text()
    assert "client 9" in md.splitlines()[0]
    assert "| salun | 0.01 [0.005, 0.02] |" in md and "| 0.1 |" in md and "forget_rate_low" not in md
    assert (tmp_path / "grids.png").is_file()


def test_write_report_without_retrain_has_no_ratios(tmp_path) -> None:
    write_report(tmp_path, [_row("original", 10.0, 100.0, 1000.0)], Request(frozenset(), 0))
    df = pd.read_csv(tmp_path / "report.csv")
    assert "wall_vs_retrain" not in df and df["request"].tolist() == ["class 0"]
    assert not (tmp_path / "grids.png").exists()


def _mia_rows(auc: float, low: float, high: float) -> pd.DataFrame:
    return pd.DataFrame([{"model": "original", "mia_auc": auc, "mia_auc_low": low, "mia_auc_high": high,
                          "mia_tpr_1fpr": 0.02}, {"model": "salun", "mia_auc": 0.9, "mia_auc_low": 0.85,
                                                  "mia_auc_high": 0.95, "mia_tpr_1fpr": 0.3}])


def test_the_report_says_when_the_attack_cannot_measure_forgetting() -> None:
    blind = mia_verdict(_mia_rows(0.56, 0.48, 0.64))  # above 0.5, but the interval is not: no signal
    assert "cannot measure forgetting" in blind and "AUC 0.560 [0.480, 0.640]" in blind
    seen = mia_verdict(_mia_rows(0.62, 0.55, 0.69))
    assert "cannot" not in seen and "detectably" in seen and "TPR at 1 % FPR 0.020" in seen
    assert mia_verdict(_mia_rows(0.62, 0.55, 0.69).iloc[1:]) == ""  # no original row, no verdict


def test_per_seed_rows_aggregate_to_t_intervals() -> None:
    df = pd.DataFrame({"request": ["class 0"] * 5, "model": ["salun"] * 3 + ["retrain"] * 2, "seed": [0, 1, 2, 0, 1],
                       "forget_rate": [0.01, 0.02, 0.03, 0.0, float("nan")]})
    out = across_seeds(df, ["forget_rate"])
    salun, retrain = out.iloc[0], out.iloc[1]
    # mean 0.02, sd 0.01, n = 3: half-width t_{0.975, 2} * 0.01 / sqrt(3) = 4.3027 * 0.01 / 1.7321
    assert salun["n"] == 3 and salun["forget_rate"] == pytest.approx(0.02)
    assert salun["forget_rate_high"] - salun["forget_rate"] == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-5)
    assert retrain["forget_rate"] == 0.0 and math.isnan(retrain["forget_rate_low"])  # one finite seed: no interval
