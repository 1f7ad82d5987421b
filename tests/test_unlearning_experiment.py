"""experiments/unlearning/ without running federations: the plan's seeds (the tuning seed kept
out), every method's overrides are valid keys, and the summary and report checked by hand on
faked per-run report.csv files (ratios to retrain on the same seed, t-intervals over seeds, the
paired difference to the fine-tune control, the acceptance check)."""

import math
import statistics
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from fedsim.cli.sweep import sibling
from fedsim.config import load_config, read_toml

HERE = Path(__file__).resolve().parents[1] / "experiments" / "unlearning"
SPEC = tomllib.loads((HERE / "experiment.toml").read_text())
T975_2 = 4.302652729911275  # t quantile, 2 degrees of freedom (3 seeds)


@pytest.fixture(scope="module")
def exp():
    return sibling(str(HERE / "run.py"), "run", "unlearning")


def test_seeds_and_the_tuning_seed(exp):
    assert exp.seeds_of(SPEC, 3, tune=False) == [0, 1, 2]
    assert exp.seeds_of(SPEC, 3, tune=True) == [100]
    with pytest.raises(SystemExit, match="tuning seed"):
        exp.seeds_of({**SPEC, "tuning-seed": 1}, 3, tune=False)


@pytest.mark.parametrize("config", ["experiment.toml", "tune.toml"])
def test_every_method_and_request_sets_valid_keys(config):
    from fedsim.cli.unlearn import METHODS

    spec = tomllib.loads((HERE / config).read_text())
    base = read_toml(HERE / "base.toml")
    assert load_config(base).dataset == "mnist5k" and base["ledger-every"] > 0
    # a name with a dot must be quoted in TOML ([methods."x-0.1"]), or it nests a table
    assert all(m.get("method", name) in METHODS for name, m in spec["methods"].items()), list(spec["methods"])
    for request in spec["requests"].values():
        for name, method in spec["methods"].items():
            extra = {k: v for k, v in {**method, **request.get("methods", {}).get(name, {})}.items() if k != "method"}
            load_config({**base, **request.get("run", {}), **extra})  # raises on an unknown key or a bad value
    assert {"fine-tune", "continue", "retrain", "msgm", "msgm-tuned"} <= set(SPEC["methods"])
    assert SPEC["samples"] == 2000 and SPEC["tuning-seed"] not in range(SPEC["seeds"])


# forget rate per seed and model; retrain's wall time 100 s, bytes 1e6, KID 0.010 on every seed
RATES = {"original": [0.10, 0.12, 0.11], "retrain": [0.01, 0.0, 0.01], "fine-tune": [0.06, 0.09, 0.07],
         "salun": [0.01, 0.02, 0.015], "continue": [0.11, 0.12, 0.12]}
WALL = {"original": 500.0, "retrain": 100.0, "fine-tune": 20.0, "salun": 22.0, "continue": 20.0}
KID = {"original": 0.011, "retrain": 0.010, "fine-tune": 0.010, "salun": 0.0115, "continue": 0.010}


def fake(tmp_path: Path) -> dict:
    folders = {}
    for seed in range(3):
        for method in ("retrain", "fine-tune", "salun", "continue"):
            f = tmp_path / "runs" / "class-conditional" / f"seed{seed}" / method
            (f / "unlearning").mkdir(parents=True)
            models = ["original", "retrain", method] if method != "retrain" else ["original", "retrain"]
            rows = [{"model": m if m in ("original", "retrain") else method.replace("-", "_") + "_method",
                     "forget_rate": RATES[m][seed] + (0.5 if m == "retrain" and method != "retrain" else 0),
                     "kid_remaining": KID[m], "wall_s": WALL[m] * (1 + 0.1 * seed), "bytes": 1e6, "rounds": 4}
                    for m in models]
            pd.DataFrame(rows).to_csv(f / "unlearning" / "report.csv", index=False)
            folders[("class-conditional", seed, method)] = f
    folders[("class-conditional", 0, "msgm")] = tmp_path / "nowhere"
    return folders


def test_rows_ratios_intervals_and_the_control(exp, tmp_path):
    rows = exp.summary.read_reports(fake(tmp_path))
    # one row per seed and model; retrain's row from its own run (the others' copies carry +0.5)
    assert len(rows) == 3 * 5 and set(rows.model) == set(RATES)
    r = rows.set_index(["model", "seed"])
    assert r.loc[("retrain", 1), "forget_rate"] == 0.0
    assert r.loc[("salun", 2), "wall_vs_retrain"] == pytest.approx(22 / 100)  # same seed: both x1.2
    assert r.loc[("salun", 0), "kid_vs_retrain"] == pytest.approx(1.15)
    agg = exp.summary.across_seeds(rows, ["retrain", "salun", "fine-tune", "continue", "msgm"],
                                   {"class-conditional"}).set_index("model")
    s = agg.loc["salun"]
    assert s.n == 3 and s.forget_rate == pytest.approx(0.015)
    assert s.forget_rate_high - s.forget_rate == pytest.approx(T975_2 * 0.005 / math.sqrt(3))
    # paired per seed: -0.05, -0.07, -0.055 (against fine-tune's mean they would be -0.0633, -0.0533, -0.0583)
    diffs = [-0.05, -0.07, -0.055]
    assert s.vs_control == pytest.approx(sum(diffs) / 3)
    assert s.vs_control_high == pytest.approx(sum(diffs) / 3 + T975_2 * statistics.stdev(diffs) / math.sqrt(3))
    assert s.vs_control_verdict == "better" and s.accepted == "yes"
    assert agg.loc["continue"].vs_control_verdict == "worse" and agg.loc["continue"].accepted == ""
    assert "vs_control" not in agg.columns or math.isnan(agg.loc["fine-tune"].vs_control)
    assert agg.loc["msgm"].n == 0 and agg.loc["original"].n == 3


@pytest.mark.parametrize("change, why", [({"forget_rate": 0.021}, "forget rate > 2%"),
                                         ({"forget_rate_high": 0.031}, "upper end > 3%"),
                                         ({"kid_vs_retrain": 1.21}, "KID > 1.2x"),
                                         ({"wall_vs_retrain": 0.26}, "cost > 0.25x"),
                                         ({"vs_control_verdict": "not significant"}, "not better than fine-tune"),
                                         ({"kid_vs_retrain": float("nan")}, "KID")])
def test_the_acceptance_check_names_the_bound_missed(exp, change, why):
    ok = {"model": "erasediff", "forget_rate": 0.015, "forget_rate_high": 0.025, "kid_vs_retrain": 1.1,
          "wall_vs_retrain": 0.2, "vs_control_verdict": "better", "vs_control_n": 3}
    assert exp.summary.accepted(ok) == "yes"
    assert exp.summary.accepted({**ok, "model": "fine-tune", "vs_control_n": None}) == ""
    got = exp.summary.accepted({**ok, **change})
    assert got.startswith("no: ") and why in got and ";" not in got  # only the bound missed
    assert exp.summary.accepted({**ok, **change, "n": 1}).startswith("no: ")
    assert "n < 2" in exp.summary.accepted({**ok, "n": 1}) and exp.summary.accepted({**ok, "n": 0}) == "not run"
    assert exp.summary.accepted({**ok, "forget_rate": 0.03, "kid_vs_retrain": 1.5}) == \
        "no: forget rate > 2%; KID > 1.2x retrain's"


def test_the_report_shows_intervals_the_paired_difference_and_the_verdict(exp, tmp_path):
    rows = exp.summary.read_reports(fake(tmp_path))
    agg = exp.summary.across_seeds(rows, ["retrain", "salun", "fine-tune", "continue"], {"class-conditional"})
    md = exp.report.markdown(rows, agg, [0, 1, 2], 100, 2000, 18, exp.summary.RULE)
    line = next(x for x in md.splitlines() if x.startswith("| salun |"))
    assert line.startswith("| salun | 3 | 1.5 [0.26, 2.7] |")
    assert "-5.8 [-8.4, -3.2], better |" in line
    assert "- class-conditional / salun: yes" in md and "Report seeds 0, 1, 2" in md and "seed 100 only" in md
    assert "Finished: 15 of 18 planned models" in md


def test_a_cell_whose_reports_are_committed_is_skipped(exp, tmp_path, monkeypatch):
    """Reports kept in git (status.json + report.csv, no models) finish a cell; a cell with a
    method left reruns the original when its model is missing, then only that method."""
    calls = []
    monkeypatch.setattr(exp, "fedsim_run", lambda config, over, folder: calls.append(("run", folder.name)) or "")
    monkeypatch.setattr(exp, "fedsim_unlearn", lambda run, m, req, over, folder, retrain=None, samples=0:
                        calls.append((m, folder.name)) or "")
    methods = {"retrain": {}, "fine-tune": {}}
    for m in ["original", *methods]:
        where = exp.folder(tmp_path, "req", 0, m)
        (where / "unlearning").mkdir(parents=True)
        (where / "status.json").write_text('{"state": "done"}')
        (where / "unlearning" / "report.csv").write_text("model\n")
    spec = {"forget": ["--class", "0"]}
    assert exp.run_cell(tmp_path, "req", spec, 0, methods, 10, print) == [] and calls == []
    assert exp.run_cell(tmp_path, "req", spec, 0, {**methods, "salun": {}}, 10, print) == []
    assert calls[0] == ("run", "original")  # its status said done, but it had no model
    assert not (exp.folder(tmp_path, "req", 0, "original") / "status.json").exists()


def test_the_report_before_any_run_finishes(exp, tmp_path):
    rows = exp.summary.read_reports({("class-conditional", 0, "salun"): tmp_path / "none"})
    agg = exp.summary.across_seeds(rows, ["salun"], {"class-conditional"})
    md = exp.report.markdown(rows, agg, [0, 1, 2], 100, 2000, 30)
    assert "No run has finished yet." in md and "Finished: 0 of 30" in md
