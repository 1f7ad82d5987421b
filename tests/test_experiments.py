"""Every experiment file stays runnable: TOML configs validate, scripts compile and
answer ``--help`` (scripts with an argparse parser only: ``--help`` must not start
a benchmark). Parametrized over what exists under experiments/.
"""

import os
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.config import RunConfig, load_config, read_toml

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
TOMLS = sorted(EXPERIMENTS.glob("*.toml"))  # run configs; attacks/ holds `fedsim attack` configs
SCRIPTS = sorted(EXPERIMENTS.rglob("*.py"))
CLI_SCRIPTS = [p for p in SCRIPTS if "ArgumentParser" in p.read_text()]


def _id(path: Path) -> str:
    return str(path.relative_to(EXPERIMENTS))


def test_quickstart_config_exists():
    assert EXPERIMENTS / "quickstart.toml" in TOMLS  # `make demo` runs it


@pytest.mark.parametrize("path", TOMLS, ids=_id)
def test_toml_is_a_valid_run_config(path):
    cfg = load_config(read_toml(path))
    assert isinstance(cfg, RunConfig)


def test_attack_benchmark_cells_are_valid_attack_configs():
    """Every cell of experiments/attacks/benchmark.toml is a valid `fedsim attack` config with known options."""
    import importlib.util
    import tomllib

    from attacks import build_attack
    from attacks.config import load_attack_config

    spec = importlib.util.spec_from_file_location("benchmark", EXPERIMENTS / "attacks" / "benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    table = tomllib.loads((EXPERIMENTS / "attacks" / "benchmark.toml").read_text())
    cells = list(bench.cells(table)) + list(bench.phase_cells(table))
    assert len(cells) == 6 * 3 * 2 * 2 + 5
    for _, mapping in cells:
        cfg = load_attack_config(mapping)
        build_attack(cfg.attack, **cfg.options)


@pytest.mark.parametrize("path", SCRIPTS, ids=_id)
def test_script_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)


@pytest.mark.parametrize("path", CLI_SCRIPTS, ids=_id)
def test_script_help(path, tmp_path):
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    res = subprocess.run([sys.executable, str(path), "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage:" in res.stdout
    assert list(tmp_path.iterdir()) == []  # --help wrote nothing


def test_attack_benchmark_report_carries_the_baselines(tmp_path):
    """The report's table gives, beside each attack's PSNR, the baselines' PSNR on the same targets
    (rows baseline-grey / -mean / -random that attacks/runner.py writes after each trial's row)."""
    import importlib.util
    import tomllib

    from attacks.runner import _append

    spec = importlib.util.spec_from_file_location("benchmark", EXPERIMENTS / "attacks" / "benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    table = tomllib.loads((EXPERIMENTS / "attacks" / "benchmark.toml").read_text())
    for defense, psnr in (("none", 24.0), ("dp", 20.0)):
        cell = tmp_path / "cells" / f"ig-b4-s1-{defense}"
        cell.mkdir(parents=True)
        common = {"batch_size": 4, "local_steps": 1, "defense": defense, "trial": 0, "source": "fresh",
                  "truth": "batch", "ssim": 0.5, "wall_s": 1.0}
        _append(cell / "results.csv", {"attack": "ig", "psnr": psnr, "label_acc": 1.0, **common})
        for kind, value in (("grey", 7.5), ("mean", 11.25), ("random", 8.5)):
            _append(cell / "results.csv", {"attack": f"baseline-{kind}", "psnr": value, **common})
    assert bench.report(tmp_path, table) == 0
    md = (tmp_path / "benchmark.md").read_text()
    assert "grey / mean / random image (dB)" in md
    assert "| ig | it 200 | 4 | 1 | 24.00 | 20.00 | 7.50 / 11.25 / 8.50 | 0.500 | 1.00 |" in md
    assert "baseline" not in md.split("grey / mean / random image (dB)")[1]  # no baseline lines of their own
    assert (tmp_path / "benchmark.png").stat().st_size > 0
    phases = bench.phase_table(bench.pd.DataFrame(
        [{"variant": "GIDM", "attack": "gidm", "psnr": 17.0, "ssim": 0.9, "t_acc": None, "eps_cos": None},
         {"variant": "baseline-mean", "attack": "baseline-mean", "psnr": 11.0, "ssim": 0.3, "t_acc": None,
          "eps_cos": None}]))
    assert phases[2].startswith("| GIDM | 17.00")
    assert phases[3].startswith("| baseline-mean image (same targets) | 11.00")
