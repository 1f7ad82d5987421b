"""Injected faults through Flower's simulation engine on Ray (slow, ~2 min): 30 % of the
clients of each round fail, each in one of the ways fedsim/app/fault_mod.py makes real
(raise, out of memory, a hang past round-timeout, NaN / wrong-key / huge replies). The run
completes, and metrics.csv counts exactly the injected failures: raise, oom and hang as
failed, the garbage replies as rejected. Seed 99 puts one hang in round 2 and every kind in
the three rounds."""

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
SEED, RATE = 99, 0.3
SETTINGS = ["num-clients=10", "clients-per-round=10", "rounds=3", "partition='iid'", "local-epochs=1",
            "eval-every=0", f"seed={SEED}", f"client-failure-rate={RATE}", "fault-kind='mixed'", "round-timeout=60"]
FAILED, REJECTED = {"raise", "oom", "hang"}, {"nan", "wrong-keys", "huge"}


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


def test_killed_workers_are_replaced_and_only_their_clients_fail(tmp_path: Path, fedsim_cache) -> None:
    """fault-kind = kill: SIGKILL of the Ray worker running the client. Without
    fedsim/app/actor_restart.py, Flower puts the dead worker back in its pool and every later
    client it takes fails too (6, 9 and 9 of 10 here, for 5, 4 and 3 kills)."""
    out = tmp_path / "run"
    settings = [s for s in SETTINGS if not s.startswith(("seed", "fault-kind", "round-timeout"))]
    settings += ["seed=3", "fault-kind='kill'"]
    cmd = [str(BIN / "fedsim"), "run", "--out", str(out)] + [a for s in settings for a in ("--set", s)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "FEDSIM_CACHE": str(fedsim_cache)})
    assert res.returncode == 0, res.stderr[-2000:]
    df = pd.read_csv(out / "metrics.csv")
    kills = [[p for p in range(10) if derive(3, "fault", r, p).random() < RATE] for r in (1, 2, 3)]
    assert [len(k) for k in kills] == [5, 4, 3]
    assert list(df["clients_failed"]) == [len(k) for k in kills]
    assert (df["clients_rejected"] == 0).all()
