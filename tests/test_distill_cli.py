"""`fedsim distill RUN --steps K` end to end on a small run folder (ddpm-tiny on the 8x8 digits, T = 16),
in process: the student, its schedule file, the losses, the grid and the timings; bad input is one line."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from fedsim.cli.main import main
from fedsim.config import RunConfig, write_toml
from fedsim.models.networks import build_model, load_pretrained, save_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill") / "run"
    folder.mkdir()
    cfg = RunConfig(model="ddpm-tiny", dataset="digits", timesteps=16, beta_schedule="squaredcos_cap_v2", sample_steps=8)
    write_toml(cfg, folder / "config.toml")
    save_model(build_model("ddpm-tiny", (1, 8, 8), 10, seed=0), folder / "model")
    return folder


def test_distill_writes_the_student_its_schedule_losses_grid_and_timing(run, tmp_path):
    out = tmp_path / "d4"
    assert main(["distill", str(run), "--steps", "4", "--epochs", "2", "--batch-size", "128", "--samples", "4",
                 "--out", str(out)]) == 0
    schedule = json.loads((out / "model" / "fedsim_schedule.json").read_text())
    assert (schedule["teacher_timesteps"], schedule["stride"], schedule["steps"]) == (16, 4, 4)
    assert schedule["server_data"] == "digits test"
    losses = pd.read_csv(out / "losses.csv")
    assert list(losses.epoch) == [1, 2] and (losses.loss > 0).all()
    assert set(pd.read_csv(out / "timing.csv").sampler) == {"teacher-ddim", "student"}
    assert (out / "grid.png").stat().st_size > 0
    student, teacher = load_pretrained(out / "model"), load_pretrained(run / "model")
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values()))


@pytest.mark.parametrize("argv, words", [
    (["--steps", "5"], "must divide the teacher's 16 timesteps"),
    (["--steps", "4", "--epochs", "0"], "must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(run, capsys, argv, words):
    assert main(["distill", str(run), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    assert main(["distill", str(tmp_path), "--steps", "4"]) == 2
    assert "not a finished run folder" in capsys.readouterr().err
