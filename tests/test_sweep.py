"""fedsim/cli/sweep.py: a sweep cell resumes its own interrupted run and nothing else, and a
killed experiment script leaves no child behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from fedsim.cli import sweep
from fedsim.config import RunConfig, write_toml
from fedsim.records.checkpoint import Checkpoints

PARENT = """
import subprocess, sys, time
from fedsim.cli.sweep import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=die_with_parent)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_child_dies_with_its_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert psutil.pid_exists(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the child outlived its SIGKILLed parent by 10 s")


def _cell(tmp_path, **overrides):
    base = tmp_path / "base.toml"
    base.write_text("rounds = 4\nnum-clients = 10\n")
    folder = tmp_path / "cell"
    folder.mkdir()
    cfg = RunConfig(rounds=4, num_clients=10, **{k.replace("-", "_"): v for k, v in overrides.items()},
                    out_dir=str(folder))
    write_toml(cfg, folder / "config.toml")
    return base, folder


def test_only_a_checkpointed_run_of_the_same_config_is_resumed(tmp_path):
    base, folder = _cell(tmp_path, seed=2)
    assert not sweep._resumable(base, {"seed": 2}, folder)  # no checkpoint yet
    Checkpoints(folder).save(2, {"round": 2})
    assert sweep._resumable(base, {"seed": 2}, folder)
    assert not sweep._resumable(base, {"seed": 3}, folder)  # the script now wants another run
    (folder / "config.toml").write_text((folder / "config.toml").read_text().replace("rounds = 4", "rounds = 5"))
    assert not sweep._resumable(base, {"seed": 2}, folder)
