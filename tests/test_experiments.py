"""Every experiment file stays runnable: TOML configs validate, scripts compile and
answer ``--help`` (scripts with an argparse parser only: ``--help`` must not start
a benchmark). Parametrized over what exists under experiments/.
"""

import importlib.util
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


def _benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark", EXPERIMENTS / "attacks" / "benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize("name, count", [("benchmark.toml", 2 * 5 * 3 * 2 * 5), ("benchmark_compressed.toml", None)])
def test_attack_benchmark_cells_are_valid_attack_configs(name, count):
    """Every cell of an attack benchmark config is a valid `fedsim attack` config with known options,
    and each has its own folder."""
    import tomllib

    from attacks import build_attack
    from attacks.config import load_attack_config

    bench = _benchmark()
    table = tomllib.loads((EXPERIMENTS / "attacks" / name).read_text())
    cells = bench.cells(table)
    assert count is None or len(cells) == count
    assert len({c.id for c in cells}) == len(cells)
    for cell in cells:
        cfg = load_attack_config(cell.mapping)
        build_attack(cfg.attack, **cfg.options)
    for _, mapping in bench.phase_cells(table) if "phases" in table else []:
        build_attack(load_attack_config(mapping).attack, **load_attack_config(mapping).options)


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


def test_attack_benchmark_report_carries_intervals_and_baselines_and_skips_unfinished_cells(tmp_path):
    """The report's table gives each attack's PSNR per defense as mean ± 95 % t-interval over the trials and,
    beside it, the baselines' PSNR on the same targets (rows baseline-grey / -mean / -random that
    attacks/runner.py writes after each trial's row); a cell short of its trials is not reported; a row is
    the cell's B per client, even where a defense recovers more images (SecAgg: the sum of 2 clients)."""
    import tomli_w

    from attacks.runner import _append

    bench = _benchmark()
    spec = {"batch-sizes": [4], "local-steps": [1], "trials": 2, "seed": 0,
            "defenses": {"none": {"defense": "none"}, "dp-eps1": {"defense": "dp", "dp-epsilon": 1.0}},
            "datasets": {"mnist5k": {"classifier": {"dataset": "mnist5k"}}},
            "classifier": {"model": "convnet"}, "diffusion": {"model": "ddpm-tiny"},
            "attacks": {"ig": {"options": {"iterations": 200}}, "agic": {"options": {"iterations": 50}}}}
    config = tmp_path / "spec.toml"
    config.write_text(tomli_w.dumps(spec))
    cells = {c.id: c for c in bench.cells(spec)}
    assert sorted(cells) == ["mnist5k-agic-b4-s1-dp-eps1", "mnist5k-agic-b4-s1-none", "mnist5k-ig-b4-s1-dp-eps1",
                             "mnist5k-ig-b4-s1-none"]
    for cell_id, psnrs in (("mnist5k-ig-b4-s1-none", (23.0, 25.0)), ("mnist5k-ig-b4-s1-dp-eps1", (20.0, 20.0)),
                           ("mnist5k-agic-b4-s1-none", (30.0,))):  # agic: 1 of 2 trials, unfinished
        folder = tmp_path / "out" / "cells" / cell_id
        folder.mkdir(parents=True)
        for trial, psnr in enumerate(psnrs):
            b = 8 if "dp-eps1" in cell_id else 4  # as SecAgg's aggregate of 2 clients holds 2B images
            common = {"batch_size": b, "local_steps": 1, "defense": cells[cell_id].mapping["defense"], "trial": trial,
                      "source": "fresh", "truth": "batch", "ssim": 0.5, "wall_s": 1.0, "cpu_s": 2.0}
            _append(folder / "results.csv", {"attack": cells[cell_id].attack, "psnr": psnr, "label_acc": 1.0,
                                             **common})
            for kind, value in (("grey", 7.5), ("mean", 11.25), ("random", 8.5)):
                _append(folder / "results.csv", {"attack": f"baseline-{kind}", "psnr": value, **common})
    assert bench.finished(tmp_path / "out" / "cells" / "mnist5k-agic-b4-s1-none", cells["mnist5k-agic-b4-s1-none"]) \
        is None
    assert bench.main(["--config", str(config), "--out", str(tmp_path / "out"), "--report"]) == 0
    md = (tmp_path / "out" / "benchmark.md").read_text()
    assert md.startswith("2 of 4 cells finished, 2 trial(s) per cell")
    assert "**mnist5k**" in md and "PSNR with dp-eps1" in md and "grey / mean / random image (dB)" in md
    assert "| ig | it 200 | 4 | 1 | 24.00 ± 12.71 | 20.00 ± 0.00 | 7.50 / 11.25 / 8.50 | 0.500 | 1.00 |  | 2.0 |" in md
    assert "| agic |" not in md  # unfinished
    assert "baseline" not in md.split("grey / mean / random image (dB)")[1]  # no baseline lines of their own
    assert (tmp_path / "out" / "benchmark.png").stat().st_size > 0
    phases = bench.phase_table(bench.pd.DataFrame(
        [{"variant": "GIDM", "attack": "gidm", "psnr": 17.0, "ssim": 0.9, "t_acc": None, "eps_cos": None},
         {"variant": "baseline-mean", "attack": "baseline-mean", "psnr": 11.0, "ssim": 0.3, "t_acc": None,
          "eps_cos": None}]))
    assert phases[2].startswith("| GIDM | 17.00")
    assert phases[3].startswith("| baseline-mean image (same targets) | 11.00")


def test_bench_process_names_are_short_and_say_what_runs():
    """bench_simulation's per-process memory table names Ray's workers, binaries and Python scripts."""
    spec = importlib.util.spec_from_file_location("bench_simulation", EXPERIMENTS / "bench_simulation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    class Proc:
        def __init__(self, cmd):
            self.cmd = cmd

        def cmdline(self):
            return self.cmd

    cases = {"raylet": ["/r/ray/raylet/raylet", "--node=1", "/v/bin/python /r/default_worker.py --temp-dir=/tmp/ray --x"],
             "ray::ClientAppActor": ["ray::ClientAppActor"],
             "ray::DashboardAgent": ["ray::DashboardAgent"],
             "flower-superlink": ["/v/bin/python", "/v/bin/flower-superlink", "--insecure"],
             "fedsim.cli": ["/v/bin/python", "-m", "fedsim.cli", "run"],
             "log_monitor.py": ["/v/bin/python", "-u", "/r/ray/_private/log_monitor.py", "--a=/b"]}
    for name, cmd in cases.items():
        assert bench.process_name(Proc(cmd)) == name
    # an actor's title names the method it runs: one process, one name, for memory and CPU alike
    assert bench.process_name(Proc(["ray::ClientAppActor.run"])) == "ray::ClientAppActor"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_simulation", EXPERIMENTS / "bench_simulation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_scale_rows_sample_from_many_registered_clients_and_stay_out_of_the_ratios():
    bench = _bench_module()
    items = bench.bench_overrides(10_000, 2, per_round=100)
    assert "num-clients=10000" in items and "clients-per-round=100" in items
    assert "dataset='synthetic'" in items and items.index("dataset='synthetic'") > items.index("dataset='digits'")
    assert "clients-per-round=1000" in bench.bench_overrides(1000, 3) and "dataset='synthetic'" not in bench.bench_overrides(1000, 3)
    row = {"device": "cpu", "peak_pss_mb": 2000.0}
    rows = [{**row, "clients": 100, "per_round": 100, "runner": "plain", "round_s": 4.0},
            {**row, "clients": 100, "per_round": 100, "runner": "fedsim", "round_s": 4.4},
            {**row, "clients": 10_000, "per_round": 100, "runner": "fedsim", "round_s": 40.0}]
    assert bench.ratios(rows) == [{"clients": 100, "fedsim_over_plain": 1.1, "flower_direct_over_fedsim": None,
                                   "fedsim_pss_over_smallest": 1.0}]


def test_bench_cpu_per_round_counts_rounds_two_to_n_of_every_process():
    """CPU-seconds per round: cumulative readings interpolated at the window's ends, a process
    counted from 0 before it appeared and at its last reading after it ended."""
    bench = _bench_module()
    samples = [(0.0, {"1 sim": 0.0}), (10.0, {"1 sim": 5.0}), (20.0, {"1 sim": 10.0, "2 actor": 4.0}),
               (30.0, {"1 sim": 15.0, "2 actor": 14.0}), (40.0, {"1 sim": 20.0})]
    got = bench.cpu_between(samples, 15.0, 35.0)
    assert got["1 sim"] == pytest.approx(10.0)  # 0.5 CPU-s a second
    assert got["2 actor"] == pytest.approx(14.0 - 2.0)  # 0 at t=10, 4 at t=20: 2 at t=15; gone after 30: 14
    mem = bench.Memory(0.0, 0.0, [], {}, 40.0, samples, t0_unix=1000.0)
    timing = bench.Timing(1.0, 5.0, 10.0, window=(1015.0, 1035.0, 3))  # rounds 2-3: t = 15..35
    per_round = bench.cpu_per_round(timing, mem)
    assert per_round["1 sim"] == pytest.approx(5.0) and per_round["2 actor"] == pytest.approx(6.0)
    assert bench.cpu_per_round(timing._replace(window=None), mem) is None  # flower-direct: no window


def test_bench_reads_round_two_from_flowers_log(tmp_path):
    bench = _bench_module()
    log = tmp_path / "server.log"
    log.write_text("2026-12-05 19:25:51,411 INFO [ROUND 1/3]\n2026-12-05 19:25:53,374 INFO [ROUND 2/3]\n")
    import datetime

    want = datetime.datetime(2026, 12, 5, 19, 25, 53, 374000).timestamp()
    assert bench.round_two_unix(log) == pytest.approx(want, abs=1e-6)
    log.write_text("2026-12-05 19:25:51,411 INFO [ROUND 1/1]\n")
    assert bench.round_two_unix(log) is None


def test_bench_bad_registered_pair_is_one_line_and_exit_2():
    res = subprocess.run([sys.executable, str(EXPERIMENTS / "bench_simulation.py"), "--out", "/nonexistent/x",
                          "--registered", "100:1000"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "R:K pairs" in res.stderr and "Traceback" not in res.stderr


def test_attack_benchmark_jobs_give_the_rows_of_one_job_in_cell_order(tmp_path, monkeypatch):
    """--jobs 2 runs the cells in two processes and reports what one process reports, cell by cell
    (every cell's randomness comes from its config's seed, not from the process that ran it)."""
    bench = _benchmark()
    monkeypatch.syspath_prepend(str(EXPERIMENTS / "attacks"))  # the workers import it by name, as a script's run does
    monkeypatch.setitem(sys.modules, "benchmark", bench)
    spec = {"batch-sizes": [1, 2], "local-steps": [1], "trials": 1, "seed": 3, "defenses": ["none"],
            "classifier": {"model": "lenet", "dataset": "digits"}, "diffusion": {"model": "ddpm-tiny"},
            "attacks": {"ig": {"threat": {"labels": "known"}, "options": {"iterations": 3}}}}
    todo = bench.cells(spec)
    one = {c.id: rows for _, c, rows, _ in bench.run_cells(todo, tmp_path / "one", run=True, jobs=1)}
    got = list(bench.run_cells(todo, tmp_path / "two", run=True, jobs=2))
    assert sorted(i for i, *_ in got) == [0, 1] and all(ran for *_, ran in got)
    for _, cell, rows, _ in got:
        a, b = rows[rows.attack == "ig"].iloc[0], one[cell.id][one[cell.id].attack == "ig"].iloc[0]
        assert a.batch_size == b.batch_size == cell.mapping["batch-size"]
        assert a.psnr == pytest.approx(b.psnr, abs=1e-3)
    again = list(bench.run_cells(todo, tmp_path / "two", run=True, jobs=2))  # finished cells are read, not run
    assert not any(ran for *_, ran in again)
