"""experiments/compression/run.py without running federations: the plan, the summary
(bytes to target, reduction) and the table, checked by hand on faked run folders;
every method's config is valid; the codec benchmark runs."""

import importlib.util
import json
import tomllib
from argparse import Namespace
from pathlib import Path

import pandas as pd
import pytest

from fedsim.config import load_config, read_toml

HERE = Path(__file__).resolve().parents[1] / "experiments" / "compression"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"compression_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exp():
    return load("run")


def args(**kw):
    return Namespace(**{"methods": "", "models": "", "partitions": "", "no_sweep": False, "extra": False,
                        "rounds": 0, **kw})


def fake_run(folder: Path, acc, up, clients=10) -> None:
    folder.mkdir(parents=True)
    up_total = pd.Series(up).cumsum()
    pd.DataFrame({"round": range(1, len(acc) + 1), "test_acc": acc, "eval_loss": 1.0,
                  "bytes_up_total": up_total, "bytes_down_total": up_total * 10,
                  "clients_sampled": clients}).to_csv(folder / "metrics.csv", index=False)
    (folder / "status.json").write_text(json.dumps({"state": "done"}))


def test_every_planned_run_is_a_valid_config(exp):
    spec = tomllib.loads((HERE / "experiment.toml").read_text())
    assert not [n for _, _, n, _ in exp.plan(spec, args()) if n in ("dhq-ds floor8", "dhq p0.2")]
    runs = exp.plan(spec, args(extra=True))
    assert {(m, p) for m, p, _, _ in runs} == {(m, p) for m in ("classifier", "diffusion")
                                              for p in ("iid", "dirichlet")}
    assert {n for m, _, n, _ in runs if m == "diffusion" and " " in n} == {"dhq p0.2"}  # sweeps: classifier
    for model, _, _, overrides in runs:
        load_config({**read_toml(exp.BASES[model]), **overrides})
    named = dict((n, o) for m, p, n, o in runs if (m, p) == ("classifier", "iid"))
    ds = named["dhq-ds"]
    assert ds["sampling"] == "exponential" and ds["clients-per-round"] == 20 and ds["compression"] == "dhq"
    assert named["dhq-ds floor8"]["sampling-min"] == 8 and named["dhq-ds floor8"]["clients-per-round"] == 20


def test_unknown_method_is_one_line(exp):
    spec = tomllib.loads((HERE / "experiment.toml").read_text())
    with pytest.raises(SystemExit, match="unknown method"):
        exp.plan(spec, args(methods="fedavg,zip"))


def test_summary_bytes_to_target_by_hand(exp, tmp_path):
    spec = {"final_window": 2}
    runs = [("classifier", "iid", "fedavg", {"compression": "none"}),
            ("classifier", "iid", "dhq", {"compression": "dhq", "keep-ratio": 0.05, "dhq-levels": 4}),
            ("classifier", "iid", "qsgd", {"compression": "qsgd"})]
    # FedAvg final = mean(0.9, 1.0) = 0.95 -> target 0.9405
    fake_run(exp.folder_of(tmp_path, "classifier", "iid", "fedavg"), [0.5, 0.94, 0.95, 0.9, 1.0], [100] * 5)
    # 3-round moving mean: 0.3, 0.6, 0.7667, 0.9333, 0.9667 -> first >= 0.9405 in round 5
    fake_run(exp.folder_of(tmp_path, "classifier", "iid", "dhq"), [0.3, 0.9, 1.0, 0.9, 1.0], [4] * 5)
    (exp.folder_of(tmp_path, "classifier", "iid", "qsgd")).mkdir(parents=True)
    (exp.folder_of(tmp_path, "classifier", "iid", "qsgd") / "error.txt").write_text("boom\n")
    df = exp.summarise(tmp_path, spec, runs).set_index("method")
    assert df.loc["fedavg", "final_quality"] == pytest.approx(0.95)
    assert df.loc["fedavg", "target"] == pytest.approx(0.9405)
    assert df.loc["fedavg", "rounds_to_target"] == 5  # moving mean 0.5, 0.72, 0.797, 0.93, 0.95
    assert df.loc["dhq", "rounds_to_target"] == 5 and df.loc["dhq", "bytes_to_target"] == 20
    assert df.loc["dhq", "uplink_reduction"] == pytest.approx(25.0)
    assert df.loc["dhq", "keep_ratio"] == 0.05 and df.loc["dhq", "levels"] == 4
    assert df.loc["qsgd", "note"] == "boom"
    md = exp.table(df.reset_index())
    assert "| classifier | iid | dhq | dhq | 0.05 | 4 | 10 | 50 | acc 0.9500 | +0.0 pt | 0.00 | 25.0x | 5 | 0.00 |" in md
    assert "| classifier | iid | qsgd | qsgd | | | | | boom |" in md


def test_codec_benchmark_writes_csv_and_png(tmp_path, monkeypatch):
    bench = load("bench_codec")
    monkeypatch.setattr(bench, "inputs", lambda seed=0: {"small": {"a": __import__("numpy").ones((64, 64), "float32"),
                                                                   "b": __import__("numpy").ones(7, "float32")}})
    assert bench.main(["--out", str(tmp_path), "--repeats", "1"]) == 0
    df = pd.read_csv(tmp_path / "codec_throughput.csv")
    assert len(df) == len(bench.CODECS) and (df.encode_mb_s > 0).all()
    assert df.set_index("codec").loc["none (raw float32)", "ratio"] == pytest.approx(1.0)
    assert (tmp_path / "codec_throughput.png").stat().st_size > 0
