"""Process helpers shared by the end-to-end tests that kill runs (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil


def still_running(started: list[psutil.Process], within: float) -> list[str]:
    """Which of ``started`` are still alive after up to ``within`` seconds (ended, if so, so a
    failing test leaks nothing)."""
    deadline = time.monotonic() + within
    while True:
        left = []
        for p in started:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p)
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for p in left:
        try:
            os.killpg(os.getpgid(p.pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return [f"{p.pid} {p.name()}" for p in left]


def rounds_written(out: Path) -> int:
    """Rounds in out/metrics.csv (0 before it exists)."""
    try:
        return max(0, len((out / "metrics.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


def kill_after_round(cmd: list[str], out: Path, rnd: int, env: dict, within: float = 600) -> None:
    """Start ``cmd`` (a fedsim command writing into ``out``), SIGKILL it once round ``rnd`` is in
    metrics.csv, and wait until what it started has ended (its watchdog ends the SuperLink,
    simulation and Ray; else this does)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    started = []
    deadline = time.monotonic() + within
    try:
        while rounds_written(out) < rnd:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, f"round {rnd} not written in {within:.0f} s"
            started = psutil.Process(proc.pid).children(recursive=True) or started
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        still_running(started, within=30)
