"""The unlearning report: one scoring of a model against an unlearning request.

The original model ("before"), the unlearned ones and FedRetrain are scored the
same way, from fixed sampling noise and fixed loss probes derived from the run
seed, so their rows compare in one table. The metrics follow the notes'
Metrics section (/work/shared/papers/unlearning.md) and the generated-image
protocol of ../shared/papers/evaluation.md (section 4), scaled to fedsim: the
evaluator classifier with its reject option (fedsim/evaluation/evaluator.py)
replaces the ResNet-34, FD and KID in its feature space replace FID
(generated.py), and the membership inference is a calibrated attack beside the
notes' loss threshold (membership.py). The report says first whether the attack
finds membership on the original model at all; if not, it cannot measure forgetting.

Classifier models (``model = "cnn"``) have no samples: ``forget_rate`` is their
accuracy on the forget set, the sample scores are NaN, the losses are
cross-entropy; a run with backdoor-clients adds ``backdoor_acc`` and ``clean_acc``
(fedsim/evaluation/backdoor.py, Halimi et al.'s evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from fedsim.config import RunConfig, parse_ids
from fedsim.data.clients import dataset, split_request
from fedsim.evaluation.backdoor import backdoor_scores
from fedsim.evaluation.evaluator import get_evaluator
from fedsim.evaluation.server import save_grid
from fedsim.models.train import accuracy, run_task, per_sample_losses
from fedsim.models.workspace import fresh_model, pick_device
from fedsim.records.stats import t_interval
from fedsim.rng import torch_generator
from fedsim.unlearning.generated import (CLASS_KEYS, GRID_PER_CLASS, QUALITY_KEYS, class_scores, generate,
                                         grid_order, quality_scores)
from fedsim.unlearning.membership import MIA_KEYS, AttackConfig, membership

NAN = float("nan")
NUM_SAMPLES = 2000  # generated samples scored per model (evaluation.md, section 4)
SCORE_VERSION = 2  # bump when a score changes meaning: cached scores of older versions are not reused

SCORE_KEYS = [*CLASS_KEYS, *QUALITY_KEYS, "eval_loss_remaining", *MIA_KEYS, "test_acc_evaluator"]
COST_KEYS = ["wall_s", "rounds", "bytes"]
RATIOS = {"wall_vs_retrain": "wall_s", "bytes_vs_retrain": "bytes", "fd_vs_retrain": "fd_remaining",
          "kid_vs_retrain": "kid_remaining"}
INTERVALS = ["forget_rate", "forget_rate_cond", "mia_auc"]  # shown as "value [low, high]" in report.md


@dataclass(frozen=True)
class Request:
    """What is to be forgotten: whole partitions and/or one class on every client."""

    clients: frozenset[int]  # partition ids asked to be forgotten
    forget_class: int  # -1: none

    @classmethod
    def of(cls, cfg: RunConfig) -> Request:
        """The request a config's ``forget-clients`` / ``forget-class`` keys make."""
        return cls(frozenset(parse_ids(cfg.forget_clients, "forget-clients") or ()), cfg.forget_class)

    def describe(self) -> str:
        """"class 0", "client 19", "clients 3 7", "client 19 and class 0" or "nothing"."""
        parts = []
        if self.clients:
            ids = " ".join(map(str, sorted(self.clients)))
            parts.append(f"client{'s' if len(self.clients) > 1 else ''} {ids}")
        if self.forget_class >= 0:
            parts.append(f"class {self.forget_class}")
        return " and ".join(parts) or "nothing"


def _with_request(cfg: RunConfig, request: Request) -> RunConfig:
    return cfg.replace(forget_clients=" ".join(map(str, sorted(request.clients))),
                       forget_class=request.forget_class)


def forget_set(cfg: RunConfig, request: Request) -> tuple[Tensor, Tensor]:
    """(images, labels) of the train data the request removes (D_u), from the original partition."""
    train = dataset(cfg, "train")
    idx = np.concatenate(split_request(_with_request(cfg, request), train.labels)[1])
    return train.images[torch.from_numpy(idx)], torch.from_numpy(train.labels[idx])


def target_class(cfg: RunConfig, request: Request) -> int:
    """The class whose generation is measured: the requested class, or for a client request the
    majority class of the forgotten data when it is at least half of it (a Maverick), else -1."""
    if request.forget_class >= 0:
        return request.forget_class
    labels = forget_set(cfg, request)[1].numpy()
    if labels.size == 0:
        return -1
    counts = np.bincount(labels)
    top = int(counts.argmax())
    return top if counts[top] >= 0.5 * labels.size else -1


def score(cfg: RunConfig, state_dict: dict, request: Request, *, num_samples: int = NUM_SAMPLES,
          grid_path: Path | None = None, attack: AttackConfig = AttackConfig()) -> dict[str, float]:
    """SCORE_KEYS of a model of the run ``cfg`` (the original partition, no forget keys) against ``request``.

    Samples (generated.py): forget_rate(_cond) with Wilson intervals over the recognised samples,
    unrecognised(_cond), forget_prob, forget_entropy; fd/kid/precision/recall on the remaining
    classes with their floors. The class is the request's (target_class); conditional models
    cycle labels over all classes, so forget_rate "before" is about 1/K.
    eval_loss_remaining: mean denoising loss on the remaining classes' test images (fixed "eval-probe").
    Membership (membership.py): mia_auc with its DeLong interval and mia_tpr_1fpr of the
    calibrated attack, mia_loss_auc of the loss threshold, forget_loss (NLL proxy on D_u).
    test_acc_evaluator: the evaluator classifier's test accuracy (context for forget_rate).
    """
    cfg = cfg.replace(forget_clients="", forget_class=-1)
    test = dataset(cfg, "test")
    device = pick_device(cfg.device)
    model = fresh_model(cfg.replace(pretrained=""), test)
    model.load_state_dict(state_dict)
    model.to(device)
    task = run_task(cfg)
    fx, fy = forget_set(cfg, request)
    target = target_class(cfg, request)
    test_y = torch.tensor(test.labels)
    remaining = test_y != target
    out = dict.fromkeys(SCORE_KEYS, NAN)
    out.update(membership(cfg, model, (fx, fy), test, attack=attack, device=device))
    out["eval_loss_remaining"] = float(per_sample_losses(
        model, task, test.images[remaining], test_y[remaining],
        generator=torch_generator(cfg.seed, "eval-probe")).mean())
    if not cfg.is_diffusion:
        out.update(forget_rate=accuracy(model, fx, fy) if len(fx) else NAN)
        return {**{key: out[key] for key in SCORE_KEYS}, **backdoor_scores(cfg, model, test.images, test_y)}
    out.update(_sample_scores(cfg, model, test, target, num_samples, device, grid_path))
    return {key: out[key] for key in SCORE_KEYS}


def _sample_scores(cfg: RunConfig, model, test, target: int, num_samples: int, device: str,
                   grid_path: Path | None) -> dict[str, float]:
    """CLASS_KEYS, QUALITY_KEYS and test_acc_evaluator of ``num_samples`` generated samples."""
    k = test.num_classes
    images, labels = generate(model, cfg, num_samples, test.shape, k, device)
    ev = get_evaluator(dataset(cfg, "train"), test)
    pred, feats, prob = ev.predict_full(images)
    cond = labels.numpy() if labels is not None else None
    kept = cond != target if cond is not None else np.ones(len(images), dtype=bool)
    if grid_path is not None:
        save_grid(images[grid_order(labels, len(images), k)], Path(grid_path), ncol=GRID_PER_CLASS)
    return {**class_scores(pred, prob, cond, target), **quality_scores(ev, feats[kept], test, target, seed=cfg.seed),
            "test_acc_evaluator": ev.test_accuracy}


def cost(run_dir: Path) -> dict[str, float]:
    """Cost of a run from RUN/metrics.csv (notes: wall time, rounds, bytes up + down)."""
    path = Path(run_dir) / "metrics.csv"
    try:
        df = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        df = pd.DataFrame()
    if df.empty:
        raise ValueError(f"no cost: {path} is missing or has no rounds")
    last = df.iloc[-1]
    return {"wall_s": float(df["wall_s"].sum()), "rounds": float(len(df)),
            "bytes": float(last["bytes_up_total"] + last["bytes_down_total"])}


def _fmt(value) -> str:
    if isinstance(value, str):
        return value
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def markdown_table(df: pd.DataFrame, columns: list[str]) -> str:
    """A markdown table, numbers to 3 significant digits, NaN as a dash (no tabulate dependency)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row[c]) for c in columns) + " |" for _, row in df.iterrows()]
    return "\n".join(lines) + "\n"


def with_intervals(df: pd.DataFrame) -> pd.DataFrame:
    """A copy for display: each INTERVALS column as "value [low, high]", its _low/_high columns dropped."""
    out = df.copy()
    for col in INTERVALS:
        low, high = f"{col}_low", f"{col}_high"
        if {col, low, high} <= set(out.columns):
            out[col] = [_fmt(v) if math.isnan(lo) else f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"
                        for v, lo, hi in zip(out[col], out[low].astype(float), out[high].astype(float))]
            out = out.drop(columns=[low, high])
    return out


def mia_verdict(df: pd.DataFrame) -> str:
    """The report's first reading of the membership attack, on the original model: it can
    measure forgetting only if its AUC interval there lies above 0.5 ("" without that row)."""
    rows = df[df["model"] == "original"]
    keys = ["mia_auc", "mia_auc_low", "mia_auc_high", "mia_tpr_1fpr"]
    if rows.empty or not set(keys) <= set(df.columns) or rows[keys].isna().any(axis=None):
        return ""
    auc, low, high, tpr = (float(rows[k].iloc[0]) for k in keys)
    seen = f"Membership attack on the original model: AUC {auc:.3f} [{low:.3f}, {high:.3f}], TPR at 1 % FPR {tpr:.3f}"
    if low > 0.5:
        return seen + (": the forget set is detectably training data; forgetting should bring mia_auc toward "
                       "retrain's.\n\n")
    return (seen + ": the interval does not exclude 0.5, so the original leaks no detectable membership and the MIA "
            "cannot measure forgetting here (read the mia_* columns as uninformative).\n\n")


def across_seeds(df: pd.DataFrame, columns: list[str], by: tuple[str, ...] = ("request", "model")) -> pd.DataFrame:
    """One row per ``by`` group of per-seed report rows: each column's mean and 95 % t-interval
    over the seeds (column, column_low, column_high; stats.t_interval, NaNs dropped) and n seeds."""
    out = []
    for key, group in df.groupby(list(by), sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)), n=group["seed"].nunique())
        for col in columns:
            ci = t_interval(group[col].astype(float).tolist())
            row.update({col: ci.mean, f"{col}_low": ci.low, f"{col}_high": ci.high})
        out.append(row)
    return pd.DataFrame(out)


def write_report(out_dir: Path, rows: list[dict], request: Request, *, seed: int | None = None) -> None:
    """report.csv, report.md and (given grid_<model>.png files) grids.png in ``out_dir``; ``seed``
    (the original run's) becomes a column, so reports of several seeds concatenate for across_seeds."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows).assign(request=request.describe(), seed=seed)
    columns = ["model", "request", "seed", *SCORE_KEYS[:-1], *COST_KEYS]
    retrain = df[df["model"] == "retrain"]
    if len(retrain):
        for name, col in RATIOS.items():
            df[name] = df[col] / retrain[col].iloc[0] if col in df else NAN
        columns += list(RATIOS)
    for col in columns:
        if col not in df:
            df[col] = NAN
    df = df[columns + [c for c in df.columns if c not in columns]]
    df.to_csv(out_dir / "report.csv", index=False)

    shown = with_intervals(df)
    text = (f"Unlearning request: forget {request.describe()}.\n\n" + mia_verdict(df)
            + markdown_table(shown, [c for c in shown.columns if c not in ("request", "seed")]))
    (out_dir / "report.md").write_text(text)

    grids = [(row["model"], row["forget_rate"], out_dir / f"grid_{row['model']}.png") for _, row in df.iterrows()]
    grids = [g for g in grids if g[2].is_file()]
    if grids:
        _side_by_side(grids, out_dir / "grids.png")


def _side_by_side(grids: list[tuple[str, float, Path]], path: Path) -> None:
    """One panel per model, titled with its forget_rate. Figure (not pyplot): Agg, no global state."""
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    fig = Figure(figsize=(3.2 * len(grids), 3.6))
    for ax, (model, rate, png) in zip(fig.subplots(1, len(grids), squeeze=False)[0], grids):
        ax.imshow(imread(png), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{model}\nforget_rate {_fmt(rate)}")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
