"""FedEMD experiment, from finished run folders to tables and plots (run.py runs them).

R@99 of a run is the first round whose test accuracy reaches 99 % of the best
accuracy random selection reaches with the same seed and Maverick setting; a run
that never does is censored at the budget: "> R" per seed, counted as R + 1, so
a mean over seeds is a lower bound ("≥") and rounds saved an upper bound ("≤").
Intervals follow shared/papers/evaluation.md, section 3 (fedsim/records/stats.py):
95 % t-interval over seeds with n - 1 degrees of freedom; against random, the
per-seed paired difference R@99(random) - R@99(selector), "not significant" when
its interval contains 0. Nothing here starts a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.cli.sweep import is_done
from fedsim.config import ConfigError, RunConfig, load_config, read_toml
from fedsim.records.stats import Interval, paired_difference, t_interval, verdict

HERE = Path(__file__).resolve().parent
REFERENCE = "random"
WHERE_KEYS = {"out_dir"}  # where a run was written, not what it ran (a copied runs/ folder is still valid)
COLUMNS = ["mavericks", "selector", "seed", "folder", "r99", "reached", "target", "final_acc", "best_acc",
           "wall_s", "maverick_selections", "note"]


@dataclass(frozen=True)
class Run:
    """One ``fedsim run`` of the matrix: where it lives and the config it must have."""

    mavericks: str
    label: str  # the selector's name in the tables
    seed: int
    folder: Path
    overrides: dict = field(compare=False)
    config: Path = HERE / "base.toml"


def stale(run: Run) -> str:
    """'' when the finished run's config.toml is what the matrix asks for, else which keys differ.

    Only the keys the matrix sets (base TOML and overrides) are compared: a later change of
    another key's default (a key of another feature, say) does not make a finished run stale."""
    try:
        asked = {**read_toml(run.config), **run.overrides}
        want = load_config(asked)
        have = load_config(read_toml(run.folder / "config.toml"))
    except (OSError, ConfigError) as e:
        return f"stale run ({e})"
    keys = {k.replace("-", "_") for k in asked}
    diff = [f.name.replace("_", "-") for f in fields(RunConfig)
            if f.name in keys and f.name not in WHERE_KEYS and getattr(want, f.name) != getattr(have, f.name)]
    return f"stale run (config differs in {', '.join(diff)}; remove its folder to redo it)" if diff else ""


def missing(run: Run) -> str:
    """Why a run cannot be counted ('' when it can)."""
    if not is_done(run.folder):
        error = run.folder / "error.txt"
        return f"failed: {error.read_text().strip()}" if error.exists() else "not run"
    return stale(run)


def r99(acc: np.ndarray, target: float) -> int | None:
    """First round (1-based) with accuracy >= target, None if never."""
    hit = np.flatnonzero(acc >= target)
    return int(hit[0]) + 1 if hit.size else None


def summarise(runs: list[Run], rounds: int) -> pd.DataFrame:
    """One row per run (COLUMNS); a missing run keeps only its note."""
    targets = {}
    for run in runs:
        if run.label == REFERENCE and not missing(run):
            targets[run.mavericks, run.seed] = 0.99 * pd.read_csv(run.folder / "metrics.csv")["test_acc"].max()
    rows = []
    for run in runs:
        row = dict(mavericks=run.mavericks, selector=run.label, seed=run.seed, folder=run.folder.parent.name)
        note = missing(run) or ("" if (run.mavericks, run.seed) in targets else "no finished random run on this seed")
        if note:
            rows.append({**row, "note": note})
            continue
        df = pd.read_csv(run.folder / "metrics.csv")
        acc, target = df["test_acc"].to_numpy(), targets[run.mavericks, run.seed]
        r = r99(acc, target)
        sel = [c for c in df if c.startswith("maverick_") and c.endswith("_selections")]
        rows.append({**row, "r99": r if r is not None else rounds + 1, "reached": r is not None,
                     "target": round(float(target), 4), "final_acc": float(acc[-1]), "best_acc": float(acc.max()),
                     "wall_s": round(float(df["wall_s"].sum()), 1),
                     "maverick_selections": " ".join(str(int(df[c].iloc[-1])) for c in sel), "note": ""})
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["note"].fillna("") == ""]


@dataclass(frozen=True)
class Comparison:
    """One selector in one Maverick setting against random on the same seeds."""

    r99: dict[int, float]  # seed -> R@99 (censored: rounds + 1)
    censored: bool  # some seed never reached the target
    mean: Interval  # of R@99
    saved: Interval  # paired R@99(random) - R@99(selector)
    change: float  # % change of the mean R@99 against random's, over the common seeds
    final: Interval  # of the final accuracy


def compare(df: pd.DataFrame, mav: str, label: str) -> Comparison:
    ok = finished(df[(df.mavericks == mav)])
    mine, ref = ok[ok.selector == label], ok[ok.selector == REFERENCE]
    r_mine = dict(zip(mine.seed.astype(int), mine.r99.astype(float)))
    r_ref = dict(zip(ref.seed.astype(int), ref.r99.astype(float)))
    common = sorted(set(r_mine) & set(r_ref))
    change = np.nan
    if common:
        change = 100 * (np.mean([r_mine[s] for s in common]) / np.mean([r_ref[s] for s in common]) - 1)
    return Comparison(r_mine, not mine.reached.astype(bool).all(), t_interval(list(r_mine.values())),
                      paired_difference(r_ref, r_mine), float(change), t_interval(mine.final_acc.astype(float)))


def _bound(text: str, mark: str) -> str:
    return f"{mark} {text}" if mark and text != "–" else text


def r99_table(df: pd.DataFrame, selectors: list[str], mavericks: list[str], seeds: list[int], rounds: int) -> str:
    """The Markdown table: one row per Maverick setting and selector, every planned cell listed."""
    lines = ["| Mavericks | selector | R@99 per seed | mean R@99 | rounds saved vs random (paired) | "
             "change vs random | verdict | final accuracy | Maverick selected (per seed) |", "|---" * 9 + "|"]
    df = df if len(df) else pd.DataFrame(columns=COLUMNS)
    for mav in mavericks:
        for label in selectors:
            own = df[(df.mavericks == mav) & (df.selector == label)]
            if own.empty:  # not planned in this setting (only-mavericks)
                continue
            ok = finished(own)
            if ok.empty:
                problems = [n for n in sorted(set(own.note.dropna())) if n.startswith(("failed", "stale"))]
                what = problems[0] if problems else f"pending: 0 of {len(seeds)} seeds finished"
                lines.append(f"| {mav} | {label} | {what} | | | | | | |")
                continue
            c = compare(df, mav, label)
            by_seed = {int(r.seed): str(int(r.r99)) if r.reached else f"> {rounds}" for r in ok.itertuples()}
            per_seed = ", ".join(by_seed.get(s, "–") for s in seeds)
            mean = _bound(c.mean.fmt(3), "≥" if c.censored else "")
            if label == REFERENCE:
                saved, change, word = "(reference)", "", ""
            else:
                saved = _bound(c.saved.fmt(3, signed=True), "≤" if c.censored else "")
                change = _bound(f"{c.change:+.1f} %", "≥" if c.censored else "") if np.isfinite(c.change) else "–"
                word = verdict(c.saved)
                if c.censored and word != "worse":  # imputed R + 1 flatters a censored selector
                    word += " (censored: bound only)"
            selected = "; ".join(ok.maverick_selections.fillna("").astype(str))
            lines.append(f"| {mav} | {label} | {per_seed} | {mean} | {saved} | {change} | {word} | "
                         f"{c.final.fmt(3)} | {selected} |")
    return "\n".join(lines)


def pick(tune: pd.DataFrame) -> int | None:
    """Index of the setting with the smallest mean R@99 (censored: rounds + 1), ties: the best
    final accuracy; None until every setting has finished on every tuning seed."""
    settings = tune[tune.selector != REFERENCE]
    if settings.empty or (settings.finished < settings.runs).any():
        return None
    return settings.sort_values(["r99", "final_acc"], ascending=[True, False], kind="stable").index[0]


def tune_summary(df: pd.DataFrame, settings: dict[str, dict], where: dict) -> pd.DataFrame:
    """One row per setting (label -> its values) and one for random, over the tuning seeds;
    ``where``: mavericks, seeds, rounds (copied into every row, so the pick says where it was made)."""
    keys, rows = list(next(iter(settings.values()), {})), []
    for label in [REFERENCE, *settings]:
        g = df[df.selector == label]
        ok = finished(g)
        rows.append(dict(selector=label, **settings.get(label, dict.fromkeys(keys, np.nan)),
                         **where, r99=ok.r99.astype(float).mean() if len(ok) else np.nan,
                         reached=bool(len(ok)) and bool(ok.reached.astype(bool).all()),
                         final_acc=ok.final_acc.astype(float).mean() if len(ok) else np.nan,
                         wall_s=float(ok.wall_s.astype(float).sum()), runs=len(g), finished=len(ok),
                         note="; ".join(sorted(set(g.note.dropna()) - {""}))))
    out = pd.DataFrame(rows)
    out["picked"] = out.index == pick(out)
    return out


def tune_table(tune: pd.DataFrame, keys: list[str]) -> str:
    lines = ["| selector | " + " | ".join(keys) + " | R@99 | final accuracy | finished | picked |",
             "|---|" + "---|" * (len(keys) + 4)]
    for _, r in tune.iterrows():
        r99_cell = "–" if pd.isna(r.r99) else (f"{r.r99:g}" if r.reached else f"> {int(r.rounds)}")
        vals = " | ".join("" if pd.isna(r[k]) else f"{r[k]:g}" for k in keys)
        acc = "–" if pd.isna(r.final_acc) else f"{r.final_acc:.3f}"
        lines.append(f"| {r.selector} | {vals} | {r99_cell} | {acc} | {r.finished} of {r.runs} | "
                     f"{'**yes**' if r.picked else ''} |")
    if not tune.picked.any():
        lines += ["", "No pick yet: every setting must finish on every tuning seed first."]
    return "\n".join(lines)


def class_share(cfg: RunConfig) -> float:
    """The Maverick class's share of the train split (mnist5k: 400 of 4,000)."""
    from fedsim.data.clients import dataset

    return float(np.mean(dataset(cfg, "train").labels == cfg.maverick_class))


def diffusion_rows(runs: list[Run]) -> pd.DataFrame:
    """First quality round at which gen_class_<Maverick class> (the share of all samples the
    evaluator recognises as that class; unrecognised samples count for no class) reaches that
    class's share of the train split; ``recognised`` is the share recognised as any class."""
    rows = []
    for run in runs:
        if missing(run):
            continue
        cfg = load_config({**read_toml(run.config), **run.overrides})
        share = class_share(cfg)
        col = f"gen_class_{cfg.maverick_class}"
        every = pd.read_csv(run.folder / "metrics.csv")
        sel = [c for c in every if c.startswith("maverick_") and c.endswith("_selections")]
        df = every.dropna(subset=[col])  # quality rounds only
        hit = df[df[col] >= share]
        last = df.iloc[-1]
        rows.append(dict(selector=run.label, seed=run.seed, share=round(share, 4),
                         rounds_to_share=int(hit["round"].iloc[0]) if len(hit) else None,
                         final_class_share=float(last[col]), final_recognised=float(last["recognised"]),
                         final_fd=float(last["fd"]), maverick_selections=int(last[sel[0]]) if sel else None,
                         wall_s=round(float(every["wall_s"].sum()), 1)))
    return pd.DataFrame(rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(runs: list[Run], mavericks: list[str]):
    """Test accuracy per round: each seed thin, the mean over seeds thick, one panel per Maverick setting."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(mavericks), figsize=(5.5 * len(mavericks), 3.8), squeeze=False)
    for ax, mav in zip(axes[0], mavericks):
        labels = list(dict.fromkeys(r.label for r in runs if r.mavericks == mav))
        for i, label in enumerate(labels):
            curves = [pd.read_csv(r.folder / "metrics.csv")["test_acc"].to_numpy()
                      for r in runs if r.mavericks == mav and r.label == label and not missing(r)]
            if not curves:
                continue
            color = f"C{i}"
            for acc in curves:
                ax.plot(np.arange(1, len(acc) + 1), acc, color=color, lw=0.6, alpha=0.35)
            n = min(map(len, curves))
            ax.plot(np.arange(1, n + 1), np.mean([a[:n] for a in curves], axis=0), color=color, lw=2.2,
                    label=f"{label} (mean of {len(curves)} seeds)")
        ax.set(title=f"mnist5k, 50 clients, {mav}", xlabel="round", ylabel="test accuracy", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_selection(runs: list[Run]):
    """The Maverick's and the median typical client's selection probability per round (one seed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for run in runs:
        if missing(run):
            continue
        df = pd.read_csv(run.folder / "metrics.csv")
        col = next((c for c in df if c.startswith("maverick_") and c.endswith("_prob")), None)
        if col is None:
            continue
        line, = ax.plot(df["round"], df[col], label=f"{run.label}: Maverick")
        ax.plot(df["round"], df["typical_prob"], ls="--", color=line.get_color(), alpha=0.6,
                label=f"{run.label}: typical client (median)")
    where = f", {runs[0].mavericks}, seed {runs[0].seed}" if runs else ""
    ax.set(title=f"selection probability per draw{where}", xlabel="round", ylabel="$P_t$")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
