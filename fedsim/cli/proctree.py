"""Ending the processes a run started, however the CLI that started them ends.

The SuperLink starts flower-superexec, which starts flwr-simulation in a process group
of its own; that process starts Ray's GCS, raylet and workers in the same group. When the
SuperLink goes, those are reparented to init and run on. So a run's processes are ended by
process group: the groups of the SuperLink's descendants, read while they are still its
descendants.

- A normal end, an exception, Ctrl-C or SIGTERM: ``LocalFederation.__exit__`` calls
  :func:`end_tree`.
- SIGKILL of the CLI (or anything else that gives it no chance to clean up): the watchdog,
  a small process started beside the SuperLink in a session of its own, notices that its
  parent is gone (it is reparented) and ends the groups it has seen. It learns the groups
  twice a second, so a group that appeared in the last half second before the kill may be
  missed; the SuperLink's own group (the SuperLink and SuperExec) is always known.

psutil reads the process tree (no library ends a tree by groups as this needs).

    python -m fedsim.cli.proctree PARENT_PID LEADER_PID     (the watchdog; LocalFederation starts it)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

POLL_S = 0.5


def groups_of(leader: int) -> set[int]:
    """The process groups of ``leader`` and of its living descendants (never this process's own)."""
    groups = {leader}
    try:
        tree = psutil.Process(leader).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for proc in tree:
        try:
            groups.add(os.getpgid(proc.pid))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgrp())
    return groups


def end_groups(groups: set[int], grace: float = 20.0, reap=lambda: None) -> None:
    """SIGTERM every group, SIGKILL what is left of them after ``grace`` seconds. ``reap`` is
    called while waiting (a caller reaps its own child there: a zombie keeps its group alive)."""

    def signal_all(sig: int) -> bool:
        reap()
        alive = False
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
                alive = True
            except ProcessLookupError:
                pass
        return alive

    if not signal_all(signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not signal_all(0):
            return
        time.sleep(0.2)
    signal_all(signal.SIGKILL)


def end_tree(leader: subprocess.Popen, grace: float = 20.0) -> None:
    """End ``leader`` (started with start_new_session) and every group of its descendants; reap it."""
    end_groups(groups_of(leader.pid), grace, reap=leader.poll)
    leader.wait()


def start_watchdog(leader: subprocess.Popen) -> subprocess.Popen:
    """The watchdog of ``leader``'s tree for this process (see the module docstring)."""
    return subprocess.Popen([sys.executable, "-m", "fedsim.cli.proctree", str(os.getpid()), str(leader.pid)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def watch(parent: int, leader: int) -> None:
    """Until ``parent`` is gone (this process is reparented), learn ``leader``'s groups; then end them."""
    seen: set[int] = {leader}
    while os.getppid() == parent:
        if psutil.pid_exists(leader):
            seen |= groups_of(leader)
        time.sleep(POLL_S)
    end_groups(seen, grace=10.0)


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
