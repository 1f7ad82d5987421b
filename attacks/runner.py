"""``fedsim attack``: set up (or load) an observation, run the attack, score it, write the results.

Fresh exchange (default): ``trials`` times, pick ``batch-size`` test-split images (seeded),
build the victim, let attacks/exchange.py compute the client's reply, apply the defense,
filter it through the threat model, attack, score.
Recorded observation (``--from-run DIR --client K --round R``): the observation a real
``fedsim run`` stored (record-clients / record-rounds); the victim is rebuilt from the run's
config.toml and the truth is the client's partition, each reconstruction matched to its best
distinct true image.

Writes to the output folder: config.toml, results.csv (one row per trial, appended as each
finishes, so an interrupted run keeps its rows) and grid_<attack>.png (originals above
reconstructions).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attacks import build_attack
from attacks.base import Reconstruction, Victim
from attacks.config import AttackRunConfig
from attacks.defenses import compressed, dp_accounting, local_dp
from attacks.exchange import client_exchange
from attacks.metrics import best_truth, match, score, to_unit
from attacks.prior import prior_path
from attacks.threat_model import Secrets, expose
from attacks.victims import build_victim
from fedsim.config import ConfigError, resolve
from fedsim.data.clients import client_partition, dataset
from fedsim.data.datasets import load_dataset
from fedsim.models.train import make_task
from fedsim.models.workspace import fresh_model
from fedsim.records.observations import Observation, folder_of, load
from fedsim.rng import derive

COLUMNS = ["attack", "model", "dataset", "batch_size", "local_steps", "defense", "trial", "psnr", "psnr_sd",
           "ssim", "ssim_sd", "mse", "label_acc", "t_acc", "t_abs_err", "eps_cos", "lpips", "wall_s",
           "iterations", "source", "threat", "dp_noise_multiplier", "dp_sigma", "dp_epsilon_spent"]


@dataclass
class Trial:
    victim: Victim
    obs: Observation
    secrets: Secrets
    truth: torch.Tensor  # (N, C, H, W) the client's images (>= batch for a recorded run)


def _fresh(cfg: AttackRunConfig, trial: int) -> Trial:
    data = load_dataset(cfg.dataset, "test", cfg.dataset_path or None)
    if cfg.batch_size > len(data):
        raise ConfigError(f"batch-size {cfg.batch_size} > {len(data)} test images of '{cfg.dataset}'")
    idx = np.sort(derive(cfg.seed, "attack-data", trial).choice(len(data), cfg.batch_size, replace=False))
    images, labels = data.images[idx], torch.as_tensor(data.labels[idx].copy())
    model = build_victim(cfg.model, data.shape, data.num_classes, seed=cfg.seed + trial, init=cfg.init)
    task = make_task(cfg.model, cfg.timesteps, cfg.beta_schedule)
    g = torch.Generator().manual_seed(int(derive(cfg.seed, "attack-client", trial).integers(2**62)))
    obs, secrets = client_exchange(model, task, images, labels, mode="fedsgd" if cfg.local_steps == 1 else "fedavg",
                                   lr=cfg.lr, local_steps=cfg.local_steps, t_mode=cfg.t_mode, generator=g)
    return Trial(Victim(model, task, data.shape, data.num_classes), obs, secrets, images)


def _recorded(cfg: AttackRunConfig, run: Path, client: int, server_round: int) -> Trial:
    config = run / "config.toml"
    if not config.is_file():
        raise ConfigError(f"--from-run {run}: no config.toml (is it a fedsim run folder?)")
    rc = resolve(config, [])
    path = folder_of(run, server_round, client)
    if not (path / "meta.json").is_file():
        have = sorted(p.relative_to(run).as_posix() for p in run.glob("observations/round_*/client_*"))
        raise ConfigError(f"no observation for client {client} in round {server_round} under {run}; recorded: "
                          + (", ".join(have[:8]) + (" ..." if len(have) > 8 else "") if have else
                             "none (run with record-clients / record-rounds)"))
    obs = load(path)
    if obs.payload == "mask":
        raise ConfigError(f"{path} is SalUn's saliency mask (bits, no update): nothing to reconstruct from")
    train = dataset(rc, "train")
    part = client_partition(rc, train.labels)[client]
    model = fresh_model(rc, train)
    task = make_task(rc.model, rc.timesteps, rc.beta_schedule)
    labels = torch.as_tensor(train.labels[part].copy())
    return Trial(Victim(model, task, train.shape, train.num_classes), obs, Secrets(labels=labels),
                 train.images[part])


def _noise_metrics(rec: Reconstruction, secrets: Secrets) -> dict:
    out = {"t_acc": None, "t_abs_err": None, "eps_cos": None}
    t_hat, e_hat = rec.extras.get("t"), rec.extras.get("eps")
    if t_hat is not None and secrets.t is not None and secrets.t.shape == t_hat.shape:
        out["t_acc"] = float((t_hat == secrets.t).float().mean())
        out["t_abs_err"] = float((t_hat - secrets.t).abs().float().mean())
    if e_hat is not None and secrets.eps is not None and secrets.eps.shape == e_hat.shape:
        out["eps_cos"] = float(torch.nn.functional.cosine_similarity(
            e_hat.flatten(1).double(), secrets.eps.flatten(1).double(), dim=1).mean())
    return out


def save_grid(truth: torch.Tensor, recon: torch.Tensor, path: Path, title: str,
              value_range: tuple[float, float] = (-1.0, 1.0)) -> None:
    """Originals (top row) above their matched reconstructions (bottom row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = truth.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n + 0.6, 3.0), squeeze=False)
    for row, images in enumerate((to_unit(truth, value_range), to_unit(recon, value_range))):
        for i in range(n):
            img = images[i].permute(1, 2, 0).numpy()
            ax = axes[row][i]
            ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel("original" if row == 0 else "attack")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_attack(cfg: AttackRunConfig, out: Path, *, from_run: Path | None = None, client: int = 0,
               server_round: int = 1, progress: Callable[[int, dict], None] | None = None,
               results_name: str = "results.csv") -> list[dict]:
    """All trials of one attack config; returns the result rows (also appended to results.csv)."""
    out.mkdir(parents=True, exist_ok=True)
    threat = cfg.threat_model()
    options = dict(cfg.options)
    attack = build_attack(cfg.attack, **options)  # validates the options before any work
    needs_prior = cfg.attack in ("gidm", "gidm_plus") and getattr(attack.cfg, "phases", "pixel") != "pixel"
    if needs_prior and not (attack.cfg.prior or threat.prior):
        data, model, steps, schedule, path = cfg.dataset, cfg.model, cfg.timesteps, cfg.beta_schedule, cfg.dataset_path
        if from_run is not None:
            rc = resolve(from_run / "config.toml", [])
            data, model, steps, schedule, path = rc.dataset, rc.model, rc.timesteps, rc.beta_schedule, rc.dataset_path
        options["prior"] = str(prior_path(data, model, steps, schedule, epochs=cfg.prior_epochs, seed=cfg.seed,
                                          dataset_path=path or None))
    elif needs_prior and not attack.cfg.prior:
        options["prior"] = threat.prior
    attack = build_attack(cfg.attack, **options)
    rows = []
    trials = 1 if from_run is not None else cfg.trials
    for trial in range(trials):
        t = _recorded(cfg, from_run, client, server_round) if from_run is not None else _fresh(cfg, trial)
        obs = t.obs
        if cfg.defense == "dp":
            obs = local_dp(obs, clip=cfg.dp_clip, epsilon=cfg.dp_epsilon, delta=cfg.dp_delta, releases=cfg.dp_releases,
                           seed=int(derive(cfg.seed, "dp", trial).integers(2**31)))
        elif cfg.codec() is not None and not obs.codec:  # a recorded compressed run is already compressed
            obs = compressed(obs, cfg.codec(), seed=int(derive(cfg.seed, "uplink", trial).integers(2**31)))
        inp = expose(obs, threat, t.secrets)
        if from_run is not None and attack.cfg.batch_size is None and obs.payload == "gradient":
            # FedSGD: the gradient is of one batch, not of the whole partition
            batch = int(obs.config.get("batch-size", obs.num_examples))
            inp = dataclasses.replace(inp, num_samples=min(obs.num_examples, batch))
        g = torch.Generator().manual_seed(int(derive(cfg.seed, "attack", trial).integers(2**62)))
        rec = attack.reconstruct(t.victim, inp, generator=g)
        truth = t.truth
        true_labels = t.secrets.labels
        if truth.shape[0] > rec.images.shape[0]:
            keep = best_truth(rec.images, truth)
            truth, true_labels = truth[keep], true_labels[keep]
        s = score(rec.images, truth, recon_labels=rec.labels if not t.victim.is_diffusion else None,
                  true_labels=true_labels if not t.victim.is_diffusion else None, value_range=t.victim.value_range)
        row = {"attack": cfg.attack, "model": cfg.model if from_run is None else "recorded",
               "dataset": cfg.dataset if from_run is None else "recorded", "batch_size": rec.images.shape[0],
               "local_steps": cfg.local_steps if from_run is None else int(obs.metrics.get("steps") or 1),
               "defense": obs.codec or cfg.defense, "trial": trial, **{k: s[k] for k in ("psnr", "psnr_sd", "ssim", "ssim_sd",
                                                                             "mse", "label_acc", "lpips")},
               **_noise_metrics(rec, t.secrets), "wall_s": round(rec.wall_s, 3),
               "iterations": rec.history[-1][0] + 1 if rec.history else 0,
               "source": f"{from_run} client {client} round {server_round}" if from_run else "fresh",
               "threat": json.dumps(threat.as_dict())}
        if cfg.defense == "dp":
            row.update(dp_accounting(clip=cfg.dp_clip, epsilon=cfg.dp_epsilon, delta=cfg.dp_delta,
                                     releases=cfg.dp_releases))
        rows.append(row)
        _append(out / results_name, row)
        if trial == 0:
            r = to_unit(rec.images, t.victim.value_range)
            perm = match(r, to_unit(truth, t.victim.value_range))
            save_grid(truth, rec.images[perm], out / f"grid_{cfg.attack}.png",
                      f"{cfg.attack}: PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.3f}", t.victim.value_range)
            torch.save({"images": rec.images, "labels": rec.labels, "history": rec.history},
                       out / f"reconstruction_{cfg.attack}.pt")
        if progress is not None:
            progress(trial, row)
    return rows


def _append(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
