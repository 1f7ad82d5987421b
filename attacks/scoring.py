"""Score one reconstruction against its targets: one assignment for every per-sample metric.

With attacks/metrics.py the only code that sees the truth (STYLE rule 6). ``Targets`` are what
the attack should recover: a fresh exchange's batch; for a recorded run, the samples the client
used (its secrets file, fedsim/records/secrets.py), or, for an older run without one, its whole
partition. Reconstructions are paired with targets by one Hungarian assignment on per-pair MSE
(`metrics.assign`), and the same pairs index every per-sample metric: PSNR, SSIM, MSE, the
labels, the recovered timesteps t and noise eps. With more targets than reconstructions (a
partition, or an attack told a smaller batch) each reconstruction gets its best target, which
flatters (a grey image scored 11.0 dB against its real target, 17.1 dB against the best of 10
images): the row's ``truth`` says "(best match)". The trivial baselines (attacks/baselines.py)
are scored by the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attacks.metrics import assign, score, to_unit
from attacks.threat_model import Secrets


@dataclass(frozen=True)
class Targets:
    images: torch.Tensor  # (N, C, H, W) in the victim's value range
    secrets: Secrets  # per target: labels (N,), t (N,) and eps (N, C, H, W) where known ((E, N, ...) per epoch)
    kind: str = "batch"  # "batch" | "samples used" (local training) | "partition" (no secrets file)

    def truth(self, num_recon: int) -> str:
        """The results' ``truth`` column: what was scored against, and whether targets were picked."""
        return self.kind if num_recon == self.images.shape[0] else f"{self.kind} (best match)"


def noise_metrics(extras: dict[str, Any], secrets: Secrets, recon_idx: torch.Tensor,
                  truth_idx: torch.Tensor) -> dict:
    """t accuracy, mean |t^ - t| and mean cos(e^, eps) over the pairs (recon_idx[k], truth_idx[k]);
    None where the attack recovered nothing or the truth is not one value per target
    (e.g. several local epochs: (E, N))."""
    out = {"t_acc": None, "t_abs_err": None, "eps_cos": None}
    t_hat, e_hat = extras.get("t"), extras.get("eps")
    if t_hat is not None and secrets.t is not None and t_hat.dim() == 1 and secrets.t.dim() == 1:
        t_hat, t = t_hat.detach().cpu()[recon_idx], secrets.t.cpu()[truth_idx]
        out["t_acc"] = float((t_hat == t).float().mean())
        out["t_abs_err"] = float((t_hat - t).abs().float().mean())
    if (e_hat is not None and secrets.eps is not None and e_hat.dim() == secrets.eps.dim()
            and e_hat.shape[1:] == secrets.eps.shape[1:]):
        e_hat, eps = e_hat.detach().cpu()[recon_idx], secrets.eps.cpu()[truth_idx]
        out["eps_cos"] = float(torch.nn.functional.cosine_similarity(
            e_hat.flatten(1).double(), eps.flatten(1).double(), dim=1).mean())
    return out


def score_against(images: torch.Tensor, targets: Targets, *, value_range: tuple[float, float],
                  labels: torch.Tensor | None = None, extras: dict[str, Any] | None = None,
                  lpips_net: torch.nn.Module | None = None) -> dict:
    """metrics.score of images (B, C, H, W) against targets after one assignment, plus noise_metrics,
    ``truth`` and ``pairs`` = (truth_idx, recon_idx). Label accuracy needs both recovered
    ``labels`` (B,) and the targets' labels; it compares multisets, so the pairing does not move it."""
    truth_idx, recon_idx = assign(to_unit(images, value_range), to_unit(targets.images, value_range))
    true_labels = targets.secrets.labels
    s = score(images[recon_idx], targets.images[truth_idx], value_range=value_range, matched=True, lpips_net=lpips_net,
              recon_labels=labels.cpu()[recon_idx] if labels is not None and true_labels is not None else None,
              true_labels=true_labels[truth_idx] if labels is not None and true_labels is not None else None)
    s.update(noise_metrics(extras or {}, targets.secrets, recon_idx, truth_idx))
    s["truth"] = targets.truth(images.shape[0])
    s["pairs"] = (truth_idx, recon_idx)
    return s
