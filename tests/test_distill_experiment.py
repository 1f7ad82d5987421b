"""experiments/distillation/run.py on a tiny teacher (ddpm-tiny on the 8x8 digits, T = 16): each K and
seed gives a teacher-DDIM row and a student row on the same scores, a rerun skips what is done, and
the report pairs the student with the teacher seed by seed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from fedsim.config import RunConfig, write_toml
from fedsim.models.networks import build_model, save_model

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "distillation" / "run.py"


def load():
    spec = importlib.util.spec_from_file_location("distill_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher") / "run"
    folder.mkdir()
    cfg = RunConfig(model="ddpm-tiny", dataset="digits", timesteps=16, beta_schedule="squaredcos_cap_v2",
                    sample_steps=4, rounds=1)
    write_toml(cfg, folder / "config.toml")
    save_model(build_model("ddpm-tiny", (1, 8, 8), 10, seed=0), folder / "model")
    (folder / "metrics.csv").write_text("round,eval_loss\n1,0.5\n")
    return folder


def test_rows_per_k_seed_and_sampler_then_a_paired_report(teacher, tmp_path, monkeypatch):
    run = load()
    monkeypatch.setattr(run, "is_done", lambda folder: True)
    argv = ["--out", str(tmp_path), "--teacher", str(teacher), "--steps", "4", "8", "--seeds", "2", "--samples", "24",
            "--epochs", "1"]
    assert run.main(argv) == 0
    rows = pd.read_csv(tmp_path / "results.csv")
    assert sorted(zip(rows.steps, rows.seed, rows.sampler)) == sorted(
        (k, s, m) for k in (4, 8) for s in (0, 1) for m in ("teacher-ddim", "student"))
    assert rows.groupby("seed").kid_floor.nunique().eq(1).all()  # one real-vs-real floor per seed
    assert (rows.recognised.between(0, 1)).all() and (rows.s_per_image > 0).all()
    teacher_rows = rows[rows.sampler == "teacher-ddim"].set_index(["steps", "seed"])
    student_rows = rows[rows.sampler == "student"].set_index(["steps", "seed"])
    assert (teacher_rows.fd != student_rows.fd).all()  # the student is a different model
    # the student row scores the student model over its own schedule (re-scored here by hand)
    from fedsim.evaluation.server import ServerEvaluator
    from fedsim.models.diffusion import student_schedule
    from fedsim.models.networks import load_pretrained
    from fedsim.records.run_folder import finished_run_config

    student = tmp_path / "students" / "8-1" / "model"
    again = run.score_row(ServerEvaluator(finished_run_config(teacher), tmp_path), load_pretrained(student),
                          student_schedule(student), 8, 1, 24)
    assert again["fd"] == pytest.approx(student_rows.fd[(8, 1)], rel=1e-6)
    assert run.main(argv) == 0  # a rerun adds nothing
    assert len(pd.read_csv(tmp_path / "results.csv")) == len(rows)
    md = (tmp_path / "results.md").read_text()
    assert md.count("student − teacher") == 2 and "(n = 2)" in md and (tmp_path / "results.png").stat().st_size > 0


def test_a_rerun_with_other_epochs_is_refused_and_the_table_states_the_budget(teacher, tmp_path, monkeypatch, capsys):
    run = load()
    monkeypatch.setattr(run, "is_done", lambda folder: True)
    argv = ["--out", str(tmp_path), "--teacher", str(teacher), "--steps", "4", "--seeds", "1", "--samples", "8"]
    assert run.main([*argv, "--epochs", "1"]) == 0
    assert "Students: 1 epochs" in (tmp_path / "results.md").read_text()
    capsys.readouterr()
    assert run.main([*argv, "--epochs", "2"]) == 2  # every row is there, but for 1 epoch
    assert "not --epochs 2" in capsys.readouterr().err
    (tmp_path / "results.csv").unlink()  # rows gone, the 1-epoch student still there
    assert run.main([*argv, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "trained for 1 epochs, not --epochs 2" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results.csv").exists()
