"""``fedsim steal RUN``: steal the run's global classifier through a label-only prediction API
(MEGA against a DFME-style generator and random queries, attacks/stealing/).

The target is RUN/model behind ``LabelOracle``: a label per query, ``--budget`` queries per
attack. The substitute has the target's architecture (fedsim's CNN, freshly initialised: the
attacker knows the architecture, not the weights) and never sees the target's data. Every
``--eval-every`` queries the substitute is scored on the run's test split: its accuracy and its
agreement with the target; at the end, the success rate of PGD on the substitute against the
target (``--pgd-eps`` in the [-1, 1] pixel scale). Writes to --out (default RUN/steal/):
curve.csv (method, seed, queries, accuracy, agreement), final.csv (per method and seed, with
the transfer success), curve.png (mean over seeds against queries).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsim.config import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser("steal", help="steal a finished run's classifier through its labels (MEGA, baselines)")
    p.add_argument("run", metavar="RUN", help="the finished classifier run (fedsim run --out RUN)")
    p.add_argument("--methods", default="mega,dfme,random", help="comma-separated: mega, dfme, random")
    p.add_argument("--budget", type=int, default=20000, help="queries per attack (default 20000)")
    p.add_argument("--eval-every", type=int, default=2000, help="queries between evaluations (default 2000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--objective", choices=("entropy", "max-softmax"), default="entropy",
                   help="MEGA's generator objective (which one the paper uses is unverified)")
    p.add_argument("--balance", type=float, default=0.0,
                   help="MEGA: weight of a class-balance term on the generator (DAFL's; not in MEGA's spec; default 0)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 of each method (default 1)")
    p.add_argument("--pgd-eps", type=float, default=0.3, help="transfer attack radius, [-1, 1] scale (default 0.3)")
    p.add_argument("--out", help="output folder (default RUN/steal)")
    p.add_argument("--device", default="auto", help="auto (a GPU where there is one), cpu or cuda[:N]")
    p.set_defaults(func=cmd_steal)


def cmd_steal(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedsim.records.run_folder import finished_run_config

    run = Path(args.run)
    cfg = finished_run_config(run)
    if cfg.is_diffusion:
        raise ConfigError(f"{run} trained a {cfg.model}; fedsim steal copies classifiers")
    methods = [m for m in args.methods.split(",") if m]
    if unknown := [m for m in methods if m not in ("mega", "dfme", "random")]:
        raise ConfigError(f"--methods: unknown {', '.join(unknown)}; known: mega, dfme, random")
    if min(args.budget, args.eval_every, args.batch_size, args.seeds) < 1 or args.pgd_eps < 0 or args.balance < 0:
        raise ConfigError("--budget, --eval-every, --batch-size and --seeds must be >= 1, --pgd-eps and --balance >= 0")
    out = Path(args.out or run / "steal")
    console = Console()
    console.print(f"fedsim steal: {run} ({cfg.model} on {cfg.dataset}), {', '.join(methods)}, "
                  f"{args.budget} queries, {args.seeds} seed(s)")
    steal_run(cfg, run, out, methods, args, console)
    console.print(f"done: {out / 'curve.csv'}, {out / 'final.csv'}, {out / 'curve.png'}")
    return 0


def steal_run(cfg, run: Path, out: Path, methods: list[str], args, console) -> None:
    import pandas as pd
    import torch

    from attacks.stealing.oracle import LabelOracle
    from attacks.stealing.steal import StealConfig, steal
    from attacks.stealing.transfer import transfer_success
    from fedsim.data.clients import dataset
    from fedsim.models.networks import SmallCNN, load_pretrained

    from fedsim.models.workspace import pick_device

    device = pick_device(args.device)
    target = load_pretrained(run / "model").eval().to(device)
    test = dataset(cfg, "test")
    images, labels = test.images.to(device), torch.as_tensor(test.labels.copy()).to(device)
    with torch.no_grad():
        target_pred = target(images).argmax(1)
    curve, final = [], []
    for method in methods:
        for seed in range(args.seeds):
            torch.manual_seed(seed)  # the substitute's initial weights
            sub = SmallCNN(test.shape[0], test.num_classes).to(device)

            def evaluate(s):
                with torch.no_grad():
                    pred = s.eval()(images).argmax(1)
                return {"accuracy": float((pred == labels).float().mean()),
                        "agreement": float((pred == target_pred).float().mean())}

            oracle = LabelOracle.of_model(target, args.budget)
            rows = steal(oracle, sub, test.shape, StealConfig(method=method, batch_size=args.batch_size,
                                                              objective=args.objective, balance=args.balance,
                                                              eval_every=args.eval_every),
                         generator=torch.Generator().manual_seed(seed), evaluate=evaluate,
                         progress=lambda r, m=method, k=seed: console.print(
                             f"{m} seed {k}: {r['queries']} queries, accuracy {r['accuracy']:.3f}, "
                             f"agreement {r['agreement']:.3f}"))
            curve += [{"method": method, "seed": seed, **r} for r in rows]
            success = transfer_success(sub, target, images, labels, eps=args.pgd_eps, alpha=args.pgd_eps / 4,
                                       steps=10)
            final.append({"method": method, "seed": seed, **rows[-1], "transfer_success": success})
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(curve).to_csv(out / "curve.csv", index=False)
    pd.DataFrame(final).to_csv(out / "final.csv", index=False)
    _plot(pd.DataFrame(curve), out / "curve.png", float((target_pred == labels).float().mean()))


def _plot(df, path: Path, target_acc: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, col in zip(axes, ("accuracy", "agreement")):
        for method, g in df.groupby("method", sort=False):
            mean = g.groupby("queries")[col].mean()
            ax.plot(mean.index, 100 * mean.values, marker="o", ms=3, label=f"{method} (n = {g.seed.nunique()})")
        if col == "accuracy":
            ax.axhline(100 * target_acc, color="k", ls="--", lw=1, label="target")
        ax.set(xlabel="queries", ylabel=f"substitute {col}, %", title=f"substitute {col} on the test split")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
