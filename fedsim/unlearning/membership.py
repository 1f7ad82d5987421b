"""Membership inference on the forget set D_u: does a model still treat those images as training data?

Members are the forgotten train images, non-members the test images of the same classes;
both attacks score each image from its per-sample denoising loss
l(x) = ||eps - eps_theta(x_t, t)||^2 under fixed (t, eps) probes, the same for every model:

- ``loss_threshold``, the notes' attack (unlearning.md, Metrics): score -l(x), averaged over
  LOSS_PROBES draws with t uniform in [0, T). On fedsim's small models it sits at AUC ~0.5
  even before unlearning: how hard an image is to denoise varies far more between images than
  between members and non-members, and uniform t spends most probes where x_t is nearly pure
  noise and the loss says little about the image.
- ``calibrated``, offline LiRA (Carlini et al., S&P 2022) with one reference model per image,
  which is the difficulty calibration of Watson et al. (ICLR 2022): score(x) = mean over
  probes of log l_ref(x) - log l_target(x), with the same (t, eps) for both, so the noise of
  a single probe cancels. Probes sit at small t (1-20 % of T), where the loss depends most on
  the image itself (Carlini et al., USENIX 2023, attack diffusion models there). A reference
  model is the target's architecture trained centrally on one half of the test split, data
  the attacker holds (metrics.real_halves); a test image is scored with the reference trained
  on the other half, a train image with reference i mod 2, so no image is ever in its
  reference's training data. The two references are trained once per dataset and model shape
  (7 min on a busy 2-core machine for MNIST-5k 16x16, 20 epochs each) and cached beside the evaluator.

Both compare each member with the non-members of its class only (roc_summary), and give the
AUC with its DeLong interval (records/stats.py) and the TPR at 1 % FPR.
Written by hand: no library attacks diffusers models, and each attack is a few tensor lines.
Classifiers (``model = "cnn"``) get the loss threshold on cross-entropy only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_curve
from torch import Tensor, nn

from fedsim.config import RunConfig
from fedsim.data.datasets import ImageData
from fedsim.evaluation.evaluator import cache_dir
from fedsim.evaluation.metrics import real_halves
from fedsim.models.networks import build_model, load_pretrained, save_model
from fedsim.models.train import Task, run_task, per_sample_losses, train_local
from fedsim.records.stats import auc_interval
from fedsim.rng import torch_generator

LOSS_PROBES = 4  # the loss-threshold attack's fixed (t, eps) draws, t uniform
REFERENCE_VERSION = 1
NAN = float("nan")
MIA_KEYS = ["mia_auc", "mia_auc_low", "mia_auc_high", "mia_tpr_1fpr", "mia_loss_auc", "forget_loss"]


@dataclass(frozen=True)
class AttackConfig:
    """The calibrated attack's probes and its reference models' training."""

    t_shares: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2)  # probe timesteps as shares of T
    draws: int = 4  # eps draws per probe timestep
    reference_epochs: int = 20  # central Adam epochs over a test half
    reference_lr: float = 2e-3
    reference_batch: int = 16


def roc_summary(members: Tensor | np.ndarray, others: Tensor | np.ndarray, member_class: np.ndarray | None = None,
                other_class: np.ndarray | None = None) -> dict[str, float]:
    """AUC, its DeLong interval and TPR at 1 % FPR of scores where higher means member.

    With classes, members are compared with non-members of their own class only (a forget set
    of mostly one class would otherwise be told apart by how hard its class is to denoise):
    the AUC counts same-class pairs (stats.auc_interval with groups), and the FPR weighs each
    non-member so that the non-members' class mix is the members'."""
    m, o = np.asarray(members, dtype=np.float64), np.asarray(others, dtype=np.float64)
    mc = np.zeros(len(m), dtype=np.int64) if member_class is None else np.asarray(member_class)
    oc = np.zeros(len(o), dtype=np.int64) if other_class is None else np.asarray(other_class)
    keep_m, keep_o = np.isin(mc, oc), np.isin(oc, mc)
    m, mc, o, oc = m[keep_m], mc[keep_m], o[keep_o], oc[keep_o]
    if len(m) == 0 or len(o) == 0:
        return {"auc": NAN, "auc_low": NAN, "auc_high": NAN, "tpr_1fpr": NAN}
    ci = auc_interval(m, o, groups=(mc, oc))
    classes, m_count = np.unique(mc, return_counts=True)
    o_count = np.array([(oc == c).sum() for c in classes])
    weight = (m_count / len(m) / (o_count / len(o)))[np.searchsorted(classes, oc)]
    fpr, tpr, _ = roc_curve(np.r_[np.ones(len(m)), np.zeros(len(o))], np.r_[m, o],
                            sample_weight=np.r_[np.ones(len(m)), weight], drop_intermediate=False)
    return {"auc": ci.mean, "auc_low": ci.low, "auc_high": ci.high, "tpr_1fpr": float(tpr[fpr <= 0.01 + 1e-12].max())}


def loss_threshold_losses(model: nn.Module, task: Task, images: Tensor, labels: Tensor, seed: int,
                          probes: int) -> Tensor:
    """(N,) per-sample loss averaged over ``probes`` fixed draws ("mia-probe", k), t uniform."""
    if len(images) == 0:
        return torch.zeros(0)
    return torch.stack([per_sample_losses(model, task, images, labels,
                                          generator=torch_generator(seed, "mia-probe", k))
                        for k in range(probes)]).mean(0)


def draw_probes(shape: tuple[int, ...], t_values: list[int], draws: int,
                generator: torch.Generator) -> list[tuple[int, Tensor]]:
    """len(t_values) * draws probes (t, eps (N, C, H, W)): every image gets timestep t and its own eps."""
    return [(t, torch.randn(shape, generator=generator)) for t in t_values for _ in range(draws)]


@torch.no_grad()
def probe_losses(model: nn.Module, task: Task, images: Tensor, labels: Tensor, probes: list[tuple[int, Tensor]],
                 batch_size: int = 256) -> Tensor:
    """(P, N) per-sample losses of ``model`` under the P fixed probes."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for t, eps in probes:
        out.append(torch.cat([
            task.loss(model, images[s:s + batch_size].to(device), labels[s:s + batch_size].to(device),
                      generator=None, eps=eps[s:s + batch_size].to(device),
                      t=torch.full((len(eps[s:s + batch_size]),), t, device=device)).cpu()
            for s in range(0, len(images), batch_size)]))
    return torch.stack(out) if out else torch.zeros(0, len(images))


def _reference_dir(cfg: RunConfig, test: ImageData, attack: AttackConfig) -> Path:
    key = [test.name, list(test.shape), len(test.labels), int(test.labels.sum()), float(test.images[:64].sum()),
           cfg.model, cfg.timesteps, cfg.beta_schedule, *([cfg.schedule_stride] if cfg.schedule_stride != 1 else []),
           cfg.conditional, attack.reference_epochs,
           attack.reference_lr, attack.reference_batch, REFERENCE_VERSION]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]
    return cache_dir() / f"mia-reference-{test.name}-{digest}"


def reference_models(cfg: RunConfig, test: ImageData, attack: AttackConfig, device: str) -> list[nn.Module]:
    """The two reference models (trained on test half 0, half 1): loaded from the cache, or
    trained (seeded, one thread's worth of work) and cached."""
    path = _reference_dir(cfg, test, attack)
    if not (path / "half1" / "config.json").is_file():
        task = run_task(cfg)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        for r, half in enumerate(real_halves(test.labels)):
            model = build_model(cfg.model, test.shape, test.num_classes, conditional=cfg.conditional, seed=r)
            idx = torch.from_numpy(half)
            train_local(model, task, test.images[idx], torch.from_numpy(test.labels[half]),
                        epochs=attack.reference_epochs, batch_size=attack.reference_batch,
                        lr=attack.reference_lr, generator=torch_generator(r, "mia-reference"))
            save_model(model, tmp / f"half{r}")
        if path.exists():  # another process cached them meanwhile: keep theirs
            shutil.rmtree(tmp)
        else:
            tmp.replace(path)
    return [load_pretrained(path / f"half{r}").to(device) for r in range(2)]


def reference_of(num_members: int, test_labels: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(num_members + others.sum(),) the reference model of each image, members first: member i
    gets i mod 2, a test image the reference trained on the half it is not in."""
    half_of = np.zeros(len(test_labels), dtype=np.int64)
    half_of[real_halves(test_labels)[1]] = 1
    return np.r_[np.arange(num_members) % 2, 1 - half_of[others]]


def calibrated_scores(model: nn.Module, refs: list[nn.Module], task: Task, images: Tensor, labels: Tensor,
                      ref_of: np.ndarray, probes: list[tuple[int, Tensor]]) -> Tensor:
    """(N,) mean over probes of log l_ref - log l_target; image i uses reference ``ref_of[i]``."""
    target = probe_losses(model, task, images, labels, probes)
    ref = torch.empty_like(target)
    for r, ref_model in enumerate(refs):
        sel = torch.from_numpy(np.flatnonzero(ref_of == r))
        ref[:, sel] = probe_losses(ref_model, task, images[sel], labels[sel], [(t, e[sel]) for t, e in probes])
    return (ref.clamp_min(1e-12).log() - target.clamp_min(1e-12).log()).mean(0)


def membership(cfg: RunConfig, model: nn.Module, forget: tuple[Tensor, Tensor], test: ImageData, *,
               attack: AttackConfig = AttackConfig(), device: str = "cpu") -> dict[str, float]:
    """MIA_KEYS for members = ``forget`` (images, labels) against the test images of their classes.

    mia_auc, mia_auc_low, mia_auc_high, mia_tpr_1fpr: the calibrated attack (diffusion), the loss
    threshold (classifiers); mia_loss_auc: the loss threshold; forget_loss: the members' mean loss
    under the loss threshold's probes."""
    fx, fy = forget
    task = run_task(cfg)
    test_y = torch.tensor(test.labels)
    others = torch.isin(test_y, fy.unique())
    ox, oy = test.images[others], test_y[others]
    draws = LOSS_PROBES if cfg.is_diffusion else 1
    member_loss = loss_threshold_losses(model, task, fx, fy, cfg.seed, draws)
    other_loss = loss_threshold_losses(model, task, ox, oy, cfg.seed, draws)
    plain = roc_summary(-member_loss, -other_loss, fy.numpy(), oy.numpy())
    out = {"mia_loss_auc": plain["auc"], "forget_loss": float(member_loss.mean()) if len(fx) else NAN}
    if not cfg.is_diffusion or len(fx) == 0 or len(ox) == 0:
        return {**{f"mia_{k}": v for k, v in plain.items()}, **out}
    ref_of = reference_of(len(fx), np.asarray(test.labels), others.numpy())
    t_values = sorted({min(cfg.timesteps - 1, max(1, round(s * cfg.timesteps))) for s in attack.t_shares})
    images = torch.cat([fx, ox])
    probes = draw_probes(images.shape, t_values, attack.draws, torch_generator(cfg.seed, "mia-lira"))
    scores = calibrated_scores(model, reference_models(cfg, test, attack, device), task, images,
                               torch.cat([fy, oy]), ref_of, probes)
    lira = roc_summary(scores[:len(fx)], scores[len(fx):], fy.numpy(), oy.numpy())
    return {**{f"mia_{k}": v for k, v in lira.items()}, **out}
