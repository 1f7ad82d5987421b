"""The unlearning report: one scoring of a model against an unlearning request.

The original model ("before"), the unlearned ones and FedRetrain are scored the
same way, from fixed sampling noise and fixed loss probes derived from the run
seed, so their rows compare in one table. The metrics follow the notes'
Metrics section (/work/shared/papers/unlearning.md), scaled to fedsim: the
evaluator classifier (fedsim/evaluation/evaluator.py) replaces the ResNet-34 and its
Frechet distance replaces FID; the membership inference is the loss-threshold
attack on the per-sample denoising loss averaged over fixed (t, eps) probes.

Classifier models (``model = "cnn"``) have no samples: ``forget_rate`` is their
accuracy on the forget set, ``fd_remaining`` is NaN, the losses are
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
from sklearn.metrics import roc_auc_score, roc_curve
from torch import Tensor

from fedsim.config import RunConfig, parse_ids
from fedsim.data.clients import dataset, split_request
from fedsim.evaluation.backdoor import backdoor_scores
from fedsim.evaluation.evaluator import get_evaluator
from fedsim.evaluation.metrics import frechet_distance
from fedsim.evaluation.server import save_grid
from fedsim.models.diffusion import sample
from fedsim.models.train import accuracy, make_task, per_sample_losses
from fedsim.models.workspace import fresh_model, pick_device
from fedsim.rng import torch_generator

MIA_PROBES = 4  # fixed (t, eps) draws the membership losses are averaged over
SAMPLE_BATCH = 256  # samples denoised at once
GRID_PER_CLASS = 8  # conditional grids: one row of this many samples per class
NAN = float("nan")

SCORE_KEYS = ["forget_rate", "forget_rate_cond", "unrecognised", "fd_remaining", "eval_loss_remaining", "forget_loss",
              "mia_auc", "mia_tpr_1fpr", "test_acc_evaluator"]
COST_KEYS = ["wall_s", "rounds", "bytes"]
RATIOS = {"wall_vs_retrain": "wall_s", "bytes_vs_retrain": "bytes", "fd_vs_retrain": "fd_remaining"}


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


def _mia(member_loss: Tensor, other_loss: Tensor) -> tuple[float, float]:
    """Loss-threshold membership inference (notes, Metrics): AUC and TPR at 1 % FPR, score = -loss."""
    if len(member_loss) == 0 or len(other_loss) == 0:
        return NAN, NAN
    y = np.r_[np.ones(len(member_loss)), np.zeros(len(other_loss))]
    s = -np.r_[member_loss.numpy(), other_loss.numpy()]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(roc_auc_score(y, s)), float(tpr[fpr <= 0.01].max())


def _mean_loss(model, task, images: Tensor, labels: Tensor, seed: int, probes: int) -> Tensor:
    """(N,) per-sample loss averaged over ``probes`` fixed (t, eps) draws ("mia-probe", k)."""
    if len(images) == 0:
        return torch.zeros(0)
    return torch.stack([per_sample_losses(model, task, images, labels,
                                          generator=torch_generator(seed, "mia-probe", k))
                        for k in range(probes)]).mean(0)


def _generate(model, cfg: RunConfig, n: int, shape, num_classes: int, device: str) -> tuple[Tensor, Tensor | None]:
    """n samples from fixed noise ("unlearn-sample"), batched; labels cycle over classes if conditional."""
    labels = torch.arange(n) % num_classes if cfg.conditional else None
    task = make_task(cfg.model, cfg.timesteps, cfg.beta_schedule)
    gen = torch_generator(cfg.seed, "unlearn-sample")
    out = [sample(model, task.schedule, min(SAMPLE_BATCH, n - s), shape, generator=gen, sampler=cfg.sampler,
                  steps=cfg.sample_steps, labels=None if labels is None else labels[s:s + SAMPLE_BATCH],
                  device=device).cpu() for s in range(0, n, SAMPLE_BATCH)]
    return torch.cat(out), labels


def _grid_order(labels: Tensor | None, n: int, num_classes: int) -> Tensor:
    """Indices of the grid's samples: the first 64, or for conditional models the first
    GRID_PER_CLASS samples of each class, one row per class in class order."""
    if labels is None:
        return torch.arange(min(64, n))
    per = min(GRID_PER_CLASS, n // num_classes)
    return torch.cat([torch.nonzero(labels == c).flatten()[:per] for c in range(num_classes)])


def score(cfg: RunConfig, state_dict: dict, request: Request, *, num_samples: int = 500,
          grid_path: Path | None = None) -> dict[str, float]:
    """Score a model of the run ``cfg`` (the original partition, no forget keys) against ``request``.

    forget_rate: share of generated samples the evaluator recognises as the target class
        (notes: classifier forget rate; conditional models cycle labels, so "before" is about 1/K);
        unrecognised samples count for no class.
    forget_rate_cond: share of the samples conditioned on the target class recognised as it (1 - UA).
    unrecognised: share of generated samples the evaluator does not recognise as any class (a
        model that turns the forgotten class into mush has a low forget_rate and a high unrecognised).
    fd_remaining: evaluator-feature Frechet distance to the remaining classes' test images (FID on D_r).
    eval_loss_remaining: mean denoising loss on the remaining classes' test images (fixed "eval-probe").
    forget_loss: mean loss on the forget set over MIA_PROBES fixed probes (NLL proxy on D_u).
    mia_auc, mia_tpr_1fpr: loss-threshold MIA, forget set against test images of its classes.
    test_acc_evaluator: the evaluator classifier's test accuracy (context for forget_rate).
    """
    cfg = cfg.replace(forget_clients="", forget_class=-1)
    test = dataset(cfg, "test")
    device = pick_device(cfg.device)
    model = fresh_model(cfg.replace(pretrained=""), test)
    model.load_state_dict(state_dict)
    model.to(device)
    task = make_task(cfg.model, cfg.timesteps, cfg.beta_schedule)
    k = test.num_classes
    fx, fy = forget_set(cfg, request)
    target = target_class(cfg, request)
    test_y = torch.tensor(test.labels)
    remaining = test_y != target
    others = torch.isin(test_y, fy.unique())
    probes = MIA_PROBES if cfg.is_diffusion else 1
    member_loss = _mean_loss(model, task, fx, fy, cfg.seed, probes)
    other_loss = _mean_loss(model, task, test.images[others], test_y[others], cfg.seed, probes)
    auc, tpr = _mia(member_loss, other_loss)
    out = {"forget_loss": float(member_loss.mean()) if len(member_loss) else NAN, "mia_auc": auc,
           "mia_tpr_1fpr": tpr,
           "eval_loss_remaining": float(per_sample_losses(
               model, task, test.images[remaining], test_y[remaining],
               generator=torch_generator(cfg.seed, "eval-probe")).mean())}
    if not cfg.is_diffusion:
        out.update(forget_rate=accuracy(model, fx, fy) if len(fx) else NAN, forget_rate_cond=NAN, unrecognised=NAN,
                   fd_remaining=NAN, test_acc_evaluator=NAN)
        return {**{key: out[key] for key in SCORE_KEYS}, **backdoor_scores(cfg, model, test.images, test_y)}

    images, labels = _generate(model, cfg, num_samples, test.shape, k, device)
    ev = get_evaluator(dataset(cfg, "train"), test)
    pred = torch.from_numpy(ev.predict(images))  # -1: not recognised, counts for no class
    kept = labels != target if labels is not None else torch.ones(len(images), dtype=torch.bool)
    on_target = labels == target if labels is not None else torch.zeros(len(images), dtype=torch.bool)
    out.update(
        forget_rate=float((pred == target).float().mean()) if target >= 0 else NAN,
        forget_rate_cond=float((pred[on_target] == target).float().mean()) if on_target.any() else NAN,
        unrecognised=float((pred < 0).float().mean()),
        fd_remaining=frechet_distance(ev.features(images[kept]), ev.features(test.images[remaining])),
        test_acc_evaluator=ev.test_accuracy)
    if grid_path is not None:
        order = _grid_order(labels, len(images), k)
        save_grid(images[order], Path(grid_path), ncol=GRID_PER_CLASS)
    return {key: out[key] for key in SCORE_KEYS}


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


def write_report(out_dir: Path, rows: list[dict], request: Request) -> None:
    """report.csv, report.md and (given grid_<model>.png files) grids.png in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows).assign(request=request.describe())
    columns = ["model", "request", *SCORE_KEYS[:-1], *COST_KEYS]
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

    shown = [c for c in df.columns if c != "request"]
    text = f"Unlearning request: forget {request.describe()}.\n\n" + markdown_table(df, shown)
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
