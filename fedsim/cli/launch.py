"""Start a run the way Flower runs apps today: a private local SuperLink in
simulation mode (loopback only, its own port and FLWR_HOME inside the run
folder, so concurrent runs never collide), then ``flwr run`` submits the app.

The app submitted is a generated directory holding only a pyproject.toml that
names fedsim's ServerApp/ClientApp (imported from the installed package) and
the run's resolved config as ``[tool.flwr.app.config]``. The simulation engine
(Ray) starts inside the SuperLink's simulation process; with ``ray-address``
set it joins that existing Ray cluster instead (RAY_ADDRESS).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import tomli_w

from fedsim.cli.proctree import end_tree, start_watchdog
from fedsim.config import RunConfig

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
    "PYTHONUNBUFFERED": "1",
}


class LaunchError(RuntimeError):
    """The local SuperLink or the run submission failed; one line for the user."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flwr_bin(name: str) -> str:
    """Console scripts of the interpreter's environment (works without an activated venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def app_pyproject(cfg: RunConfig) -> dict:
    return {
        "build-system": {"requires": ["setuptools"], "build-backend": "setuptools.build_meta"},
        "project": {"name": "fedsim-run", "version": "0.1.0", "dependencies": [],
                    "description": "fedsim run", "license": "Apache-2.0"},
        "tool": {"flwr": {"app": {
            "publisher": "fedsim",
            "components": {"serverapp": "fedsim.app.server_app:app",
                           "clientapp": "fedsim.app.client_app:app"},
            "config": cfg.to_flwr(),
        }}},
    }


class LocalFederation:
    """Context manager: a SuperLink on 127.0.0.1 for one run, stopped on exit."""

    def __init__(self, run_dir: Path, cfg: RunConfig, *, pyproject: dict | None = None) -> None:
        """pyproject: the app to submit (default fedsim's, app_pyproject(cfg))."""
        self.run_dir, self.cfg = run_dir, cfg
        self.pyproject = pyproject or app_pyproject(cfg)
        self.home = run_dir / ".flwr"
        self.logs = run_dir / "logs"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.watchdog: subprocess.Popen | None = None
        # The SuperLink starts flower-superexec / flwr-simulation by name: put this
        # interpreter's scripts first on PATH (works without an activated venv).
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(self.home), "PATH": path}
        if cfg.ray_address:
            self.env["RAY_ADDRESS"] = cfg.ray_address
        elif cfg.ray_object_store_mb:  # the Ray the simulation starts: a small store (a cluster keeps its own)
            self.env["RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES"] = str(cfg.ray_object_store_mb * 2**20)

    def __enter__(self) -> LocalFederation:
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.home / "app").mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(tomli_w.dumps({"superlink": {
            "default": "fedsim", "fedsim": {"address": f"127.0.0.1:{self.port}", "insecure": True}}}))
        (self.home / "app" / "pyproject.toml").write_text(tomli_w.dumps(self.pyproject))
        cmd = [flwr_bin("flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1",
               "--port", str(self.port), "--disable-runtime-dependency-installation",
               "--log-file", str(self.logs / "superlink.log")]
        out = (self.logs / "simulation.log").open("ab")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.run_dir)
        self.watchdog = start_watchdog(self.proc)  # ends the tree if this process is killed outright
        try:
            self._wait_healthy()
        except BaseException:
            self.__exit__()  # `with` calls __exit__ only once __enter__ has returned
            raise
        return self

    def _wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LaunchError(f"flower-superlink exited with code {self.proc.returncode}; "
                                  f"see {self.logs / 'simulation.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise LaunchError(f"flower-superlink did not start within {timeout:.0f} s; see {self.logs}")

    def __exit__(self, *exc) -> None:
        if self.proc:
            end_tree(self.proc)  # the SuperLink's group: flwr-simulation and its Ray processes too
        if self.watchdog:
            self.watchdog.terminate()
            self.watchdog.wait()

    def _flwr(self, *args: str, timeout: float = 120) -> dict:
        res = subprocess.run([flwr_bin("flwr"), *args, "--format", "json"], env=self.env,
                             capture_output=True, text=True, timeout=timeout, cwd=self.run_dir)
        with (self.logs / "flwr-cli.log").open("a") as f:
            f.write(f"$ flwr {' '.join(args)}\n{res.stdout}\n{res.stderr}\n")
        try:
            return json.loads(res.stdout[res.stdout.index("{"):])
        except ValueError:
            raise LaunchError(f"`flwr {args[0]}` failed: {res.stderr.strip()[-300:] or res.stdout[-300:]}") from None

    def submit(self, federation: str | None = None) -> str:
        """``flwr run`` the app; federation: its --federation-config (default: fedsim's settings)."""
        fed = federation or (f"num-supernodes={self.cfg.num_clients} "
                             f"client-resources-num-cpus={self.cfg.client_cpus} "
                             f"client-resources-num-gpus={self.cfg.client_gpus} "
                             f"init-args-logging-level='ERROR' init-args-log-to-driver=false")
        res = self._flwr("run", str(self.home / "app"), "fedsim", "--federation-config", fed)
        if not res.get("success"):
            raise LaunchError(f"flwr run failed: {res}")
        return str(res["run-id"])

    def finished(self, run_id: str) -> bool:
        """True once the SuperLink logged the end of the run's simulation task.

        Read from the SuperLink's log file: polling ``flwr ls`` would start a
        Python process every few seconds, stealing CPU from the clients."""
        try:
            text = (self.logs / "superlink.log").read_text(errors="replace")
        except OSError:
            return False
        return re.search(rf"Finished task \d+ of run {run_id}\b", text) is not None
