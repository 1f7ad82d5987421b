"""experiments/fedemd/{run,report}.py without running federations: R@99, censoring, paired
differences, the tuning pick, resume and the configs the matrix runs (finished runs are
faked as run folders with metrics.csv, config.toml and status.json)."""

import importlib.util
import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim.config import load_config, read_toml, write_toml

HERE = Path(__file__).resolve().parents[1] / "experiments" / "fedemd"


@pytest.fixture(scope="module")
def exp():
    spec = importlib.util.spec_from_file_location("fedemd_run", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def spec():
    return tomllib.loads((HERE / "experiment.toml").read_text())


def fake_run(run, acc: list[float], mav_selections: list[int] | None = None, **config) -> None:
    """A finished run folder as `fedsim run` leaves it; ``config`` changes its config.toml."""
    run.folder.mkdir(parents=True)
    n = len(acc)
    pd.DataFrame({"round": range(1, n + 1), "test_acc": acc, "wall_s": 1.5,
                  "maverick_49_prob": 0.02, "maverick_49_selections": mav_selections or [0] * n,
                  "typical_prob": 0.02}).to_csv(run.folder / "metrics.csv", index=False)
    config = {"out-dir": str(run.folder), **config}  # fedsim run records where it wrote
    write_toml(load_config({**read_toml(run.config), **run.overrides, **config}), run.folder / "config.toml")
    (run.folder / "status.json").write_text(json.dumps({"state": "done"}))


def curve(r: int | None, n: int = 6) -> list[float]:
    """Accuracy 0.9 from round r on (never when r is None); random's target is then 0.891."""
    return [0.9 if r is not None and i + 1 >= r else 0.2 for i in range(n)]


def runs_of(exp, tmp_path, selectors, seeds, rounds=6, mavericks=("exclusive-1",)):
    runs = exp.matrix(tmp_path, {s: {"selector": s if s in ("random", "fedemd", "shapley") else "random"}
                                 for s in selectors}, list(seeds), rounds, list(mavericks), {})
    return runs, {(r.label, r.seed): r for r in runs}


def test_r99_is_the_first_round_at_the_target(exp):
    assert exp.report.r99(np.array([0.1, 0.5, 0.89, 0.9, 0.95]), 0.891) == 4
    assert exp.report.r99(np.array([0.1, 0.5]), 0.9) is None


def test_summary_by_hand(exp, tmp_path):
    runs, at = runs_of(exp, tmp_path, ["random", "fedemd", "broken"], [0], rounds=5)
    # random peaks at 0.90 -> target 0.891: random reaches it in round 4, fedemd in round 2
    fake_run(at["random", 0], [0.2, 0.5, 0.8, 0.9, 0.9], [0, 0, 1, 1, 1])
    fake_run(at["fedemd", 0], [0.3, 0.895, 0.9, 0.92, 0.93], [1, 2, 2, 3, 3])
    at["broken", 0].folder.mkdir(parents=True)
    (at["broken", 0].folder / "error.txt").write_text("fedsim: error: clients [6] hold none\n")
    got = exp.report.summarise(runs, rounds=5).set_index("selector")
    assert got.loc["random", "r99"] == 4 and got.loc["fedemd", "r99"] == 2
    assert got.loc["fedemd", "target"] == pytest.approx(0.891)
    assert got.loc["fedemd", "final_acc"] == pytest.approx(0.93)
    assert got.loc["fedemd", "wall_s"] == pytest.approx(7.5)  # 5 rounds x 1.5 s
    assert got.loc["fedemd", "maverick_selections"] == "3"
    assert got.loc["broken", "note"] == "failed: fedsim: error: clients [6] hold none"
    md = exp.report.r99_table(exp.report.summarise(runs, 5), ["random", "fedemd", "broken"], ["exclusive-1"], [0], 5)
    assert "| exclusive-1 | fedemd | 2 | 2 (n = 1) | +2 (n = 1) | -50.0 % | n < 2 |" in md
    assert "| exclusive-1 | broken | failed: fedsim: error: clients [6] hold none |" in md


def test_paired_difference_against_random_by_hand(exp, tmp_path):
    runs, at = runs_of(exp, tmp_path, ["random", "fedemd", "shapley"], [0, 1, 2])
    for seed, (r_rand, r_emd, r_sv) in enumerate([(4, 2, 2), (5, 3, 6), (6, 5, 5)]):
        fake_run(at["random", seed], curve(r_rand))
        fake_run(at["fedemd", seed], curve(r_emd))
        fake_run(at["shapley", seed], curve(r_sv))
    df = exp.report.summarise(runs, rounds=6)
    md = exp.report.r99_table(df, ["random", "fedemd", "shapley"], ["exclusive-1"], [0, 1, 2], 6)
    # fedemd saves 2, 2, 1 rounds: mean 5/3, sd sqrt(1/3), half-width t(0.975, 2) * sd / sqrt(3) = 1.434
    assert "| exclusive-1 | fedemd | 2, 3, 5 | 3.33 ± 3.79 (n = 3) | +1.67 ± 1.43 (n = 3) | -33.3 % | better |" in md
    # shapley saves 2, -1, 1: the interval contains 0
    assert "| exclusive-1 | shapley | 2, 6, 5 |" in md
    assert "| +0.667 ± 3.79 (n = 3) | -13.3 % | not significant |" in md
    assert "| exclusive-1 | random | 4, 5, 6 | 5 ± 2.48 (n = 3) | (reference) |" in md
    assert "0.9 ± 0 (n = 3)" in md  # final accuracy


def test_censored_runs_are_over_budget_and_bounds(exp, tmp_path):
    runs, at = runs_of(exp, tmp_path, ["random", "shapley", "fedemd"], [0, 1])
    for seed in (0, 1):
        fake_run(at["random", seed], curve(2))
        fake_run(at["shapley", seed], curve(None))  # never reaches 0.891
    fake_run(at["fedemd", 0], curve(None))
    fake_run(at["fedemd", 1], curve(1))
    df = exp.report.summarise(runs, rounds=6)
    row = df.set_index(["selector", "seed"]).loc[("shapley", 0)]
    assert row["r99"] == 7 and not row["reached"]
    md = exp.report.r99_table(df, ["random", "shapley", "fedemd"], ["exclusive-1"], [0, 1], 6)
    assert "| exclusive-1 | shapley | > 6, > 6 | ≥ 7 ± 0 (n = 2) | ≤ -5 ± 0 (n = 2) | ≥ +250.0 % | worse |" \
        in md
    # one seed censored: the imputed 7 flatters fedemd, so no verdict stands on its own
    assert "| exclusive-1 | fedemd | > 6, 1 | ≥ 4 ±" in md and "not significant (censored: bound only)" in md


def test_missing_runs_are_listed_not_counted(exp, tmp_path):
    runs, at = runs_of(exp, tmp_path, ["random", "fedemd"], [0, 1])
    fake_run(at["random", 0], curve(3))
    fake_run(at["fedemd", 0], curve(2))
    fake_run(at["fedemd", 1], curve(2))  # random seed 1 not run: no target
    df = exp.report.summarise(runs, rounds=6).set_index(["selector", "seed"])
    assert df.loc[("fedemd", 1), "note"] == "no finished random run on this seed"
    assert df.loc[("random", 1), "note"] == "not run"
    md = exp.report.r99_table(df.reset_index(), ["random", "fedemd"], ["exclusive-1"], [0, 1], 6)
    assert "| exclusive-1 | fedemd | 2, – | 2 (n = 1) |" in md


def test_a_finished_run_with_another_config_is_stale_and_kept(exp, tmp_path, monkeypatch):
    runs, at = runs_of(exp, tmp_path, ["random", "fedemd"], [0])
    fake_run(at["random", 0], curve(3))
    fake_run(at["fedemd", 0], curve(2), lr=0.5)  # e.g. base.toml changed since
    note = exp.report.summarise(runs, rounds=6).set_index("selector").loc["fedemd", "note"]
    assert note.startswith("stale run (config differs in lr")
    shutil.rmtree(at["random", 0].folder)
    fake_run(at["random", 0], curve(3), **{"msgm-margin": 0.7})  # a key the matrix does not set: not stale
    assert exp.report.stale(at["random", 0]) == ""
    started = []
    monkeypatch.setattr(exp, "fedsim_run", lambda config, over, folder: started.append(folder) or "boom")
    extra = exp.matrix(tmp_path, {"shapley": {"selector": "shapley"}}, [0], 6, ["exclusive-1"], {})
    exp.execute(runs + extra, tmp_path)
    assert started == [extra[0].folder]  # finished runs, stale or not, are never rerun
    assert (extra[0].folder / "error.txt").read_text() == "boom\n"
    assert (at["fedemd", 0].folder / "metrics.csv").exists()


def test_report_with_no_finished_runs_says_pending(exp, tmp_path):
    assert exp.main(["--out", str(tmp_path), "--report"]) == 0
    md = (tmp_path / "r99.md").read_text()
    assert "| exclusive-1 | shapley | pending: 0 of 5 seeds finished |" in md
    assert "| exclusive-2 | fedemd | pending: 0 of 5 seeds finished |" in md
    assert "| exclusive-2 | shapley |" not in md  # only-mavericks = ["exclusive-1"]
    assert "report seeds 0–4" in md and "not tuned" in md and "0.0 min in 0 of 25 runs" in md
    assert not (tmp_path / "accuracy.png").exists()


def test_report_end_to_end_on_faked_runs(exp, spec, tmp_path):
    selectors, _ = exp.report_selectors(tmp_path, spec, extra=False)
    runs = exp.matrix(tmp_path, selectors, [0, 1], 6, spec["mavericks"], {"shapley": list(spec["tune"]["grid"])})
    for run in runs:
        fake_run(run, curve(3 if run.label == "random" else 2))
    assert exp.main(["--out", str(tmp_path), "--report", "--seeds", "2", "--rounds", "6"]) == 0
    df = pd.read_csv(tmp_path / "r99.csv")
    assert len(df) == 10 and (df.note.isna()).all() and (df.wall_s == 9.0).all()  # shapley: exclusive-1 only
    md = (tmp_path / "r99.md").read_text()
    assert "1.5 min in 10 of 10 runs" in md  # 10 x 9 s
    assert "| exclusive-2 | fedemd | 2, 2 | 2 ± 0 (n = 2) | +1 ± 0 (n = 2) | -33.3 % | better |" in md
    assert (tmp_path / "accuracy.png").exists() and (tmp_path / "selection.png").exists()
    fig = exp.report.plot_accuracy(runs, spec["mavericks"])
    widths = [[line.get_linewidth() for line in ax.get_lines()] for ax in fig.axes]
    assert [sorted(w) for w in widths] == [[0.6] * 6 + [2.2] * 3, [0.6] * 4 + [2.2] * 2]  # seeds thin, mean thick


def test_tuning_picks_the_smallest_r99_then_the_best_final_accuracy(exp, spec, tmp_path):
    runs, settings = exp.tune_runs(tmp_path, spec, rounds=6)
    assert len(settings) == 9 and {r.seed for r in runs} == {100}
    assert {r.mavericks for r in runs} == {"exclusive-1"}
    faked = {"shapley-temperature0.003-decay0.9": (3, 0.80), "shapley-temperature0.03-decay0.5": (3, 0.85),
             "shapley-temperature0.01-decay0.75": (4, 0.95)}
    for run in runs:
        r, final = faked.get(run.label, (None, 0.9))
        fake_run(run, curve(3) if run.label == "random" else curve(r)[:-1] + [final if r else 0.2])
    assert exp.main(["--out", str(tmp_path), "--tune", "--report", "--rounds", "6"]) == 0
    tune = pd.read_csv(tmp_path / "tune.csv")
    assert tune.picked.sum() == 1
    assert tune[tune.picked].selector.iloc[0] == "shapley-temperature0.03-decay0.5"
    assert "| shapley-temperature0.03-decay0.5 | 0.03 | 0.5 | 3 | 0.850 | 1 of 1 | **yes** |" in \
        (tmp_path / "tune.md").read_text()
    selectors, source = exp.report_selectors(tmp_path, spec, extra=False)
    assert selectors["shapley"]["shapley-temperature"] == 0.03 and selectors["shapley"]["shapley-decay"] == 0.5
    assert "picked by --tune on exclusive-1, seed(s) 100, 6 rounds" in source
    report_runs = exp.matrix(tmp_path, selectors, [0], 6, ["exclusive-1"], {"shapley": list(spec["tune"]["grid"])})
    assert {r.folder.parent.name for r in report_runs} == {"random", "fedemd", "shapley-temperature0.03-decay0.5"}


def test_no_pick_until_every_setting_has_finished(exp, spec, tmp_path):
    runs, _ = exp.tune_runs(tmp_path, spec, rounds=6)
    for run in runs[:-1]:
        fake_run(run, curve(3))
    assert exp.main(["--out", str(tmp_path), "--tune", "--report", "--rounds", "6"]) == 0
    assert not pd.read_csv(tmp_path / "tune.csv").picked.any()
    assert "No pick yet" in (tmp_path / "tune.md").read_text()
    selectors, source = exp.report_selectors(tmp_path, spec, extra=False)
    assert selectors["shapley"]["shapley-temperature"] == spec["selectors"]["shapley"]["shapley-temperature"]
    assert "not tuned" in source


def test_tuning_seeds_must_not_be_report_seeds(exp, tmp_path, capsys):
    assert exp.main(["--out", str(tmp_path), "--seeds", "101", "--report"]) == 2
    assert "overlap" in capsys.readouterr().err


def test_diffusion_rounds_to_share_count_recognised_samples(exp, spec, tmp_path, monkeypatch):
    monkeypatch.setattr(exp.report, "class_share", lambda cfg: 0.1)  # 400 of 4,000; loading mnist5k takes ~10 s
    run = exp.diffusion_runs(tmp_path, spec)[0]
    run.folder.mkdir(parents=True)
    pd.DataFrame({"round": [1, 2, 3, 4], "wall_s": 2.0, "recognised": [None, 0.5, None, 0.8],
                  "gen_class_1": [None, 0.05, None, 0.12], "fd": [None, 9.0, None, 4.0],
                  "maverick_19_selections": [0, 1, 1, 2]}).to_csv(run.folder / "metrics.csv", index=False)
    write_toml(load_config({**read_toml(run.config), **run.overrides}), run.folder / "config.toml")
    (run.folder / "status.json").write_text(json.dumps({"state": "done"}))
    row = exp.report.diffusion_rows([run]).iloc[0]
    assert row.share == 0.1 and row.rounds_to_share == 4
    assert row.final_recognised == 0.8 and row.maverick_selections == 2 and row.wall_s == 8.0


@pytest.mark.parametrize("matrix", ["experiment.toml", "alpha_sweep.toml"])
def test_every_run_of_the_matrix_is_a_valid_config(exp, matrix, tmp_path):
    spec = tomllib.loads((HERE / matrix).read_text())
    assert "random" in spec["selectors"] and spec["seeds"] >= 1
    selectors, _ = exp.report_selectors(tmp_path, spec, extra=True)
    runs = exp.matrix(tmp_path, selectors, list(range(spec["seeds"])), spec["rounds"], spec["mavericks"], {})
    if "tune" in spec:
        runs += exp.tune_runs(tmp_path, spec, spec["rounds"])[0]
    runs += exp.diffusion_runs(tmp_path, spec)
    for run in runs:
        load_config({**read_toml(run.config), **run.overrides})


@pytest.mark.slow
def test_two_rounds_of_the_real_runner(exp, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text('rounds = 2\nseeds = 1\nmavericks = ["exclusive-1"]\ndiffusion-seeds = 0\n'
                      '[selectors.random]\nselector = "random"\n')
    assert exp.main(["--out", str(tmp_path / "out"), "--config", str(config)]) == 0
    row = pd.read_csv(tmp_path / "out" / "r99.csv").iloc[0]
    assert row.reached and row.r99 <= 2 and row.wall_s > 0
