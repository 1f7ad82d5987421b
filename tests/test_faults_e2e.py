"""Injected faults through Flower's simulation engine on Ray (slow, ~3 min): 30 % of the
clients of each round fail, each in one of the ways fedsim/app/fault_mod.py makes real
(raise, SIGKILL of the Ray worker, out of memory, a hang past round-timeout, NaN / wrong-key
/ huge replies). The run completes, and metrics.csv counts exactly the injected failures:
raise, kill, oom and hang as failed, the garbage replies as rejected. Seed 568 draws 8 faults
in 30 (every kind, one hang in round 2, a kill in round 3). The kill is counted alone only
because fedsim/app/actor_restart.py replaces the dead worker: without it, Flower returns the
dead worker to its pool and every later client it takes fails too (measured with kills
alone at 30 %: 6, 9 and 9 failures for 5, 4 and 3 kills)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedsim.app.fault_mod import MIXED
from fedsim.rng import derive

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SEED, RATE = 568, 0.3
SETTINGS = ["num-clients=10", "clients-per-round=10", "rounds=3", "partition='iid'", "local-epochs=1",
            "eval-every=0", f"seed={SEED}", f"client-failure-rate={RATE}", "fault-kind='mixed'", "round-timeout=60"]
FAILED, REJECTED = {"raise", "kill", "oom", "hang"}, {"nan", "wrong-keys", "huge"}


def injected(rnd: int, pid: int) -> str | None:
    draw = derive(SEED, "fault", rnd, pid)
    return MIXED[int(draw.integers(len(MIXED)))] if draw.random() < RATE else None


def test_every_injected_fault_is_counted_and_the_run_completes(tmp_path: Path, fedsim_cache) -> None:
    kinds = {k for r in (1, 2, 3) for p in range(10) if (k := injected(r, p))}
    assert kinds == set(MIXED)  # the seed covers every kind
    out = tmp_path / "run"
    cmd = [str(BIN / "fedsim"), "run", "--out", str(out)] + [a for s in SETTINGS for a in ("--set", s)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "FEDSIM_CACHE": str(fedsim_cache)})
    assert res.returncode == 0, res.stderr[-2000:]
    df = pd.read_csv(out / "metrics.csv")
    assert list(df["round"]) == [1, 2, 3]
    for _, row in df.iterrows():
        faults = [injected(int(row["round"]), int(p)) for p in str(row["selected"]).split()]
        assert row["clients_failed"] == sum(f in FAILED for f in faults), row.to_dict()
        assert row["clients_rejected"] == sum(f in REJECTED for f in faults), row.to_dict()
    log = (out / "logs" / "server.log").read_text()
    oom = next((r, p) for r in (1, 2, 3) for p in range(10) if injected(r, p) == "oom")
    assert f"client {oom[1]} in round {oom[0]} ran out of memory" in log  # one line, with the client

