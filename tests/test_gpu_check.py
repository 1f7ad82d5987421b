"""experiments/gpu_check.sh / gpu_check.py: the script parses, the jobs are the issue's (on a GPU:
client-gpus 0.25, bench at 100 clients on cuda; on a CPU: the cut-down fallback), a job's files are
read into the CSV row, and a job that fails or runs out of time is recorded while the next runs.
The GPU figures themselves are measured on a GPU machine (docs/simulation.md, GPU check)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedsim.cli.sweep import sibling

ROOT = Path(__file__).resolve().parents[1]
gpu_check = sibling(str(ROOT / "experiments" / "gpu_check.py"), "gpu_check", "experiments")


def test_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(ROOT / "experiments" / "gpu_check.sh")]).returncode == 0


def value(cmd: list[str], key: str) -> str:
    """The value of `--set key=...` (or of `--key`) in a command line."""
    for i, a in enumerate(cmd):
        if a.startswith(f"{key}="):
            return a.split("=", 1)[1]
        if a == f"--{key}":
            return cmd[i + 1]
    raise KeyError(key)


def test_gpu_jobs_are_the_checks_asked_for(tmp_path: Path) -> None:
    jobs = {name: cmd for name, cmd, _ in gpu_check.jobs(tmp_path, cuda=True)}
    assert list(jobs) == ["quickstart", "bench", "showcase-round"]
    assert value(jobs["quickstart"], "client-gpus") == "0.25" and value(jobs["quickstart"], "device") == "'cuda'"
    assert "quickstart.toml" in " ".join(jobs["quickstart"])
    assert "rounds" not in " ".join(jobs["quickstart"])  # the whole quickstart on a GPU
    assert value(jobs["bench"], "clients") == "100" and value(jobs["bench"], "device") == "cuda"
    assert value(jobs["showcase-round"], "rounds") == "1" and "showcase.toml" in " ".join(jobs["showcase-round"])
    assert sum(share for *_, share in gpu_check.jobs(tmp_path, cuda=True)) == pytest.approx(1.0)


def test_cpu_fallback_is_cut_down(tmp_path: Path) -> None:
    jobs = {name: cmd for name, cmd, _ in gpu_check.jobs(tmp_path, cuda=False)}
    assert value(jobs["quickstart"], "device") == "'cpu'" and value(jobs["quickstart"], "client-gpus") == "0.0"
    assert value(jobs["quickstart"], "rounds") == "2" and value(jobs["bench"], "clients") == "10"
    assert value(jobs["showcase-round"], "num-samples") == "100"


def test_measured_reads_metrics_and_bench(tmp_path: Path) -> None:
    (tmp_path / "quickstart").mkdir()
    pd.DataFrame({"round": [1, 2, 3], "wall_s": [5.0, 3.0, 13.0], "eval_s": [0.0, 0.0, 10.0],
                  "recognised": [None, None, 0.8]}).to_csv(tmp_path / "quickstart" / "metrics.csv", index=False)
    row = gpu_check.measured("quickstart", tmp_path)
    assert row["round_s"] == 3.0 and row["eval_s"] == 10.0 and "recognised 0.8" in row["detail"]
    (tmp_path / "bench").mkdir()
    pd.DataFrame({"clients": [100, 100], "runner": ["plain", "fedsim"], "device": ["cuda"] * 2,
                  "round_s": [2.0, 3.0], "peak_rss_mb": [100.0, 900.0]}).to_csv(
        tmp_path / "bench" / "bench_simulation.csv", index=False)
    row = gpu_check.measured("bench", tmp_path)
    assert row["round_s"] == 3.0 and "fedsim/plain 1.50" in row["detail"]


def test_failed_and_slow_jobs_are_recorded_and_the_rest_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    never = [sys.executable, "-c", "import time; time.sleep(60)"]
    monkeypatch.setattr(gpu_check, "jobs", lambda out, cuda: [
        ("quickstart", [sys.executable, "-c", "raise SystemExit('boom')"], 0.4),
        ("bench", never, 0.3),
        ("showcase-round", [sys.executable, "-c", "print('done')"], 0.3)])
    monkeypatch.setattr(gpu_check, "measured", lambda job, out: (_ for _ in ()).throw(OSError("no file")))
    monkeypatch.setattr(gpu_check, "MIN_LIMIT_S", 1.0)
    assert gpu_check.main(["--out", str(tmp_path), "--budget-s", "10"]) == 1
    rows = pd.read_csv(tmp_path / "gpu_check.csv")
    assert list(rows.job) == ["quickstart", "bench", "showcase-round"]
    assert rows.status[0] == "failed (exit 1)" and rows.detail[0] == "boom"
    assert rows.status[1].startswith("timed out") and rows.wall_s[1] < 30
    assert rows.status[2].startswith("ok, unreadable output")
