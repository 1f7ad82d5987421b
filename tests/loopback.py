"""docker/compose.yml played as processes on 127.0.0.1, for machines without a container engine.

Each compose service becomes its image's ENTRYPOINT (read from the service's
Dockerfile) followed by the service's ``command``, unchanged except for what
one host forces:
- container paths become host paths through the service's volumes
  (``./certs:/certs`` -> ROOT/certs), so ROOT mirrors the docker/ folder;
- ``superlink:9093`` (the compose network name) becomes ``127.0.0.1:PORT``,
  ``--host=0.0.0.0`` becomes ``--host=127.0.0.1`` and ``--port=9093`` a free port;
- each SuperNode gets its own ``--port`` for its local ClientAppIo API (in
  containers they all use the default port, on one host they would collide).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from fedsim.cli.launch import free_port  # noqa: F401  (tests use loopback.free_port)

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE = DOCKER / "compose.yml"
SUPERLINK_PORT = "9093"  # the port compose.yml publishes
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand(text: str) -> str:
    """Compose's ``${VAR:-default}`` interpolation (the only form compose.yml uses)."""
    return _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), text)


def load_compose(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(expand(path.read_text()))


def entrypoint(dockerfile: Path) -> list[str]:
    """The exec-form ENTRYPOINT of a Dockerfile (the last one wins, as in Docker)."""
    found = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile.read_text(), re.M)
    if not found:
        raise ValueError(f"{dockerfile} has no exec-form ENTRYPOINT")
    return json.loads(found[-1])


def service_dockerfile(service: dict) -> Path:
    build = service["build"]
    return (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve()


def volume_map(service: dict, root: Path) -> list[tuple[str, str]]:
    """(container path, host path) pairs, longest container path first."""
    pairs = []
    for spec in service.get("volumes", []):
        host, container = spec.split(":")[:2]
        pairs.append((container, str((root / host).resolve())))
    return sorted(pairs, key=lambda p: -len(p[0]))


def to_host(arg: str, volumes: list[tuple[str, str]]) -> str:
    """Replace a container path inside ``arg`` (``--x=/certs/ca.crt``, ``data-dir="/data"``)."""
    for container, host in volumes:
        arg = re.sub(rf"(^|[=\s\"']){re.escape(container)}(?=[/\s\"']|$)", lambda m: m.group(1) + host, arg)
    return arg


def service_argv(name: str, root: Path, superlink_port: int, compose: dict | None = None) -> list[str]:
    compose = compose or load_compose()
    service = compose["services"][name]
    volumes = volume_map(service, root)
    argv = entrypoint(service_dockerfile(service)) + [to_host(a, volumes) for a in service["command"]]
    argv = [a.replace(f"superlink:{SUPERLINK_PORT}", f"127.0.0.1:{superlink_port}")
             .replace("--host=0.0.0.0", "--host=127.0.0.1")
             .replace(f"--port={SUPERLINK_PORT}", f"--port={superlink_port}") for a in argv]
    if argv[0] == "flower-supernode":
        argv.append(f"--port={free_port()}")
    return argv


class Processes:
    """Started processes, each in its own session (killed with its children), logs in ROOT/logs."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.procs: dict[str, subprocess.Popen] = {}
        (root / "logs").mkdir(parents=True, exist_ok=True)

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        bin_dir = Path(sys.executable).parent
        argv = [str(bin_dir / argv[0]) if (bin_dir / argv[0]).exists() else argv[0], *argv[1:]]
        with self.log(name).open("a") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.root, start_new_session=True)
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        self._signal(proc, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._signal(proc, signal.SIGKILL)

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM to every group at once, then SIGKILL whatever is left (children included)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            self._signal(proc, signal.SIGKILL)

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def text(self, name: str) -> str:
        return self.log(name).read_text(errors="replace")


def wait_for(condition, timeout: float, what: str, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what} within {timeout:.0f} s")
