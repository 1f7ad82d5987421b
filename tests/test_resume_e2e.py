"""`fedsim run --resume` after `kill -9`, end to end through Flower's simulation engine (slow).

Six rounds straight against the same config killed with SIGKILL once round 3 is written,
then resumed: metrics.csv (timing columns aside), the final weights, the ledger and every
recorded observation must be identical, byte for byte. Two configs: plain FedAvg, and one
that wears every layer whose state a resume must restore on both sides: FedEMD selection
(cumulative histogram, Maverick counts), DHQ with error feedback (the clients' residuals)
and downlink compression (the server's model copy and codes, the clients' copies), the
ledger, and recording. An unlearning run (SalUn) killed and resumed is in
tests/test_unlearning_e2e.py; the layers one at a time, and the checks that the comparison
can fail, are in tests/test_checkpoint.py. A third config runs SCAFFOLD with DHQ: the server's
control variate and each client's (in its node context) must outlive the kill.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from processes import kill_after_round, rounds_written

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
COMMON = ["num-clients=10", "clients-per-round=4", "rounds=6", "partition='exclusive-1'", "local-epochs=1",
          "eval-every=0", "seed=3"]
CASES = {
    "fedavg": ["model='ddpm-tiny'", "timesteps=100", "sample-steps=5"],
    "combined": ["selector='fedemd'", "compression='dhq'", "keep-ratio=0.2", "compress-downlink=true",
                 "record-clients='all'", "ledger-every=2"],
    "scaffold": ["strategy='scaffold'", "model='cnn'", "optimizer='sgd'", "lr=0.05", "compression='dhq'",
                 "keep-ratio=0.2"],  # the server's c, each client's c_i and residual
}
TIMING = {"wall_s", "eval_s", "encode_s", "decode_s"}


def fedsim(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "fedsim"), *args], capture_output=True, text=True, timeout=900, env=env)


def settings(case: str) -> list[str]:
    return [a for item in COMMON + CASES[case] for a in ("--set", item)]


@pytest.fixture(scope="module")
def env(fedsim_cache) -> dict:
    return {**os.environ, "FEDSIM_CACHE": str(fedsim_cache)}


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def files(root: Path) -> dict[str, bytes]:
    """What must match byte for byte: the weights, the ledger, the recorded observations."""
    keep = ("model/", "ledger/", "observations/")
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and str(p.relative_to(root)).startswith(keep) and not p.name.startswith(".")}


@pytest.mark.parametrize("case", list(CASES))
def test_sigkill_after_round_3_and_resume_equals_the_uninterrupted_run(tmp_path: Path, env: dict, case: str) -> None:
    straight = tmp_path / "straight"
    res = fedsim("run", "--out", str(straight), *settings(case), env=env)
    assert res.returncode == 0, res.stderr[-2000:]

    cut = tmp_path / "cut"
    kill_after_round([str(BIN / "fedsim"), "run", "--out", str(cut), *settings(case)], cut, 3, env)
    assert 3 <= rounds_written(cut) < 6
    res = fedsim("run", "--resume", str(cut), env=env)
    assert res.returncode == 0, res.stderr[-2000:]

    assert rows(cut / "metrics.csv") == rows(straight / "metrics.csv")
    want, got = files(straight), files(cut)
    assert any(k.startswith("model/") for k in want)
    if case == "combined":
        assert any(k.startswith("observations/") for k in want) and any(k.startswith("ledger/") for k in want)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []

    if case == "combined":
        again = fedsim("run", "--resume", str(cut), env=env)  # finished: says so, exit 0
        assert again.returncode == 0 and "nothing to resume" in again.stdout
        changed = fedsim("run", "--resume", str(cut), "--set", "lr=0.5", env=env)
        assert changed.returncode == 2 and "lr" in changed.stderr and "Traceback" not in changed.stderr
