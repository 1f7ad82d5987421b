"""An SFDDM student (fedsim distill) where a model is loaded: as ``pretrained`` of a run, which then
needs the student's schedule (timesteps = K, schedule-stride = c), and as GIDM's prior, which then
samples with the student's own K-step schedule, not the victim's."""

from __future__ import annotations

import pytest
import torch

from attacks.gidm import GIDM, GIDMConfig, ddim_generate
from fedsim.cli.main import main
from fedsim.cli.preflight import check
from fedsim.config import RunConfig, write_toml
from fedsim.models.diffusion import NoiseSchedule, student_schedule
from fedsim.models.networks import ModelError, build_model, save_model
from fedsim.models.train import run_task

TEACHER = dict(model="ddpm-tiny", dataset="digits", timesteps=16, beta_schedule="squaredcos_cap_v2", sample_steps=4)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    run = tmp_path_factory.mktemp("student") / "run"
    run.mkdir()
    write_toml(RunConfig(**TEACHER), run / "config.toml")
    save_model(build_model("ddpm-tiny", (1, 8, 8), 10, seed=0), run / "model")
    out = run / "distill-4"
    assert main(["distill", str(run), "--steps", "4", "--epochs", "1", "--batch-size", "256", "--samples", "2",
                 "--out", str(out)]) == 0
    return out / "model"


def test_the_student_schedule_is_read_back(student, tmp_path):
    sched = student_schedule(student)
    assert (sched.timesteps, sched.stride, sched.beta_schedule) == (4, 4, "squaredcos_cap_v2")
    assert student_schedule(tmp_path) is None  # a plain model folder has none


def test_a_run_fine_tuning_a_student_needs_its_schedule(student):
    wrong = RunConfig(**TEACHER, pretrained=str(student))
    with pytest.raises(ModelError, match="timesteps = 4, schedule-stride = 4"):
        check(wrong)
    right = RunConfig(**{**TEACHER, "timesteps": 4}, schedule_stride=4, pretrained=str(student))
    check(right)
    teacher = NoiseSchedule(16, "squaredcos_cap_v2")
    # the run's noisy inputs at t are the teacher's at 4 t, the ones the student was distilled on
    assert torch.equal(run_task(right).schedule.alpha_bar, teacher.alpha_bar[::4])


def test_gidm_samples_a_student_prior_in_its_own_steps(student):
    victim_schedule = NoiseSchedule(16, "squaredcos_cap_v2")
    victim = type("V", (), {"task": type("T", (), {"schedule": victim_schedule})()})()
    prior = GIDM(GIDMConfig(sampler_steps=16)).load_prior(victim, str(student))
    assert (prior.schedule.timesteps, prior.schedule.stride, prior.steps) == (4, 4, 4)
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(prior(z), ddim_generate(prior.model, student_schedule(student), z, 4))
        # what the victim's 16-step schedule would give is a different image
        assert not torch.allclose(prior(z), ddim_generate(prior.model, victim_schedule, z, 16), atol=1e-3)
