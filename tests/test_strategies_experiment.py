"""experiments/strategies/ without running federations: the plans of the three specs (the robust
grid expanded rule x attack, the tuning seed kept out of report seeds), every planned config valid
and accepted by its rule, and the summary and report checked by hand on faked run folders."""

import json
import tomllib
from argparse import Namespace
from pathlib import Path

import pandas as pd
import pytest

from fedsim.cli.sweep import sibling
from fedsim.config import load_config, read_toml
from strategies.rules import check_rule

HERE = Path(__file__).resolve().parents[1] / "experiments" / "strategies"
T975_2 = 4.302652729911275  # t quantile, 2 degrees of freedom (3 seeds)


def spec(name):
    return tomllib.loads((HERE / name).read_text())


@pytest.fixture(scope="module")
def exp():
    return sibling(str(HERE / "run.py"), "run", "strategies")


def args(**kw):
    return Namespace(**{"methods": "", "models": "", "rounds": 0, "seeds": 3, "seeds_from": 0, "common": {}, **kw})


@pytest.mark.parametrize("name, count", [("comparison.toml", 5 * 2 * 3), ("robust.toml", 5 * 5 * 3),
                                         ("tuning.toml", 19)])
def test_every_planned_run_is_a_valid_config_its_rule_accepts(exp, name, count):
    s = spec(name)
    tuning = name == "tuning.toml"
    runs = exp.plan(s, args(seeds=1 if tuning else 3, seeds_from=100 if tuning else 0))
    assert len(runs) == count
    for r in runs:
        cfg = load_config({**read_toml(HERE / s["models"][r.model]), **r.overrides})
        check_rule(cfg)
        assert cfg.seed == r.seed and cfg.partition_alpha == 0.1 and cfg.num_clients == 100
        assert r.reference in {x.method for x in runs}


def test_the_robust_grid_compares_each_rule_with_itself_unattacked(exp):
    runs = exp.plan(spec("robust.toml"), args(seeds=1))
    by = {r.method: r for r in runs}
    assert by["krum / sign-flip 30%"].reference == "krum / clean" and by["krum / sign-flip 30%"].panel == "sign-flip 30%"
    o = by["bulyan / backdoor 10%"].overrides
    assert (o["strategy"], o["num-malicious"], o["malicious-share"], o["malicious-kind"], o["clients-per-round"]) == \
        ("bulyan", 4, 0.1, "backdoor", 20)
    assert by["median / clean"].overrides["malicious-share"] == 0.0


def test_report_seeds_never_include_the_tuning_seed(exp):
    with pytest.raises(SystemExit, match="tuning seed"):
        exp.plan(spec("comparison.toml"), args(seeds=2, seeds_from=99))


def fake_run(folder: Path, acc: list[float], backdoor: list[float] | None = None):
    folder.mkdir(parents=True)
    df = pd.DataFrame({"round": range(1, len(acc) + 1), "test_acc": acc, "eval_loss": [1.0] * len(acc),
                       "bytes_up_total": [1e6 * (i + 1) for i in range(len(acc))],
                       "bytes_down_total": [2e6 * (i + 1) for i in range(len(acc))], "wall_s": [1.0] * len(acc)})
    if backdoor is not None:
        df["backdoor_acc"] = backdoor
    df.to_csv(folder / "metrics.csv", index=False)
    (folder / "status.json").write_text(json.dumps({"state": "done"}))


def test_summary_and_report_by_hand(exp, tmp_path):
    """Two methods x 3 seeds of faked metrics: final = mean of the last 2 rounds; the paired
    difference and its t-interval; rounds to target from the 3-round moving average, censored."""
    s = {"seeds": 3, "tuning-seed": 100, "final-window": 2, "reference": "fedavg",
         "models": {"classifier": "classifier.toml"}, "targets": {"classifier": 0.5},
         "methods": {"fedavg": {"strategy": "fedavg"}, "krum": {"strategy": "krum"}}}
    runs = exp.plan(s, args())
    accs = {("fedavg", 0): [0.2, 0.6, 0.7, 0.8], ("fedavg", 1): [0.1, 0.2, 0.3, 0.4], ("fedavg", 2): [0.5, 0.5, 0.6, 0.6],
            ("krum", 0): [0.1, 0.2, 0.6, 0.7], ("krum", 1): [0.1, 0.1, 0.2, 0.2], ("krum", 2): [0.4, 0.5, 0.5, 0.5]}
    for r in runs:
        fake_run(exp.folder_of(tmp_path, r), accs[(r.method, r.seed)], [0.1] * 4 if r.method == "krum" else None)
    summary = sibling(str(HERE / "run.py"), "summary", "strategies")
    rows = summary.per_run(tmp_path, runs, 2, s["targets"])
    final = {(r.method, r.seed): r.final for r in rows.itertuples()}
    assert final[("fedavg", 0)] == pytest.approx(0.75) and final[("krum", 1)] == pytest.approx(0.2)
    hit = {(r.method, r.seed): r.rounds_to_target for r in rows.itertuples()}
    # fedavg seed 0: moving averages 0.2, 0.4, 0.5 -> round 3; seed 1 never: censored; seed 2: 0.5 at round 1
    assert hit[("fedavg", 0)] == 3 and pd.isna(hit[("fedavg", 1)]) and hit[("fedavg", 2)] == 1
    agg = summary.aggregate(rows).set_index("method")
    diffs = [100 * (final[("krum", k)] - final[("fedavg", k)]) for k in range(3)]  # -10, -15, -10
    iv = agg.loc["krum", "vs_reference"]
    mean = sum(diffs) / 3
    sd = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5
    assert iv.mean == pytest.approx(mean) and iv.high == pytest.approx(mean + T975_2 * sd / 3 ** 0.5)
    assert agg.loc["krum", "verdict"] == "worse" and agg.loc["fedavg", "verdict"] == "reference"
    assert agg.loc["fedavg", "to_target"] == "3; > 4; 1" and agg.loc["fedavg", "rounds_bound"]
    assert agg.loc["fedavg", "rounds_mean"] == pytest.approx((3 + 5 + 1) / 3)
    assert agg.loc["krum", "backdoor"].mean == pytest.approx(10.0)
    report = sibling(str(HERE / "run.py"), "report", "strategies")
    md = report.markdown(rows, summary.aggregate(rows), s, [0, 1, 2], {})
    assert "| krum | 45 ± " in md and "vs fedavg: -12 ± 7.2 (n = 3), worse" in md and "backdoor success, %" in md
    report.curves(tmp_path / "c.png", summary.curve_data(tmp_path, runs))
    assert (tmp_path / "c.png").stat().st_size > 0


def test_a_model_table_overrides_that_model_only(exp):
    runs = exp.plan(spec("comparison.toml"), args(seeds=1, methods="scaffold"))
    lr = {r.model: r.overrides.get("lr") for r in runs}
    assert lr == {"classifier": 0.05, "diffusion": None}
