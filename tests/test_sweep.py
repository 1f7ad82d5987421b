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


def test_a_cell_may_grow_its_rounds_when_resumed(tmp_path):
    base, folder = _cell(tmp_path, seed=2)
    Checkpoints(folder).save(2, {"round": 2})
    assert sweep._resumable(base, {"seed": 2}, folder) == 4
    assert sweep._resumable(base, {"seed": 2, "rounds": 6}, folder) == 6  # resumed with --set rounds=6
    assert sweep._resumable(base, {"seed": 2, "rounds": 3}, folder) == 0  # rounds only grow


def test_an_interrupted_unlearn_cell_is_handed_to_fedsim_unlearn_and_started_again_if_refused(tmp_path, monkeypatch):
    answers, calls = [], []  # what each `fedsim unlearn` call answers; (did the folder still hold "keep")

    def call(cmd):
        calls.append((folder / "keep").exists())
        return answers.pop(0)

    monkeypatch.setattr(sweep, "_call", call)
    _, folder = _cell(tmp_path, seed=2)
    (folder / "keep").write_text("x")
    answers[:] = [""]  # no checkpoint: a fresh start, the folder removed first
    assert sweep.fedsim_unlearn(tmp_path / "orig", "salun", ["--class", "1"], {}, folder) == ""
    assert calls == [False]

    for answers[:], want in ((["", ""], [True]), (["refused", ""], [True, False])):
        folder.mkdir(exist_ok=True)  # an interrupted run with a checkpoint
        write_toml(RunConfig(rounds=4, out_dir=str(folder)), folder / "config.toml")
        Checkpoints(folder).save(1, {"round": 1})
        (folder / "keep").write_text("x")
        calls.clear()
        assert sweep.fedsim_unlearn(tmp_path / "orig", "salun", ["--class", "1"], {}, folder) == ""
        assert calls == want  # handed over as it is; refused: removed and run from scratch


def test_fedsim_unlearn_continues_only_its_own_run(tmp_path):
    from fedsim.cli.unlearn import continued
    from fedsim.config import ConfigError
    from fedsim.records.run_folder import RunFolder

    cfg = RunConfig(rounds=4, unlearn_method="salun", forget_class=1, out_dir=str(tmp_path))
    assert continued(tmp_path, cfg, warn=print) == (cfg, True)  # a fresh folder
    write_toml(cfg, tmp_path / "config.toml")
    RunFolder(tmp_path).start_metrics(["x"])
    Checkpoints(tmp_path).save(2, {"round": 2})
    again, left = continued(tmp_path, cfg, warn=print)
    assert left and again.resume
    try:
        continued(tmp_path, cfg.replace(unlearn_lr=0.1), warn=print)
        raise AssertionError("another run's folder was continued")
    except ConfigError as err:
        assert "unlearn-lr" in str(err) and "\n" not in str(err)
    RunFolder(tmp_path).status("done", round=4)
    assert continued(tmp_path, cfg, warn=print)[1] is False  # finished: scored only


def test_run_all_skips_finished_runs_and_records_each_outcome(tmp_path, monkeypatch, capsys):
    done, ok, bad = tmp_path / "done", tmp_path / "ok", tmp_path / "bad"
    done.mkdir()
    (done / "status.json").write_text('{"state": "done"}')
    started = []

    def fake_run(config, overrides, folder):
        started.append(folder)
        return "error: boom" if folder == bad else ""

    monkeypatch.setattr(sweep, "fedsim_run", fake_run)
    sweep.run_all([("d", tmp_path / "c.toml", {}, done), ("o", tmp_path / "c.toml", {}, ok),
                   ("b", tmp_path / "c.toml", {}, bad)])
    assert started == [ok, bad]
    assert float((ok / "elapsed_s.txt").read_text()) >= 0 and not (ok / "error.txt").exists()
    assert (bad / "error.txt").read_text() == "error: boom\n" and not (bad / "elapsed_s.txt").exists()
    out = capsys.readouterr().out
    assert "1 of 3 runs already finished" in out and "[2/2] b: failed: error: boom" in out
