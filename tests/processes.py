"""Process helpers shared by the end-to-end tests that kill runs (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import signal
import time

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
