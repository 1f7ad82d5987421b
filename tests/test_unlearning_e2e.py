"""``fedsim unlearn`` end to end: a small run through Flower's simulation engine, then
SalUn on a class request, the two controls (fine-tune, continue) on it and FedEraser on
a client request, each a real run plus its report, and a replay of the run's ledger
with nothing forgotten, which must reproduce the run exactly. SalUn is also killed with
SIGKILL after its third round and continued (``fedsim run --resume``, then the same
``fedsim unlearn`` again, which only scores): it must end where the uninterrupted run
ended, bit for bit. Slow (about 7 minutes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from processes import kill_after_round, rounds_written
from safetensors.torch import load_file

from fedsim.cli.main import main
from fedsim.config import load_config, read_toml

pytestmark = pytest.mark.slow

BASE = ["--set", "dataset=digits", "--set", "model=ddpm-tiny", "--set", "conditional=true",
        "--set", "timesteps=20", "--set", "sample-steps=5", "--set", "num-clients=6",
        "--set", "clients-per-round=3", "--set", "rounds=4", "--set", "local-epochs=1",
        "--set", "eval-every=0", "--set", "ledger-every=2", "--set", "partition=iid"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("unlearn") / "original"
    assert main(["run", *BASE, "--out", str(out)]) == 0
    return out


def salun_args(trained: Path, out: Path) -> list[str]:
    return ["unlearn", "--run", str(trained), "--class", "3", "--method", "salun", "--samples", "40",
            "--set", "unlearn-rounds=5", "--out", str(out)]


@pytest.fixture(scope="module")
def salun(trained):
    out = trained.parent / "salun"
    assert main(salun_args(trained, out)) == 0
    return out


def test_salun_on_a_class_request_runs_its_phases_and_reports(salun):
    metrics = pd.read_csv(salun / "metrics.csv")
    assert metrics["phase"].tolist() == ["saliency"] + ["salun"] * 5
    assert metrics["bytes_down_total"].iloc[-1] > 0
    report = pd.read_csv(salun / "unlearning" / "report.csv")
    assert report["model"].tolist() == ["original", "salun"]
    assert report.loc[0, "rounds"] == 4 and report.loc[1, "rounds"] == 6
    assert report["unrecognised"].between(0, 1).all() and report["mia_auc"].between(0, 1).all()
    assert (report["forget_rate"].isna() | report["forget_rate"].between(0, 1)).all()  # NaN: none recognised
    assert "Membership attack on the original model" in (salun / "unlearning" / "report.md").read_text()
    assert (salun / "unlearning" / "grids.png").is_file()


def test_salun_killed_after_round_3_continues_to_the_uninterrupted_result(trained, salun, tmp_path):
    fedsim = str(Path(sys.executable).parent / "fedsim")
    cut = tmp_path / "cut"
    kill_after_round([fedsim, *salun_args(trained, cut)], cut, 3, dict(os.environ))
    assert 3 <= rounds_written(cut) < 6 and not (cut / "unlearning" / "report.csv").exists()
    res = subprocess.run([fedsim, "run", "--resume", str(cut)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    timing = ["wall_s", "eval_s"]
    pd.testing.assert_frame_equal(pd.read_csv(cut / "metrics.csv").drop(columns=timing),
                                  pd.read_csv(salun / "metrics.csv").drop(columns=timing))
    names = sorted(p.name for p in (salun / "model").glob("*.safetensors"))
    assert names and [(cut / "model" / n).read_bytes() == (salun / "model" / n).read_bytes() for n in names] == \
        [True] * len(names)

    # the same `fedsim unlearn` again: the run is there, so it only scores it
    res = subprocess.run([fedsim, *salun_args(trained, cut)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0 and "scoring only" in " ".join(res.stdout.split()), res.stderr[-2000:]
    scores = ["forget_rate", "unrecognised", "mia_auc"]
    got, want = (pd.read_csv(d / "unlearning" / "report.csv") for d in (cut, salun))
    pd.testing.assert_frame_equal(got[["model", *scores]], want[["model", *scores]])
    other = subprocess.run([fedsim, *salun_args(trained, cut)[:-2], "--set", "unlearn-lr=0.1", "--out", str(cut)],
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "unlearn-lr" in other.stderr and "Traceback" not in other.stderr


@pytest.mark.parametrize("method", ["fine-tune", "continue"])
def test_controls_run_their_rounds_from_the_trained_model_and_are_costed(trained, tmp_path, method):
    out = tmp_path / method
    assert main(["unlearn", "--run", str(trained), "--class", "3", "--method", method, "--samples", "40",
                 "--set", "unlearn-rounds=2", "--set", "unlearn-lr=5e-4", "--out", str(out)]) == 0
    cfg = load_config(read_toml(out / "config.toml"))
    assert (cfg.unlearn_method, cfg.rounds, cfg.unlearn_lr, cfg.pretrained) == (method, 2, 5e-4, str(trained / "model"))
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["phase"].tolist() == [method, method]
    report = pd.read_csv(out / "unlearning" / "report.csv")
    assert report["model"].tolist() == ["original", method]
    row = report.iloc[1]
    assert row["rounds"] == 2 and row["wall_s"] > 0 and row["bytes"] > 0 and 0 <= row["unrecognised"] <= 1
    assert math.isnan(row["forget_rate"]) or 0 <= row["forget_rate"] <= 1  # NaN: none of 40 recognised


def test_federaser_on_a_client_request_replays_the_stored_rounds(trained, tmp_path):
    out = tmp_path / "federaser"
    assert main(["unlearn", "--run", str(trained), "--client", "2", "--method", "federaser", "--samples", "40",
                 "--out", str(out)]) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) == 1  # stored rounds 1 and 3; round 1 needs no calibration for a client request
    ledger = json.loads((trained / "ledger" / "ledger.json").read_text())
    participants = sorted(set(ledger["rounds"][2]["participants"]) - {2})
    assert sorted(int(p) for p in str(metrics["selected"].iloc[0]).split()) == participants
    assert (out / "unlearning" / "report.md").is_file()


def test_retrain_with_no_request_reproduces_the_run(trained, tmp_path):
    """A replay of the ledger (retrain's mechanism) with nothing forgotten: the same
    metrics.csv (timing aside) and the same final model, bit for bit."""
    out = tmp_path / "replay"
    assert main(["run", *BASE, "--set", f"replay='{trained}'", "--out", str(out)]) == 0
    a, b = (pd.read_csv(r / "metrics.csv").drop(columns=["wall_s", "eval_s"]) for r in (trained, out))
    pd.testing.assert_frame_equal(a, b)
    files = sorted(p.name for p in (trained / "model").glob("*.safetensors"))
    assert files and files == sorted(p.name for p in (out / "model").glob("*.safetensors"))
    for name in files:
        wa, wb = (load_file(str(r / "model" / name)) for r in (trained, out))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
