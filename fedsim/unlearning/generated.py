"""A model's generated samples against a class request: how much of the class is left, and the quality of the rest.

Samples come from fixed noise ("unlearn-sample" of the run seed), so every model of one
report is judged on the same draws. The evaluator (evaluation/evaluator.py) names each
sample's class or rejects it; as ../shared/papers/evaluation.md (section 1) asks, class
shares count recognised samples only and the unrecognised share is reported on its own (a
model that turns the class into mush has a low forget rate and a high unrecognised share).
Within one run a share gets its Wilson interval (records/stats.py); across seeds the
runner averages the per-seed rates. Quality on the remaining classes is metrics.scores:
FD, KID and precision/recall in the evaluator's feature space, each beside its real-vs-real
floor at the same N.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from fedsim.config import RunConfig
from fedsim.data.datasets import ImageData
from fedsim.evaluation.evaluator import Evaluator
from fedsim.evaluation.metrics import real_halves, scores
from fedsim.models.diffusion import sample
from fedsim.models.train import run_task
from fedsim.records.stats import wilson
from fedsim.rng import torch_generator

SAMPLE_BATCH = 256  # samples denoised at once
GRID_PER_CLASS = 8  # conditional grids: one row of this many samples per class
NAN = float("nan")
CLASS_KEYS = ["forget_rate", "forget_rate_low", "forget_rate_high", "recognised_n", "forget_rate_cond",
              "forget_rate_cond_low", "forget_rate_cond_high", "recognised_cond_n", "unrecognised",
              "unrecognised_cond", "forget_prob", "forget_entropy"]
QUALITY_KEYS = ["fd_remaining", "fd_floor", "kid_remaining", "kid_std", "kid_floor", "precision", "precision_floor",
                "recall", "recall_floor"]


def generate(model: nn.Module, cfg: RunConfig, n: int, shape, num_classes: int,
             device: str) -> tuple[Tensor, Tensor | None]:
    """n samples from fixed noise ("unlearn-sample"), batched; labels cycle over classes if conditional."""
    labels = torch.arange(n) % num_classes if cfg.conditional else None
    task = run_task(cfg)
    gen = torch_generator(cfg.seed, "unlearn-sample")
    out = [sample(model, task.schedule, min(SAMPLE_BATCH, n - s), shape, generator=gen, sampler=cfg.sampler,
                  steps=cfg.sample_steps, labels=None if labels is None else labels[s:s + SAMPLE_BATCH],
                  device=device).cpu() for s in range(0, n, SAMPLE_BATCH)]
    return torch.cat(out), labels


def grid_order(labels: Tensor | None, n: int, num_classes: int) -> Tensor:
    """Indices of the grid's samples: the first 64, or for conditional models the first
    GRID_PER_CLASS samples of each class, one row per class in class order."""
    if labels is None:
        return torch.arange(min(64, n))
    per = min(GRID_PER_CLASS, n // num_classes)
    return torch.cat([torch.nonzero(labels == c).flatten()[:per] for c in range(num_classes)])


def _share(hits: np.ndarray, prefix: str) -> dict[str, float]:
    """{prefix: share of True, prefix_low/_high: its Wilson interval} (NaN for no samples)."""
    ci = wilson(int(hits.sum()), len(hits))
    return {prefix: ci.mean, f"{prefix}_low": ci.low, f"{prefix}_high": ci.high}


def class_scores(pred: np.ndarray, prob: np.ndarray, cond: np.ndarray | None, target: int) -> dict[str, float]:
    """CLASS_KEYS from the evaluator's verdicts on the samples.

    pred: (N,) recognised class or -1; prob: (N, K) softmax over the K classes; cond: (N,) the
    class each sample was conditioned on (None: unconditional model); target: the class asked
    to be forgotten (-1: none, its keys are NaN).

    forget_rate: share of the recognised samples recognised as ``target`` (recognised_n of them);
    forget_rate_cond: the same among the samples conditioned on ``target`` (recognised_cond_n);
    each with its Wilson interval (_low, _high). unrecognised: share of all samples not recognised;
    unrecognised_cond: of those conditioned on ``target``. forget_prob, forget_entropy: mean
    p(target | x) and mean entropy (nats, at most ln K) of the softmax over the samples conditioned
    on ``target``, or over all samples for an unconditional model (the threshold-free
    counterpart of forget_rate)."""
    out = dict.fromkeys(CLASS_KEYS, NAN)
    ok = pred >= 0
    out["unrecognised"] = float((~ok).mean()) if len(pred) else NAN
    out["recognised_n"] = float(ok.sum())
    if target < 0:
        return out
    on = cond == target if cond is not None else np.ones(len(pred), dtype=bool)
    out.update(_share(pred[ok] == target, "forget_rate"))
    if cond is not None:
        out.update(_share(pred[on & ok] == target, "forget_rate_cond"))
        out["recognised_cond_n"] = float((on & ok).sum())
        out["unrecognised_cond"] = float((~ok[on]).mean()) if on.any() else NAN
    if on.any():
        p = prob[on]
        out["forget_prob"] = float(p[:, target].mean())
        out["forget_entropy"] = float(-(p * np.log(np.clip(p, 1e-12, None))).sum(1).mean())
    return out


def quality_scores(ev: Evaluator, feats: np.ndarray, test: ImageData, target: int, *, seed: int) -> dict[str, float]:
    """QUALITY_KEYS of generated features (N, D) against the test images of the classes other
    than ``target`` (all classes if -1): one class-balanced half is the reference, the other
    the floor (metrics.real_halves), at N = min(len(feats), half)."""
    keep = np.flatnonzero(np.asarray(test.labels) != target)
    floor, reference = real_halves(np.asarray(test.labels)[keep])
    real = ev.features(test.images[torch.from_numpy(keep)])
    s = scores(feats, real[floor], real[reference], seed=seed)
    return {"fd_remaining": s["fd"], "fd_floor": s["fd_floor"], "kid_remaining": s["kid"], "kid_std": s["kid_std"],
            "kid_floor": s["kid_floor"], "precision": s["precision"], "precision_floor": s["precision_floor"],
            "recall": s["recall"], "recall_floor": s["recall_floor"]}
