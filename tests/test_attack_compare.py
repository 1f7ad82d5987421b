"""experiments/attacks/compare.py without attacking: every variant's config of both comparisons is
valid, and the table (paired PSNR difference to the reference, t accuracy, cos, CPU speedup, the
issue's checks) and the equal-CPU iteration count are checked by hand on faked result rows."""

import math
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from fedsim.cli.sweep import sibling

HERE = Path(__file__).resolve().parents[1] / "experiments" / "attacks"
SPEC = tomllib.loads((HERE / "gidm_plus_recovery.toml").read_text())
AGIC = tomllib.loads((HERE / "agic_vs_simulation.toml").read_text())
REFERENCE = "GIDM (eps, t known)"


@pytest.fixture(scope="module")
def exp():
    return sibling(str(HERE / "compare.py"), "compare", "attacks")


def test_variants_are_valid_configs_and_share_the_targets(exp):
    cfgs = list(exp.variant_configs(SPEC, SPEC["seed"], 2, "/prior"))
    assert [label for _, label, _ in cfgs][0] == REFERENCE
    assert {c.seed for _, _, c in cfgs} == {1} and {c.victim_epochs for _, _, c in cfgs} == {30}
    assert all(c.options["prior"] == "/prior" for _, _, c in cfgs)
    assert SPEC["seed"] != SPEC["tune-seed"] and AGIC["seed"] != AGIC["tune-seed"]
    agic = list(exp.variant_configs(AGIC, AGIC["seed"], 2, None))
    assert [c.attack for _, _, c in agic] == ["simulation", "agic", "agic", "ig"]
    assert {(c.local_steps, c.batch_size, c.threat["labels"]) for _, _, c in agic} == {(8, 4, "known")}
    assert set(SPEC["checks"]) <= set(SPEC["variants"]) and set(AGIC["checks"]) <= set(AGIC["variants"])


def rows(variant, attack, psnr, t_acc=None, cos=None, cpu=20.0, iterations=100):
    out = []
    for trial, p in enumerate(psnr):
        out.append({"variant": variant, "attack": attack, "trial": trial, "psnr": p, "ssim": 0.5,
                    "t_acc": None if t_acc is None else t_acc[trial], "t_abs_err": None if t_acc is None else
                    1 - t_acc[trial], "eps_cos": None if cos is None else cos[trial], "wall_s": 10.0,
                    "cpu_s": cpu, "iterations": iterations})
        for kind in ("grey", "mean", "random"):
            out.append({"variant": variant, "attack": f"baseline-{kind}", "trial": trial, "psnr": 5.0, "ssim": 0.0,
                        "t_acc": None, "t_abs_err": None, "eps_cos": None, "wall_s": 0.0, "cpu_s": None,
                        "iterations": 0})
    return out


def test_table_pairs_trials_and_checks_the_targets(exp):
    ref = [14.0, 16.0, 12.0]
    df = pd.DataFrame(rows(REFERENCE, "gidm", ref)
                      + rows("GIDM+ (eps, t private)", "gidm_plus", [13.0, 13.5, 11.0], [1, 1, 0], [0.95, 0.97, 0.9]))
    text = "\n".join(exp.table(df, 1, SPEC))
    # paired differences -1, -2.5, -1: mean -1.5, sd 0.866, t(2) 4.303 -> half width 2.15
    half = 4.302652729911275 * math.sqrt(((0.5 ** 2) * 2 + 1 ** 2) / 2) / math.sqrt(3)
    assert f"-1.5 ± {half:.3g}" in text
    assert "- GIDM+ (eps, t private): t-acc >= 0.8: NOT met (0.667)" in text
    assert "- GIDM+ (eps, t private): eps-cos >= 0.9: met (0.94)" in text
    assert "- GIDM+ (eps, t private): psnr-vs-reference >= -2.0: met (-1.50 [" in text
    # an unpaired comparison (the means' difference of shuffled trials) would be the same mean but a wider
    # interval; the pairing is by trial: reversing the reference's trials changes the interval
    df2 = df.copy()
    m = (df2.variant == REFERENCE) & (df2.attack == "gidm")
    df2.loc[m, "psnr"] = list(reversed(ref))
    assert f"-1.5 ± {half:.3g}" not in "\n".join(exp.table(df2, 1, SPEC))


def test_speedup_and_equal_cpu_iterations(exp):
    # simulation: 30 CPU s for 100 iterations; AGIC: 4 CPU s for 100 -> 7.5x per iteration, and 750 iterations
    # fit in the simulation's 30 s; the speedup check reads that ratio
    sim = pd.DataFrame(rows("simulation", "simulation", [15.0, 16.0, 14.0], cpu=30.0))
    agic = pd.DataFrame(rows("AGIC", "agic", [14.0, 15.0, 14.0], cpu=4.0))
    assert exp.equal_cpu_iterations([sim, agic]) == 750
    eq = pd.DataFrame(rows("AGIC (equal CPU time)", "agic", [15.5, 16.5, 14.5], cpu=30.0, iterations=750))
    text = "\n".join(exp.table(pd.concat([sim, agic, eq], ignore_index=True), 1, AGIC))
    assert "| 7.50x |" in text
    assert "- AGIC (equal CPU time): speedup >= 5.0: met (7.5)" in text
    assert "- AGIC (equal CPU time): psnr-vs-reference >= 0.0: met (+0.50 [" in text
