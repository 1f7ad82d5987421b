"""experiments/fedemd/run.py without running federations: R@99, the summary table and
the configs it runs (finished runs are faked as run folders with a metrics.csv)."""

import importlib.util
import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim.config import load_config, read_toml

HERE = Path(__file__).resolve().parents[1] / "experiments" / "fedemd"


@pytest.fixture(scope="module")
def exp():
    spec = importlib.util.spec_from_file_location("fedemd_run", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(folder: Path, acc: list[float], mav_selections: list[int]) -> None:
    folder.mkdir(parents=True)
    pd.DataFrame({"round": range(1, len(acc) + 1), "test_acc": acc,
                  "maverick_49_prob": 0.02, "maverick_49_selections": mav_selections,
                  "typical_prob": 0.02}).to_csv(folder / "metrics.csv", index=False)
    (folder / "status.json").write_text(json.dumps({"state": "done"}))


def test_r99_is_the_first_round_at_the_target(exp):
    assert exp.r99(np.array([0.1, 0.5, 0.89, 0.9, 0.95]), 0.891) == 4
    assert exp.r99(np.array([0.1, 0.5]), 0.9) is None


def test_summary_and_table_by_hand(exp, tmp_path):
    spec = {"mavericks": ["exclusive-1"], "selectors": {"random": {}, "fedemd": {}, "broken": {}}}
    # random peaks at 0.90 -> target 0.891: random reaches it in round 4, fedemd in round 2
    fake_run(exp.run_folder(tmp_path, "exclusive-1", "random", "seed0"), [0.2, 0.5, 0.8, 0.9, 0.9], [0, 0, 1, 1, 1])
    fake_run(exp.run_folder(tmp_path, "exclusive-1", "fedemd", "seed0"), [0.3, 0.895, 0.9, 0.92, 0.93], [1, 2, 2, 3, 3])
    broken = exp.run_folder(tmp_path, "exclusive-1", "broken", "seed0")
    broken.mkdir(parents=True)
    (broken / "error.txt").write_text("fedsim: error: clients [6] hold none\n")
    df = exp.summarise(tmp_path, spec, seeds=1, rounds=5)
    got = df.set_index("selector")
    assert got.loc["random", "r99"] == 4 and got.loc["fedemd", "r99"] == 2
    assert got.loc["fedemd", "final_acc"] == pytest.approx(0.93)
    assert got.loc["fedemd", "maverick_selections"] == "3"
    assert "hold none" in got.loc["broken", "note"]
    md = exp.table(df, spec, rounds=5)
    assert "| exclusive-1 | fedemd | 2 | 2.0 | +50.0 % |" in md  # (4 - 2) / 4
    assert "not defined: fedsim: error: clients [6] hold none" in md


def test_never_reaching_the_target_is_reported_as_over_budget(exp, tmp_path):
    spec = {"mavericks": ["exclusive-1"], "selectors": {"random": {}, "shapley": {}}}
    fake_run(exp.run_folder(tmp_path, "exclusive-1", "random", "seed0"), [0.2, 0.9, 0.9], [0, 1, 1])
    fake_run(exp.run_folder(tmp_path, "exclusive-1", "shapley", "seed0"), [0.2, 0.5, 0.6], [0, 0, 0])
    df = exp.summarise(tmp_path, spec, seeds=1, rounds=3)
    row = df.set_index("selector").loc["shapley"]
    assert row["r99"] == 4 and not row["reached"]
    assert "| exclusive-1 | shapley | >3 | ≥ 4.0 |" in exp.table(df, spec, rounds=3)


@pytest.mark.parametrize("matrix", ["experiment.toml", "alpha_sweep.toml"])
def test_every_run_of_the_matrix_is_a_valid_config(matrix):
    spec = tomllib.loads((HERE / matrix).read_text())
    assert "random" in spec["selectors"]
    for base in ("base.toml", "diffusion.toml"):
        for mav in spec["mavericks"]:
            for over in spec["selectors"].values():
                load_config({**read_toml(HERE / base), **over, "partition": mav, "rounds": spec["rounds"]})
