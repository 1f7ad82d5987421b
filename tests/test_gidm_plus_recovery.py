"""experiments/attacks/gidm_plus_recovery.py without attacking: every variant's config is valid, and
the table (paired PSNR difference to GIDM with eps and t known, t accuracy, cos, the issue's targets)
is checked by hand on faked result rows."""

import math
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from fedsim.cli.sweep import sibling

HERE = Path(__file__).resolve().parents[1] / "experiments" / "attacks"
SPEC = tomllib.loads((HERE / "gidm_plus_recovery.toml").read_text())


@pytest.fixture(scope="module")
def exp():
    return sibling(str(HERE / "gidm_plus_recovery.py"), "gidm_plus_recovery", "attacks")


def test_variants_are_valid_configs_and_share_the_targets(exp):
    cfgs = list(exp.variant_configs(SPEC, SPEC["seed"], 2, "/prior"))
    assert [label for _, label, _ in cfgs][0] == exp.REFERENCE
    assert {c.seed for _, _, c in cfgs} == {1} and {c.victim_epochs for _, _, c in cfgs} == {30}
    assert all(c.options["prior"] == "/prior" for _, _, c in cfgs)
    assert SPEC["seed"] != SPEC["tune-seed"]


def rows(variant, attack, psnr, t_acc=None, cos=None):
    out = []
    for trial, p in enumerate(psnr):
        out.append({"variant": variant, "attack": attack, "trial": trial, "psnr": p, "ssim": 0.5,
                    "t_acc": None if t_acc is None else t_acc[trial], "t_abs_err": None if t_acc is None else
                    1 - t_acc[trial], "eps_cos": None if cos is None else cos[trial], "wall_s": 10.0})
        for kind in ("grey", "mean", "random"):
            out.append({"variant": variant, "attack": f"baseline-{kind}", "trial": trial, "psnr": 5.0, "ssim": 0.0,
                        "t_acc": None, "t_abs_err": None, "eps_cos": None, "wall_s": 0.0})
    return out


def test_table_pairs_trials_and_checks_the_targets(exp):
    ref = [14.0, 16.0, 12.0]
    df = pd.DataFrame(rows(exp.REFERENCE, "gidm", ref)
                      + rows("GIDM+ (eps, t private)", "gidm_plus", [13.0, 13.5, 11.0], [1, 1, 0], [0.95, 0.97, 0.9]))
    text = "\n".join(exp.table(df, 1))
    # paired differences -1, -2.5, -1: mean -1.5, sd 0.866, t(2) 4.303 -> half width 2.15
    half = 4.302652729911275 * math.sqrt(((0.5 ** 2) * 2 + 1 ** 2) / 2) / math.sqrt(3)
    assert f"-1.5 ± {half:.3g}" in text
    assert "t exact in >= 80 % of trials: NOT met (67%)" in text
    assert "cos(e, eps) >= 0.9: met (0.940)" in text
    assert "PSNR within 2 dB of GIDM (eps, t known): met (-1.50 dB" in text
    # an unpaired comparison (the means' difference of shuffled trials) would be the same mean but a wider
    # interval; the pairing is by trial: reversing the reference's trials changes the interval
    df2 = df.copy()
    m = (df2.variant == exp.REFERENCE) & (df2.attack == "gidm")
    df2.loc[m, "psnr"] = list(reversed(ref))
    assert f"-1.5 ± {half:.3g}" not in "\n".join(exp.table(df2, 1))
