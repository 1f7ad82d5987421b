"""Deployment without a container engine: docker/compose.yml's services started as
processes on 127.0.0.1 (tests/loopback.py), TLS and node authentication on.

One test walks the whole story, because starting a federation costs most of its
time: an unregistered SuperNode is refused, three registered ones train three
rounds of experiments/deployment.toml on their own data folders (`flwr run`),
one is killed during round 1 and the run goes on without it, and once Flower
has marked it offline it is restarted and takes part again in round 3.
"""

from __future__ import annotations

import csv
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tomli_w

from fedsim.cli.launch import FLOWER_ENV
from fedsim.cli.main import main as fedsim_main
import loopback  # tests/loopback.py (pytest puts tests/ on sys.path)

ROOT_DIR = Path(__file__).resolve().parents[1]
NODES = ("supernode-1", "supernode-2", "supernode-3")


def test_compose_services_run_the_image_entrypoints_with_security_flags():
    """What the loopback test starts is what the images run, and the images run secure."""
    compose = loopback.load_compose()
    services = compose["services"]
    assert set(services) == {"superlink", "serverapp", *NODES}
    entry = {name: loopback.entrypoint(loopback.service_dockerfile(s))[0] for name, s in services.items()}
    assert entry == {"superlink": "flower-superlink", "serverapp": "flower-superexec",
                     **{n: "flower-supernode" for n in NODES}}
    flags = {name: {a.split("=")[0] for a in s["command"]} for name, s in services.items()}
    assert {"--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth",
            "--superexec-auth-secret-file"} <= flags["superlink"]
    assert "--root-certificates" in flags["serverapp"]
    for name in NODES:
        assert {"--root-certificates", "--auth-supernode-private-key", "--node-config"} <= flags[name]
    assert not any("--insecure" in f for f in flags.values())
    configs = [next(a for a in services[n]["command"] if a.startswith("--node-config")) for n in NODES]
    assert configs == [f'--node-config=data-dir="/data" client-id={k}' for k in range(3)]
    # the loopback mapping: container paths become ROOT paths through the volumes
    argv = loopback.service_argv("supernode-2", Path("/r"), 1234, compose)
    assert argv[:3] == ["flower-supernode", "--superlink=127.0.0.1:1234", "--root-certificates=/r/certs/ca.crt"]
    assert "--auth-supernode-private-key=/r/certs/node_2" in argv
    assert '--node-config=data-dir="/r/data/node-1" client-id=1' in argv


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _flwr(env: dict, *args: str) -> subprocess.CompletedProcess:
    flwr = str(Path(sys.executable).parent / "flwr")
    return subprocess.run([flwr, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.deployment
def test_loopback_deployment_tls_auth_and_a_node_lost_mid_round(tmp_path):
    root = tmp_path
    subprocess.run(["bash", str(loopback.DOCKER / "certs.sh"), str(root / "certs"), "4"],
                   check=True, capture_output=True)
    for d in ("state", "runs"):
        (root / d).mkdir()
    base = ROOT_DIR / "experiments" / "deployment.toml"
    assert fedsim_main(["split-data", str(base), "--set", "dataset=digits", "--out", str(root / "data")]) == 0

    env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(root / "home"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    procs = loopback.Processes(root, env)
    compose = loopback.load_compose()
    port = loopback.free_port()
    try:
        procs.start("superlink", loopback.service_argv("superlink", root, port, compose))
        tls = ssl.create_default_context(cafile=str(root / "certs" / "ca.crt"))

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=tls, timeout=2):
                    return True
            except (OSError, urllib.error.URLError):
                assert procs.procs["superlink"].poll() is None, procs.text("superlink")[-2000:]
                return False

        loopback.wait_for(healthy, 60, "the SuperLink answered over TLS")
        with pytest.raises((OSError, urllib.error.URLError)):  # TLS only: plain HTTP is not served
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        procs.start("serverapp", loopback.service_argv("serverapp", root, port, compose))

        (root / "home").mkdir(exist_ok=True)
        (root / "home" / "config.toml").write_text(tomli_w.dumps({"superlink": {
            "default": "local",
            "local": {"address": f"127.0.0.1:{port}", "root-certificates": str(root / "certs" / "ca.crt")}}}))
        flwr = str(Path(sys.executable).parent / "flwr")
        registering = [subprocess.Popen([flwr, "supernode", "register", str(root / "certs" / f"node_{k}.pub"), "local"],
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                       for k in (1, 2, 3)]
        for proc in registering:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0 and "registered" in out, out

        argv = {n: loopback.service_argv(n, root, port, compose) for n in NODES}
        for n in NODES:
            procs.start(n, argv[n])
        # a SuperNode with a key nobody registered (node_4): refused, gives up after its retries
        intruder = [a.replace("node_1", "node_4").replace("client-id=0", "client-id=3")
                    for a in loopback.service_argv("supernode-1", root, port, compose)]
        procs.start("intruder", [*intruder, "--max-retries=1", "--max-wait-time=20"])
        loopback.wait_for(lambda: procs.text("superlink").count("Activated node_id") >= 3, 90,
                          "three SuperNodes activated")

        assert fedsim_main(["app", str(base), "--set", f"dataset-path={root / 'data' / 'server'}",
                            "--out", str(root / "app")]) == 0
        res = _flwr(env, "run", str(root / "app"), "local", "--format", "json")
        assert res.returncode == 0 and json.loads(res.stdout[res.stdout.index("{"):])["success"], res.stdout + res.stderr
        # no out-dir: the ServerApp writes runs/<timestamp> under the runtime's working directory
        run_dir = loopback.wait_for(lambda: next((root / "runs").glob("*/status.json"), None), 60,
                                    "the ServerApp created its run folder").parent

        # kill supernode-3 while it holds round 1's TRAIN message
        loopback.wait_for(lambda: "Receiving: train message" in procs.text("supernode-3"), 120,
                          "supernode-3 received its round-1 TRAIN message")
        time.sleep(0.5)
        procs.kill("supernode-3")
        assert not _rows(run_dir / "metrics.csv"), "round 1 ended before the kill"
        # Flower declares it offline after two missed heartbeats; then it may come back
        loopback.wait_for(lambda: len(_rows(run_dir / "metrics.csv")) >= 1, 150, "round 1 finished")
        procs.start("supernode-3-restarted", loopback.service_argv("supernode-3", root, port, compose))

        def finished():
            status = run_dir / "status.json"
            state = json.loads(status.read_text())["state"] if status.exists() else ""
            assert state != "failed", status.read_text()
            return state == "done"

        loopback.wait_for(finished, 150, "the run finished", poll=1)
        rows = _rows(run_dir / "metrics.csv")
        assert [int(r["round"]) for r in rows] == [1, 2, 3]
        assert (int(rows[0]["clients_sampled"]), int(rows[0]["clients_failed"])) == (3, 1)
        assert rows[0]["selected"] == "0 1 2"
        assert int(rows[2]["clients_failed"]) == 0 and "2" in rows[2]["selected"].split(), rows[2]
        assert float(rows[-1]["test_acc"]) > 0.3, rows  # it learned something
        assert (run_dir / "model").exists()

        loopback.wait_for(lambda: procs.procs["intruder"].poll() is not None, 30, "the intruder gave up")
        assert procs.procs["intruder"].returncode != 0
        assert "Failed to activate SuperNode" in procs.text("intruder")
        assert "No SuperNode found with the given public key" in procs.text("superlink")
        listed = _flwr(env, "supernode", "list", "local", "--format", "json")
        nodes = json.loads(listed.stdout[listed.stdout.index("{"):])["nodes"]
        assert len(nodes) == 3 and all(n["status"] == "online" for n in nodes), nodes
    finally:
        procs.stop_all()
