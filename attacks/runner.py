"""``fedsim attack``: set up (or load) an observation, run the attack, score it, write the results.

Each trial (attacks/trials.py): a fresh exchange (default; ``trials`` times, ``batch-size``
test-split images, seeded) or one recorded observation (``--from-run DIR --client K --round R``),
or one client's observations of several rounds fused by one attack (``--rounds R1,R2,...``;
only an attack with ``fuses``, i.e. AGIC; any other is refused), with the targets the updates
came from: the batch, the samples a simulated client recorded using (over several rounds,
their union), or (an older run without them) the client's partition. Each reply goes through
the defense, then the threat model, then the attack. Scoring (attacks/scoring.py) pairs
reconstructions and targets by one Hungarian assignment and applies it to every per-sample
metric; the trivial baselines (attacks/baselines.py: grey, the mean image, random training
images) are scored the same way on the same targets.

Writes to the output folder: config.toml, results.csv (per trial the attack's row, then rows
``baseline-grey``, ``baseline-mean``, ``baseline-random``; appended as each trial finishes, so
an interrupted run keeps its rows; the ``truth`` column says what was scored against, the
``observations`` column how many observations the attack was given, ``source`` which) and
grid_<attack>.png (originals above reconstructions; the first GRID_MAX matched pairs).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from attacks import build_attack, fusing_attacks
from attacks.base import AttackError
from attacks.baselines import BASELINES, baseline_images
from attacks.config import AttackRunConfig
from attacks.defenses import compressed, dp_accounting, local_dp
from attacks.lpips import load_lpips
from attacks.metrics import to_unit
from attacks.prior import prior_path
from attacks.scoring import score_against
from attacks.threat_model import AttackInput, ThreatModel, expose
from attacks.trials import Trial, dp_sgd_accounting_of, fresh_trial, recorded_trial
from fedsim.config import resolve
from fedsim.rng import derive

COLUMNS = ["attack", "model", "dataset", "batch_size", "local_steps", "defense", "trial", "psnr", "psnr_sd",
           "ssim", "ssim_sd", "mse", "label_acc", "t_acc", "t_abs_err", "eps_cos", "lpips", "wall_s", "cpu_s",
           "iterations", "observations", "source", "truth", "threat", "dp_noise_multiplier", "dp_sigma",
           "dp_epsilon_spent"]
METRICS = ("psnr", "psnr_sd", "ssim", "ssim_sd", "mse", "label_acc", "lpips", "t_acc", "t_abs_err", "eps_cos",
           "truth")
GRID_MAX = 16  # pairs shown in the grid (a partition of hundreds would make an unreadable, huge figure)


def save_grid(truth: torch.Tensor, recon: torch.Tensor, path: Path, title: str,
              value_range: tuple[float, float] = (-1.0, 1.0)) -> None:
    """Originals (top row) above their matched reconstructions (bottom row); the first GRID_MAX pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, recon = truth[:GRID_MAX], recon[:GRID_MAX]
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
               server_round: int = 1, rounds: Sequence[int] | None = None,
               progress: Callable[[int, dict], None] | None = None, results_name: str = "results.csv") -> list[dict]:
    """All trials of one attack config; returns the result rows (also appended to results.csv):
    per trial the attack's row, then one per baseline (attack "baseline-grey" / "-mean" / "-random").
    A recorded run: client ``client``'s observation of ``server_round``, or of every round in
    ``rounds`` (several only for an attack that fuses them). ``progress`` gets every row as it is written."""
    out.mkdir(parents=True, exist_ok=True)
    rounds = list(rounds) if rounds else [server_round]
    threat = cfg.threat_model()
    options = dict(cfg.options)
    attack = build_attack(cfg.attack, **options)  # validates the options before any work
    if from_run is not None and cfg.defense in ("dp-sgd", "secagg"):
        raise AttackError(f"defense '{cfg.defense}' acts on the clients of a fresh exchange, which a recorded run's "
                          "clients did not run; attack a fresh exchange")
    if len(rounds) > 1 and not attack.fuses:
        raise AttackError(f"{cfg.attack} attacks one observation; fusing rounds {','.join(map(str, rounds))} needs "
                          f"an attack that fuses them ({', '.join(fusing_attacks())}); give --round R instead")
    needs_prior = cfg.attack in ("gidm", "gidm_plus") and getattr(attack.cfg, "phases", "pixel") != "pixel"
    if needs_prior and not (attack.cfg.prior or threat.prior):
        src = resolve(from_run / "config.toml", []) if from_run is not None else cfg  # the victim's data
        options["prior"] = str(prior_path(src.dataset, src.model, src.timesteps, src.beta_schedule,
                                          epochs=cfg.prior_epochs, seed=cfg.seed, dataset_path=src.dataset_path or None,
                                          image_size=src.image_size))
    elif needs_prior and not attack.cfg.prior:
        options["prior"] = threat.prior
    attack = build_attack(cfg.attack, **options)
    lpips_net = load_lpips(cfg.lpips_backbone) if cfg.lpips_backbone else None  # None: LPIPS "n/a"
    rows = []
    trials = 1 if from_run is not None else cfg.trials
    for trial in range(trials):
        t = recorded_trial(from_run, client, rounds) if from_run is not None else fresh_trial(cfg, trial)
        observations = [defended(cfg, obs, trial, k) for k, obs in enumerate(t.observations)]
        inputs = [attack_input(obs, threat, sec, recorded=from_run is not None and attack.cfg.batch_size is None)
                  for obs, sec in zip(observations, t.granted)]
        g = torch.Generator().manual_seed(int(derive(cfg.seed, "attack", trial).integers(2**62)))
        cpu0 = time.process_time()
        rec = attack.reconstruct(t.victim, inputs if len(inputs) > 1 else inputs[0], generator=g)
        cpu_s = time.process_time() - cpu0  # every thread of this process: the speed ratios' measure
        vr = t.victim.value_range
        s = score_against(rec.images, t.targets, value_range=vr, extras=rec.extras, lpips_net=lpips_net,
                          labels=rec.labels if not t.victim.is_diffusion else None)
        obs = observations[0]
        where = f"round {rounds[0]}" if len(rounds) == 1 else f"rounds {','.join(map(str, rounds))}"
        common = {"model": cfg.model if from_run is None else "recorded",
                  "dataset": cfg.dataset if from_run is None else "recorded", "batch_size": rec.images.shape[0],
                  "local_steps": cfg.local_steps if from_run is None else int(obs.metrics.get("steps") or 1),
                  "defense": obs.codec or cfg.defense, "trial": trial, "observations": len(observations),
                  "source": f"{from_run} client {client} {where}" if from_run else "fresh",
                  "threat": json.dumps(threat.as_dict())}
        row = {"attack": cfg.attack, **common, **{k: s[k] for k in METRICS}, "wall_s": round(rec.wall_s, 3), "cpu_s": round(cpu_s, 3),
               "iterations": rec.iterations if rec.iterations is not None else
               (rec.history[-1][0] + 1 if rec.history else 0)}
        if cfg.defense == "dp":
            row.update(dp_accounting(clip=cfg.dp_clip, epsilon=cfg.dp_epsilon, delta=cfg.dp_delta,
                                     releases=cfg.dp_releases))
        elif cfg.defense == "dp-sgd":
            row.update(dp_sgd_accounting_of(cfg))
        trial_rows = [row] + baseline_rows(t, rec.images.shape[0], common, seed=cfg.seed, trial=trial,
                                           lpips_net=lpips_net)
        for r in trial_rows:
            rows.append(r)
            _append(out / results_name, r)
        if trial == 0:
            truth_idx, recon_idx = s["pairs"]
            save_grid(t.targets.images[truth_idx], rec.images[recon_idx], out / f"grid_{cfg.attack}.png",
                      f"{cfg.attack}: PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.3f} ({s['truth']})", vr)
            torch.save({"images": rec.images, "labels": rec.labels, "history": rec.history},
                       out / f"reconstruction_{cfg.attack}.pt")
        if progress is not None:
            for r in trial_rows:
                progress(trial, r)
    return rows


def defended(cfg: AttackRunConfig, obs, trial: int, k: int):
    """The observation after the config's defense; the k-th of a trial's observations gets its own noise
    (k = 0 draws what a single observation always drew)."""
    keys = (trial,) if k == 0 else (trial, k)
    if cfg.defense == "dp":
        return local_dp(obs, clip=cfg.dp_clip, epsilon=cfg.dp_epsilon, delta=cfg.dp_delta, releases=cfg.dp_releases,
                        seed=int(derive(cfg.seed, "dp", *keys).integers(2**31)))
    if cfg.codec() is not None and not obs.codec:  # a recorded compressed run is already compressed
        return compressed(obs, cfg.codec(), seed=int(derive(cfg.seed, "uplink", *keys).integers(2**31)))
    return obs


def attack_input(obs, threat: ThreatModel, granted, *, recorded: bool) -> AttackInput:
    """expose(), plus: a recorded FedSGD gradient is of one batch, not of the whole partition; a threat
    model that grants the batch order where none was recorded is refused."""
    inp = expose(obs, threat, granted)
    if recorded and obs.payload == "gradient":
        batch = int(obs.config.get("batch-size", obs.num_examples))
        inp = dataclasses.replace(inp, num_samples=min(obs.num_examples, batch))
    if threat.batch_order_known and granted.batches is None:
        raise AttackError(f"threat batch-order-known = true, but round {obs.server_round} of client "
                          f"{obs.partition_id} has no recorded batch order (no secrets file: an older run or "
                          "not a simulation)")
    return inp


def baseline_rows(t: Trial, n: int, common: dict, *, seed: int, trial: int,
                  lpips_net: torch.nn.Module | None = None) -> list[dict]:
    """One row per trivial baseline of ``n`` images, scored as the attack was, on its targets."""
    rows = []
    for kind in BASELINES:
        g = torch.Generator().manual_seed(int(derive(seed, f"baseline-{kind}", trial).integers(2**62)))
        images = baseline_images(kind, n, t.pool, t.victim.value_range, generator=g)
        s = score_against(images, t.targets, value_range=t.victim.value_range, lpips_net=lpips_net)
        rows.append({"attack": f"baseline-{kind}", **common, **{k: s[k] for k in METRICS}, "wall_s": 0.0,
                     "iterations": 0})
    return rows


def _append(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
