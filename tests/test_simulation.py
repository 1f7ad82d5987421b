"""End to end through Flower's simulation engine on Ray (slow: ~2 min together).

One run of 20 clients x 2 rounds with injected client failures; the same
config and seed again on an existing Ray cluster (``ray start --head``) must
give the same metrics.csv (timing columns aside).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim.rng import derive
from processes import still_running

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SETTINGS = ["num-clients=20", "clients-per-round=10", "rounds=2", "partition='iid'", "local-epochs=1",
            "client-failure-rate=0.3", "eval-every=2", "num-samples=32", "sample-steps=5", "seed=3",
            "record-clients='all'", "record-rounds='1'"]
TIMING = ["wall_s", "eval_s"]


def fedsim_run(out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "fedsim"), "run", "--out", str(out)]
    for item in [*SETTINGS, *extra]:
        cmd += ["--set", item]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def env(fedsim_cache) -> dict:
    return {**os.environ, "FEDSIM_CACHE": str(fedsim_cache)}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, env) -> Path:
    out = tmp_path_factory.mktemp("sim") / "run"
    res = fedsim_run(out, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def test_run_folder_complete(first_run: Path) -> None:
    for name in ["config.toml", "metrics.csv", "curves.png", "samples/round_002.png",
                 "model/config.json", "model/diffusion_pytorch_model.safetensors", "logs/server.log"]:
        assert (first_run / name).is_file(), name
    df = pd.read_csv(first_run / "metrics.csv")
    assert list(df["round"]) == [1, 2]
    assert (df["clients_sampled"] == 10).all()
    assert np.isfinite(df["eval_loss"]).all() and np.isfinite(df["train_loss"]).all()
    assert (df["bytes_up"] > 0).all() and (df["bytes_down"] > 0).all()
    assert np.isfinite(df["fd"].iloc[1])


def test_injected_failures_counted_and_round_goes_on(first_run: Path) -> None:
    """The failures are drawn from (seed, "fault", round, pid): recompute them."""
    df = pd.read_csv(first_run / "metrics.csv")
    for _, row in df.iterrows():
        chosen = [int(p) for p in str(row["selected"]).split()]
        expected = sum(derive(3, "fault", int(row["round"]), p).random() < 0.3 for p in chosen)
        assert 0 < expected < 10  # the seed is chosen so that both kinds occur
        assert row["clients_failed"] == expected
        # bytes_up counts only the successful replies' payloads
        assert row["bytes_up"] < row["bytes_down"]


def test_observations_recorded_for_successful_clients(first_run: Path) -> None:
    from fedsim.records.observations import list_observations, load

    row = pd.read_csv(first_run / "metrics.csv").iloc[0]
    chosen = [int(p) for p in str(row["selected"]).split()]
    ok = [p for p in chosen if derive(3, "fault", 1, p).random() >= 0.3]
    paths = list_observations(first_run)
    assert [int(p.name.split("_")[1]) for p in paths] == ok
    obs = load(paths[0])
    assert obs.server_round == 1 and obs.payload == "weights" and obs.config["local-epochs"] == 1
    update = obs.update()
    assert set(update) == set(obs.sent) and any(float(v.abs().max()) > 0 for v in update.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen) -> None:
    """End the process group this test started (never `ray stop`, which ends every Ray
    instance on the machine, other users' runs included)."""
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start --head exited early"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(1)
    raise AssertionError(f"Ray's head did not listen on {port} within {timeout} s")


def test_same_metrics_on_an_existing_ray_cluster(first_run: Path, tmp_path: Path, env: dict) -> None:
    port = _free_port()
    ray = str(BIN / "ray")
    # --block keeps `ray start` in the foreground as the parent of the head's processes, in a
    # group of its own: ending that group ends this cluster and nothing else
    head = subprocess.Popen([ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={tempfile.mkdtemp(prefix='ray')}"],  # short: Ray's socket paths
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        _wait_for_port(port, head)
        res = fedsim_run(tmp_path / "cluster", f"ray-address='127.0.0.1:{port}'", env=env)
        assert res.returncode == 0, res.stderr[-2000:]
    finally:
        _stop_group(head)
    a = pd.read_csv(first_run / "metrics.csv").drop(columns=TIMING)
    b = pd.read_csv(tmp_path / "cluster" / "metrics.csv").drop(columns=TIMING)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("selector", ["fedemd", "shapley"])
def test_selector_runs_log_the_maverick(tmp_path: Path, env: dict, selector: str) -> None:
    """A classifier run with one exclusive Maverick (client 9 alone holds class 1): the
    selector is built from the declared histograms (FedEMD) or values this round's replies
    on the server's test split (Shapley); metrics.csv holds the Maverick's P_t and count."""
    out = tmp_path / "run"
    cmd = [str(BIN / "fedsim"), "run", "--out", str(out)]
    for item in ["model='cnn'", "num-clients=10", "clients-per-round=3", "rounds=3", "local-epochs=1",
                 "partition='exclusive-1'", f"selector='{selector}'", "optimizer='sgd'", "lr=0.05"]:
        cmd += ["--set", item]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    df = pd.read_csv(out / "metrics.csv")
    assert list(df["round"]) == [1, 2, 3]
    chosen = [set(map(int, s.split())) for s in df["selected"]]
    assert all(len(c) == 3 for c in chosen)
    assert list(df["maverick_9_selections"]) == list(np.cumsum([9 in c for c in chosen]))
    assert ((df["maverick_9_prob"] > 0) & (df["maverick_9_prob"] < 1)).all()
    if selector == "fedemd":  # round 1: the Maverick is the most likely client
        assert df["maverick_9_prob"].iloc[0] > df["typical_prob"].iloc[0]
    assert (out / "selection.png").is_file()


def test_ledger_lists_the_aggregated_clients(first_run: Path) -> None:
    """Every run keeps a ledger: per round the partitions whose updates were aggregated."""
    from fedsim.records.ledger import load_ledger

    ledger = load_ledger(first_run)
    assert ledger.seed == 3 and ledger.stored_rounds() == []  # ledger-every = 0: participants only
    for _, row in pd.read_csv(first_run / "metrics.csv").iterrows():
        rnd = int(row["round"])
        chosen = [int(p) for p in str(row["selected"]).split()]
        ok = sorted(p for p in chosen if derive(3, "fault", rnd, p).random() >= 0.3)
        assert sorted(ledger.participants(rnd)) == ok
    from safetensors.torch import load_file
    final = load_file(str(first_run / "model" / "diffusion_pytorch_model.safetensors"))
    assert set(ledger.initial()) == set(final)  # the replay's start is the same model


def test_a_run_where_every_client_failed_is_refused(tmp_path: Path, env: dict) -> None:
    """Nothing trained is not a finished run: one line, a non-zero exit, status failed."""
    import json

    seed = next(s for s in range(100) if all(derive(s, "fault", 1, p).random() < 0.99 for p in (0, 1)))
    out = tmp_path / "run"
    cmd = [str(BIN / "fedsim"), "run", "--out", str(out)]
    for item in ["num-clients=2", "clients-per-round=2", "rounds=1", "partition='iid'", "local-epochs=1",
                 "client-failure-rate=0.99", "eval-every=0", f"seed={seed}"]:
        cmd += ["--set", item]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode != 0
    assert "every client failed in every round" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    assert len(pd.read_csv(out / "metrics.csv")) == 1  # what was written stays


def _running(tmp_path: Path, env: dict):
    """A long `fedsim run` in a session of its own, once round 2 is written (Flower and Ray are up),
    with the processes it has started by then."""
    import psutil

    out = tmp_path / "run"
    cmd = [str(BIN / "fedsim"), "run", "--out", str(out)]
    for item in [*SETTINGS[:4], "rounds=200", "eval-every=0", "seed=3"]:
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not ((out / "metrics.csv").is_file() and len((out / "metrics.csv").read_text().splitlines()) >= 3):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_group(proc)
            raise AssertionError("the run did not reach round 2")
        time.sleep(0.5)
    time.sleep(1.0)  # the watchdog learns the process groups every 0.5 s
    started = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(p.name() for p in started)
    assert "raylet" in names and "flwr-simulation" in names, names  # Ray is up: the case that leaked
    return proc, out, started


def _kill(proc: subprocess.Popen, sig: int, wait: float) -> None:
    """Send ``sig`` to the CLI alone (not its group), wait for it; its group is ended after, whatever happened."""
    try:
        os.kill(proc.pid, sig)
        proc.wait(timeout=wait)
    finally:
        _stop_group(proc)


def test_sigterm_ends_every_process_the_run_started(tmp_path: Path, env: dict) -> None:
    """`kill PID` of a running `fedsim run` ends its SuperLink, the flwr-simulation that the
    SuperLink started and that process's Ray GCS, raylet and workers (they were left running,
    reparented to init), and keeps the rounds already written."""
    proc, out, started = _running(tmp_path, env)
    _kill(proc, signal.SIGTERM, wait=120)
    assert proc.returncode != 0
    left = still_running(started, within=0)
    assert not left, f"still running after the run ended: {left}"
    assert len(pd.read_csv(out / "metrics.csv")) >= 2


def test_sigkill_of_the_cli_leaves_no_process_of_the_run(tmp_path: Path, env: dict) -> None:
    """`kill -9` of `fedsim run` gives it no chance to clean up: the watchdog it started beside the
    SuperLink ends the SuperLink, flwr-simulation and Ray within 15 s."""
    proc, _, started = _running(tmp_path, env)
    _kill(proc, signal.SIGKILL, wait=30)
    left = still_running(started, within=15)
    assert not left, f"still running 15 s after kill -9 of the CLI: {left}"


@pytest.mark.parametrize("strategy, extra", [("fedprox", ["proximal-mu=0.1"]), ("fedadam", ["server-lr=0.01"])])
def test_flower_rules_run_end_to_end_under_fedemd_and_dhq(tmp_path: Path, env: dict, strategy: str,
                                                          extra: list[str]) -> None:
    """`fedsim run` with Flower's FedProx / FedAdam under FedEMD selection and DHQ compression, every
    reply aggregated (a resumed FedAdam run, its moments in the checkpoint: tests/test_resume_e2e.py)."""
    out = tmp_path / "run"
    cmd = [str(BIN / "fedsim"), "run", "--out", str(out)]
    for item in ["model='cnn'", "num-clients=6", "clients-per-round=3", "rounds=2", "local-epochs=1",
                 "partition='dirichlet'", "selector='fedemd'", "compression='dhq'", "keep-ratio=0.1",
                 f"strategy='{strategy}'", *extra]:
        cmd += ["--set", item]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    df = pd.read_csv(out / "metrics.csv")
    assert list(df["round"]) == [1, 2]
    assert (df["clients_rejected"] == 0).all() and (df["compression_ratio"] > 2).all()
    assert df["test_acc"].notna().all() and np.isfinite(df["train_loss"]).all()
