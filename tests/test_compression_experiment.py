"""experiments/compression/ without running federations: the plan (methods, seeds, the
tuning seed kept out), every planned config is valid, and the summary and report checked
by hand on faked run folders (per-seed targets, t-intervals, paired differences,
censoring, wall time); the codec benchmark runs."""

import json
import math
import tomllib
from argparse import Namespace
from pathlib import Path

import pandas as pd
import pytest

from fedsim.cli.sweep import sibling
from fedsim.config import load_config, read_toml

HERE = Path(__file__).resolve().parents[1] / "experiments" / "compression"
SPEC = tomllib.loads((HERE / "experiment.toml").read_text())
T975_2 = 4.302652729911275  # t quantile, 2 degrees of freedom (3 seeds)
TABLE = {"fedavg", "qsgd", *(f"{m} p{p}" for m in ("topk", "stc", "dhq", "dhq-ds") for p in ("0.01", "0.05"))}


def load(name: str):
    return sibling(str(HERE / "run.py"), name, "compression")


@pytest.fixture(scope="module")
def exp():
    return load("run")


def args(**kw):
    return Namespace(**{"methods": "", "models": "", "partitions": "", "sweep": False, "extra": False,
                        "rounds": 0, "seeds": 3, **kw})


def test_the_default_plan_is_the_table(exp):
    runs = exp.plan(SPEC, args())
    assert {r.method for r in runs} == TABLE
    assert len(runs) == len(TABLE) * 2 * 3 and {r.model for r in runs} == {"classifier"}
    assert {(r.partition, r.seed) for r in runs} == {(p, s) for p in ("iid", "dirichlet") for s in (0, 1, 2)}
    o = {r.method: r.overrides for r in runs if (r.partition, r.seed) == ("dirichlet", 2)}
    assert all(v["seed"] == 2 and v["partition"] == "dirichlet" for v in o.values())
    assert o["dhq p0.01"]["keep-ratio"] == 0.01 and o["dhq p0.01"]["dhq-levels"] == 4
    assert o["topk p0.05"]["keep-ratio"] == 0.05 and o["qsgd"]["qsgd-levels"] == 16
    assert o["dhq-ds p0.01"]["sampling"] == "exponential" and "sampling" not in o["dhq p0.01"]
    assert read_toml(exp.BASES["classifier"])["dataset"] == "mnist5k"


def test_every_planned_run_is_a_valid_config(exp):
    runs = exp.plan(SPEC, args(sweep=True, extra=True, models="classifier,diffusion", seeds=1))
    assert {r.method for r in runs} == set(SPEC["methods"])
    assert {r.method for r in runs if r.model == "diffusion"} == TABLE | {"dhq p0.2"}  # sweeps: classifier
    for r in runs:
        load_config({**read_toml(exp.BASES[r.model]), **r.overrides})
    named = {r.method: r.overrides for r in runs if (r.model, r.partition) == ("classifier", "iid")}
    assert named["dhq-ds floor8"]["sampling-min"] == 8 and named["dhq-ds floor8"]["clients-per-round"] == 20


def test_dynamic_sampling_uploads_as_many_updates_as_fixed_k(exp):
    from strategies.compression.schedule import Schedule

    rounds = read_toml(exp.BASES["classifier"])["rounds"]
    o = next(r.overrides for r in exp.plan(SPEC, args(methods="dhq-ds p0.05", seeds=1)))
    k = Schedule(o["sampling"], o["clients-per-round"], o["sampling-decay"], o["sampling-min"])
    assert abs(sum(k(t) for t in range(1, rounds + 1)) - 10 * rounds) <= 0.02 * 10 * rounds


def test_seeds_and_the_tuning_seed(exp):
    assert {r.seed for r in exp.plan(SPEC, args(seeds=5))} == {0, 1, 2, 3, 4}
    with pytest.raises(SystemExit, match="tuning seed 100"):
        exp.plan(SPEC, args(seeds=101))
    with pytest.raises(SystemExit, match="unknown method"):
        exp.plan(SPEC, args(methods="fedavg,zip"))
    assert {r.method for r in exp.plan(SPEC, args(methods="stc-ds", seeds=1))} == {"stc-ds"}  # named: runs


def fake_run(folder: Path, acc, up_per_round, wall=2.0) -> None:
    folder.mkdir(parents=True)
    n = len(acc)
    up = pd.Series([up_per_round] * n).cumsum()
    pd.DataFrame({"round": range(1, n + 1), "test_acc": acc, "eval_loss": 1.0, "bytes_up_total": up,
                  "bytes_down_total": up * 10, "clients_sampled": 10, "wall_s": wall}).to_csv(
        folder / "metrics.csv", index=False)
    (folder / "status.json").write_text(json.dumps({"state": "done"}))


FEDAVG = {0: 0.90, 1: 0.94, 2: 0.98}  # final accuracy per seed: a spread of 8 points between seeds
DHQ = {0: 0.895, 1: 0.935, 2: 0.965}  # -0.5, -0.5, -1.5 pt paired
TOPK = {0: 0.89, 1: 0.935, 2: 0.97}   # -1.0, -0.5, -1.0 pt paired
STC = {1: 0.93, 2: 0.97}              # -1, -1 pt; seed 0 missing


@pytest.fixture
def faked(exp, tmp_path):
    """5 rounds, final window 2: each curve is 0.6 (0.3) then its final value for 4 rounds."""
    runs = exp.plan(SPEC, args(methods="fedavg,dhq p0.05,topk p0.05,stc p0.05,qsgd", partitions="iid"))
    for r in runs:
        folder = exp.folder_of(tmp_path, r)
        final = {"fedavg": FEDAVG, "dhq p0.05": DHQ, "topk p0.05": TOPK, "stc p0.05": STC}.get(r.method, {})
        if r.seed in final:
            fake_run(folder, [0.6 if r.method == "fedavg" else 0.3] + [final[r.seed]] * 4,
                     1e7 if r.method == "fedavg" else 4e5)
        elif (r.method, r.seed) == ("qsgd", 0):
            folder.mkdir(parents=True)
            (folder / "error.txt").write_text("boom\n")
    (exp.folder_of(tmp_path, runs[0]) / "elapsed_s.txt").write_text("30.5\n")
    rows = exp.summary.per_run(tmp_path, runs, 2, {"classifier": 10})
    return rows, exp.summary.aggregate(rows).set_index("method")


def test_per_run_targets_come_from_fedavg_on_the_same_seed(faked):
    rows, _ = faked
    d = rows[rows.method == "dhq p0.05"].set_index("seed")
    assert list(d.target) == pytest.approx([0.891, 0.9306, 0.9702])
    # 3-round moving mean 0.3, 0.5975, 0.6967, 0.895: first >= 0.891 in round 4; seed 2 (0.965) never
    assert list(d.reached) == [True, True, False]
    assert d.loc[0, "rounds_to_target"] == 4 and d.loc[0, "bytes_to_target"] == 1.6e6
    assert math.isnan(d.loc[2, "rounds_to_target"]) and d.loc[2, "uplink_reduction"] == pytest.approx(25.0)
    f = rows[rows.method == "fedavg"].set_index("seed")
    assert f.loc[0, "rounds_to_target"] == 4 and f.loc[0, "wall_s"] == 10.0 and f.loc[0, "elapsed_s"] == 30.5
    assert rows.set_index(["method", "seed"]).loc[("qsgd", 0), "note"] == "boom"
    assert rows.set_index(["method", "seed"]).loc[("qsgd", 1), "note"] == "not run"


def test_intervals_over_seeds_and_paired_differences(faked):
    _, s = faked
    f = s.loc["fedavg", "final"]  # 90, 94, 98: sd 4, sem 4 / sqrt(3)
    assert (f.mean, f.n) == (pytest.approx(94.0), 3)
    assert f.half_width == pytest.approx(T975_2 * 4 / math.sqrt(3))
    d = s.loc["topk p0.05", "vs_fedavg"]  # -1, -0.5, -1: sd 0.2887, sem 1/6
    assert d.mean == pytest.approx(-5 / 6) and d.half_width == pytest.approx(T975_2 / 6)
    assert s.loc["topk p0.05", "verdict"] == "worse"  # paired; the unpaired intervals overlap
    assert s.loc["dhq p0.05", "vs_fedavg"].mean == pytest.approx(-5 / 6)
    assert s.loc["dhq p0.05", "verdict"] == "not significant"  # -0.5, -0.5, -1.5: contains 0
    stc = s.loc["stc p0.05", "vs_fedavg"]  # seeds 1 and 2 only, paired with FedAvg's seeds 1 and 2
    assert (stc.mean, stc.n) == (pytest.approx(-1.0), 2)
    assert s.loc["dhq p0.05", "reduction"].mean == pytest.approx(25.0)
    assert s.loc["fedavg", "uplink_mb"].mean == pytest.approx(50.0)
    assert s.loc["qsgd", "n"] == 0 and s.loc["qsgd", "failed"] == "seed 0: boom"


def test_censored_runs_make_the_mean_a_lower_bound(faked):
    _, s = faked
    r = s.loc["dhq p0.05"]
    assert r.to_target == "4; 4; > 5" and r.censored == 1
    assert r.rounds_mean == pytest.approx((4 + 4 + 6) / 3) and r.rounds_bound
    assert r.mb_mean == pytest.approx((1.6 + 1.6 + 2.0) / 3) and r.mb_bound and r.mb_to_target is None
    f = s.loc["fedavg"]
    assert f.to_target == "4; 4; 4" and not f.rounds_bound and f.mb_to_target.mean == pytest.approx(40.0)


def test_the_table_shows_intervals_verdicts_and_bounds(exp, faked):
    rows, s = faked
    md = exp.report.table(s.reset_index(), "classifier")
    line = next(x for x in md.splitlines() if "| dhq p0.05 |" in x)
    assert line.startswith("| iid | dhq p0.05 | 0.05 | 4 | 10 | 93.2 ± ")
    assert "-0.83 ± 1.4 (n = 3), not significant" in line
    assert "| 4; 4; > 5 | ≥ 4.7 | ≥ 1.73 (1 of 3 > budget) |" in line
    assert "worse" in next(x for x in md.splitlines() if "| topk p0.05 |" in x)
    assert "| iid | qsgd |  | 16 | 10 | failed: seed 0: boom |" in md
    head = exp.report.header(rows, [0, 1, 2], 100, 2)
    assert "Report seeds 0, 1, 2" in head and "seed 100 only" in head
    assert "Missing: 4 of 15 planned runs (1 failed: qsgd iid seed 0: boom)" in head
    assert f"{rows.wall_s.sum() / 3600:.2f} h in rounds" in head and "for the 1 runs timed" in head


def test_blown_up_runs_are_flagged_and_counted(exp, faked):
    rows, s = faked
    assert not rows[rows.note == ""].diverged.any() and s.loc["dhq p0.05", "diverged"] == 0
    d = exp.summary.diverged
    curve = lambda loss: pd.DataFrame({"eval_loss": loss})  # noqa: E731
    assert not d(curve([2.3, 1.0, 0.4, 0.9]))  # noisy but sane
    assert d(curve([2.3, 0.4, 5.9e11, 5.9e11])) and d(curve([2.3, 0.4, float("nan")]))
    assert d(curve([2.3, 231.0])) and not d(curve([2.3, 229.0]))  # the 100x line
    line = next(x for x in exp.report.table(s.reset_index(), "classifier").splitlines() if "| dhq p0.05 |" in x)
    assert line.endswith("| 0 of 3 |")


def test_set_adds_a_key_to_every_run_and_the_report_says_so(exp):
    runs = exp.plan(SPEC, args(common={"grad-clip": 1.0, "lr": 0.5}))
    assert all(r.overrides["grad-clip"] == 1.0 for r in runs)
    assert all(r.overrides.get("compression") != "none" or r.overrides["lr"] == 0.5 for r in runs)
    head = exp.report.header(pd.DataFrame(columns=exp.summary.COLUMNS), [0], 100, 2, {"grad-clip": 1.0})
    assert "Settings added to every run (run.py --set): grad-clip = 1.0." in head
    assert exp.main(["--out", "/nonexistent-never", "--set", "lr"]) == 2  # not key=value: one line


def test_report_only_rebuilds_from_finished_runs_of_every_sitting(exp, tmp_path, monkeypatch):
    plan = {r[:4]: r for r in exp.plan(SPEC, args(seeds=2))}
    for key in [("classifier", "iid", "fedavg", 0), ("classifier", "iid", "fedavg", 1),
                ("classifier", "dirichlet", "dhq p0.05", 0)]:  # two sittings: iid, then dirichlet
        fake_run(exp.folder_of(tmp_path, plan[key]), [0.5, 0.9, 0.9], 1e6)
    monkeypatch.setattr(exp, "run_all", lambda *a: pytest.fail("--report must not run anything"))
    assert exp.main(["--out", str(tmp_path), "--report", "--partitions", "iid", "--seeds", "2"]) == 0
    res = pd.read_csv(tmp_path / "results.csv")
    assert len(res) == len(plan) == len(TABLE) * 2 * 2 and res.note.isna().sum() == 3
    s = pd.read_csv(tmp_path / "summary.csv").set_index(["partition", "method"])
    assert s.loc[("iid", "fedavg"), "n"] == 2 and s.loc[("dirichlet", "dhq p0.05"), "n"] == 1
    assert f"Missing: {len(plan) - 3} of {len(plan)}" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "quality_vs_bytes.png").stat().st_size > 0


def test_codec_benchmark_writes_csv_and_png(tmp_path, monkeypatch):
    bench = load("bench_codec")
    monkeypatch.setattr(bench, "inputs", lambda seed=0: {"small": {"a": __import__("numpy").ones((64, 64), "float32"),
                                                                   "b": __import__("numpy").ones(7, "float32")}})
    assert bench.main(["--out", str(tmp_path), "--repeats", "1"]) == 0
    df = pd.read_csv(tmp_path / "codec_throughput.csv")
    assert len(df) == len(bench.CODECS) and (df.encode_mb_s > 0).all()
    assert df.set_index("codec").loc["none (raw float32)", "ratio"] == pytest.approx(1.0)
    assert (tmp_path / "codec_throughput.png").stat().st_size > 0
