"""``fedsim distill RUN --steps K``: SFDDM (Hong et al. 2025), the run's global DDPM distilled into
a student that samples in K steps, in one training run (fedsim/models/distill.py has the loss).

The teacher is RUN/model (T = the run's ``timesteps``); K must divide T. The student has the
teacher's architecture and starts from its weights; its schedule is every (T / K)-th step of the
teacher's, so its noisy inputs are exactly the teacher's. It trains with Adam on the server's
data: the test split of the run's dataset by default (``--dataset``/``--split``/``--dataset-path``
choose others; the report says which). Writes to --out (default RUN/distill-K/):

- model/: the student in diffusers format, with ``fedsim_schedule.json`` (teacher T, stride,
  beta schedule, K): what loading it as a pretrained model or an attack prior needs;
- losses.csv: per epoch the mean total, output and hidden losses;
- grid.png: the teacher sampling with DDIM in K steps (top) and the student in its K steps
  (bottom), from the same noise; timing.csv: seconds per image of each.

Heavy imports (torch, diffusers) happen inside the command: the CLI stays light.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedsim.config import ConfigError

def add_parser(sub) -> None:
    p = sub.add_parser("distill", help="distil a finished run's diffusion model to K sampling steps (SFDDM)")
    p.add_argument("run", metavar="RUN", help="the finished run (fedsim run --out RUN)")
    p.add_argument("--steps", type=int, required=True, metavar="K", help="the student's steps; must divide T")
    p.add_argument("--epochs", type=int, default=300,
                   help="passes over the server's data (default 300: ~10,000 Adam steps on 1,000 images, the paper's budget)")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam's learning rate (default 2e-4)")
    p.add_argument("--hidden-loss", choices=("l1", "kl"), default="l1",
                   help="the hidden-feature term: l1 (the authors' code) or kl (unverified reading)")
    p.add_argument("--dataset", help="the server's data (default: the run's dataset)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="its split (default test)")
    p.add_argument("--dataset-path", default=None, help="local path of a dataset that needs one")
    p.add_argument("--samples", type=int, default=16, help="images in the comparison grid (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default RUN/distill-K)")
    p.add_argument("--device", default="auto", help="auto (a GPU where there is one), cpu or cuda[:N]")
    p.set_defaults(func=cmd_distill)


def cmd_distill(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedsim.records.run_folder import finished_run_config

    run = Path(args.run)
    cfg = finished_run_config(run)
    if not cfg.is_diffusion:
        raise ConfigError(f"{run} trained a {cfg.model}; SFDDM distils diffusion models")
    if args.steps < 1 or cfg.timesteps % args.steps:
        raise ConfigError(f"--steps {args.steps} must divide the teacher's {cfg.timesteps} timesteps")
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.samples < 1:
        raise ConfigError("--epochs, --batch-size and --samples must be >= 1 and --lr > 0")
    out = Path(args.out or run / f"distill-{args.steps}")
    console = Console()
    console.print(f"fedsim distill: {run} (T = {cfg.timesteps}) -> K = {args.steps}, "
                  f"data {args.dataset or cfg.dataset} {args.split}")
    distill_run(cfg, run, out, args, console)
    console.print(f"done: {out / 'model'} (student), {out / 'grid.png'}, {out / 'losses.csv'}, {out / 'timing.csv'}")
    return 0


def distill_run(cfg, run: Path, out: Path, args: argparse.Namespace, console) -> None:
    import copy

    import torch

    from fedsim.data.datasets import DataError, load_dataset
    from fedsim.models.diffusion import SCHEDULE_FILE, NoiseSchedule
    from fedsim.models.distill import sfddm_loss
    from fedsim.models.networks import load_pretrained, save_model

    try:
        data = load_dataset(args.dataset or cfg.dataset, args.split, args.dataset_path or cfg.dataset_path or None,
                            cfg.image_size)
    except DataError as err:
        raise ConfigError(str(err)) from None
    from fedsim.models.workspace import pick_device

    device = pick_device(args.device)
    teacher = load_pretrained(run / "model").eval().to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher).train()
    for p in student.parameters():
        p.requires_grad_(True)
    stride = cfg.timesteps // args.steps
    sched = NoiseSchedule(args.steps, cfg.beta_schedule, stride=stride)
    conditional = cfg.conditional
    opt = torch.optim.Adam(student.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    labels_all = torch.as_tensor(data.labels.copy())
    rows = []
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(data), generator=g)
        sums, n = [0.0, 0.0, 0.0], 0
        for start in range(0, len(data), args.batch_size):
            idx = order[start:start + args.batch_size]
            loss = sfddm_loss(student, teacher, sched, data.images[idx].to(device),
                              labels_all[idx].to(device) if conditional else None, generator=g,
                              hidden=args.hidden_loss)
            opt.zero_grad(set_to_none=True)
            loss.total.backward()
            opt.step()
            for k, v in enumerate((loss.total.detach(), loss.output, loss.hidden)):
                sums[k] += float(v) * len(idx)
            n += len(idx)
        rows.append({"epoch": epoch, "loss": sums[0] / n, "output": sums[1] / n, "hidden": sums[2] / n})
        console.print(f"epoch {epoch}/{args.epochs}: loss {rows[-1]['loss']:.4f} "
                      f"(output {rows[-1]['output']:.4f}, hidden {rows[-1]['hidden']:.4f})")
    out.mkdir(parents=True, exist_ok=True)
    save_model(copy.deepcopy(student).eval().cpu(), out / "model")
    (out / "model" / SCHEDULE_FILE).write_text(json.dumps(
        {"teacher_timesteps": cfg.timesteps, "stride": stride, "beta_schedule": cfg.beta_schedule,
         "steps": args.steps, "server_data": f"{args.dataset or cfg.dataset} {args.split}",
         "hidden_loss": args.hidden_loss, "epochs": args.epochs, "lr": args.lr}, indent=1))
    _write_csv(out / "losses.csv", rows)
    _compare(teacher, student.eval(), sched, data.shape, args, out, labels_all if conditional else None, device)


def _compare(teacher, student, sched, shape, args, out: Path, labels, device: str) -> None:
    """grid.png and timing.csv: teacher DDIM at K steps against the student at its K steps, same noise."""
    import torch

    from fedsim.evaluation.server import save_grid
    from fedsim.models.diffusion import sample

    n = args.samples
    cond = labels[:n] if labels is not None else None
    timing, images = [], []
    for name, model, sch in (("teacher-ddim", teacher, sched.teacher), ("student", student, sched)):
        t0 = time.perf_counter()
        x = sample(model, sch, n, shape, generator=torch.Generator().manual_seed(args.seed + 1),
                   steps=args.steps, labels=cond, device=device).cpu()
        timing.append({"sampler": name, "steps": args.steps, "s_per_image": (time.perf_counter() - t0) / n})
        images.append(x)
    save_grid(torch.cat(images), out / "grid.png", ncol=n)
    _write_csv(out / "timing.csv", timing)


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
