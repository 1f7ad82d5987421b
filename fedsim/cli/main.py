"""``fedsim run [CONFIG.toml] [--set key=value ...] [--out DIR]``, ``fedsim attack``, ``fedsim unlearn``,
``fedsim split-data CONFIG --out DIR`` (one data-dir per SuperNode, see fedsim/data/split.py),
``fedsim app CONFIG --out DIR`` (a Flower app folder for ``flwr run`` on a deployed SuperLink),
``fedsim keys [PATTERN]`` (the configuration reference, keys.py), ``fedsim distill RUN --steps K``
(SFDDM, distill.py), ``fedsim steal RUN`` (MEGA, steal.py).

Validates everything it can before starting (config keys and types, dataset
path, partition feasibility, model, strategy name), then runs the app on a
private local SuperLink and shows a live progress line per round. Flower's
and Ray's own logs go to DIR/logs, not over the display. Bad input gives one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fedsim.cli import distill, keys, steal
from fedsim.cli.launch import LaunchError, LocalFederation, app_pyproject
from fedsim.config import ConfigError, RunConfig, resolve, to_toml, write_toml
from fedsim.records.run_folder import RunFolder

USER_ERRORS = (ConfigError, LaunchError)


class RunFailed(RuntimeError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        print(f"fedsim: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


class PreflightFailed(Exception):
    """fedsim.cli.preflight already printed its one line."""


def preflight(cfg: RunConfig) -> None:
    """Fail before round 1 on anything the user can fix (dataset path, partition
    feasibility, model, strategy); checked in a child process, see preflight.py."""
    res = subprocess.run([sys.executable, "-m", "fedsim.cli.preflight"], input=to_toml(cfg),
                         text=True, capture_output=True)
    if res.returncode == 2:
        sys.stderr.write(res.stderr.strip().splitlines()[-1] + "\n")
        raise PreflightFailed
    if res.returncode != 0:
        raise LaunchError(f"pre-flight check crashed: {res.stderr.strip().splitlines()[-1:]}")


def _fmt(row: dict, key: str, spec: str = ".4f") -> str:
    v = row.get(key)
    return "-" if v in (None, "") else format(float(v), spec)


def monitor(fed: LocalFederation, run_id: str, folder: RunFolder, cfg: RunConfig, console: Console) -> dict:
    columns = [TextColumn("[bold]round {task.completed}/{task.total}"), BarColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}")]
    shown, start = -1, time.monotonic()
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task("rounds", total=cfg.rounds, info="starting Flower + Ray ...", eta="?")
        while True:
            status = folder.read_status()
            state = status.get("state")
            if state in ("running", "done") and "last" in status:
                row, rnd = status["last"], status.get("round", cfg.rounds)
                per_round = (time.monotonic() - start) / max(rnd, 1)
                info = (f"clients {row.get('clients_sampled', '-')} (failed {row.get('clients_failed', 0)}) "
                        f"train {_fmt(row, 'train_loss')} eval {_fmt(row, 'eval_loss')} "
                        f"up {row.get('bytes_up_total', 0) / 1e6:.2f} MB"
                        + (f" ({row['compression_ratio']:.0f}x)" if row.get("compression_ratio") else "")
                        + (f" | recognised {_fmt(row, 'recognised', '.0%')}" if row.get("recognised") not in (None, "")
                           else ""))
                eta = time.strftime("%M:%S", time.gmtime(per_round * (cfg.rounds - rnd)))
                bar.update(task, completed=rnd, info=info, eta=eta)
                if not console.is_terminal and rnd != shown:
                    console.print(f"round {rnd}/{cfg.rounds} {info}")
                shown = rnd
            if state == "done":
                bar.update(task, completed=cfg.rounds, eta="0:00")
                return status
            if state == "failed":
                raise RunFailed(status.get("error", "the ServerApp failed"))
            if fed.finished(run_id) and folder.read_status().get("state") != "done":
                time.sleep(1)  # the status file may land just after the task ends
                status = folder.read_status()
                if status.get("state") != "done":
                    raise RunFailed(status.get("error") or "the simulation ended early; see "
                                    f"{folder.path / 'logs'} (server.log, simulation.log)")
            time.sleep(0.5)


def _wait_finished(fed: LocalFederation, run_id: str, timeout: float = 60) -> None:
    """Let the simulation process shut Ray down cleanly before the SuperLink stops."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not fed.finished(run_id):
        time.sleep(0.5)


def cmd_run(args: argparse.Namespace) -> int:
    console = Console(stderr=False)
    if args.resume:
        return _resume(args, console)
    cfg = resolve(args.config, args.set)
    out = Path(args.out or cfg.out_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    check_out(out)
    execute(cfg.replace(out_dir=str(out)), console)
    return 0


def _resume(args: argparse.Namespace, console: Console) -> int:
    from fedsim.cli.resume import resume_config

    if args.config or args.out:
        raise ConfigError("--resume DIR continues DIR with its own config.toml: give no CONFIG or --out "
                          "(change safe keys such as rounds with --set)")
    run_dir = Path(args.resume).resolve()
    cfg, left = resume_config(run_dir, args.set, warn=lambda line: console.print(line, style="yellow"))
    if not left:
        console.print(f"{run_dir}: the run finished all {cfg.rounds} rounds; nothing to resume "
                      "(--set rounds=N extends it)")
        return 0
    RunFolder(run_dir).status("resuming", rounds=cfg.rounds)  # not the failed/running state of the last try
    execute(cfg, console)
    return 0


def check_out(out: Path, held_ok: bool = False) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if (out / "metrics.csv").exists() and not held_ok:
        raise ConfigError(f"{out} already holds a run (metrics.csv); choose another --out")


def execute(cfg: RunConfig, console: Console) -> dict:
    """Pre-flight, then the run into cfg.out_dir with the progress display; its final status."""
    out = Path(cfg.out_dir)
    preflight(cfg)
    folder = RunFolder(out)
    write_toml(cfg.replace(resume=False), out / "config.toml")  # the run's config, resumed or not
    codec = "" if cfg.compression == "none" else f", {cfg.compression} uplink"
    console.print(f"fedsim: {cfg.num_clients} clients, {cfg.clients_per_round}/round, {cfg.rounds} rounds, "
                  f"{cfg.model} on {cfg.dataset} ({cfg.partition}){codec} -> {out}"
                  + (" (resuming from its last checkpoint)" if cfg.resume else ""))
    with LocalFederation(out, cfg) as fed:
        run_id = fed.submit()
        status = monitor(fed, run_id, folder, cfg, console)
        _wait_finished(fed, run_id)
    last = status.get("last", {})
    console.print(f"done: eval_loss {_fmt(last, 'eval_loss')}"
                  + (f", recognised {_fmt(last, 'recognised', '.1%')}" if last.get("recognised") not in (None, "") else "")
                  + (f", fd {_fmt(last, 'fd', '.3g')} (real vs real {_fmt(last, 'fd_floor', '.3g')})"
                     if last.get("fd") not in (None, "") else "")
                  + (f", test_acc {_fmt(last, 'test_acc')}" if last.get("test_acc") not in (None, "") else "")
                  + f" | metrics.csv, curves.png, samples/, model/ in {out}")
    return status


def cmd_attack(args: argparse.Namespace) -> int:
    from attacks import build_attack, fusing_attacks
    from attacks.base import AttackError
    from attacks.config import dump, resolve_attack
    from attacks.runner import run_attack
    from fedsim.data.datasets import DataError
    from fedsim.data.partition import PartitionError
    from fedsim.models.networks import ModelError

    console = Console(stderr=False)
    cfg = resolve_attack(args.config, args.set)
    try:
        attack = build_attack(cfg.attack, **cfg.options)  # unknown attack or option: fail before any output
    except AttackError as err:
        raise ConfigError(str(err)) from None
    if (args.client is not None or args.round is not None or args.rounds is not None) and not args.from_run:
        raise ConfigError("--client, --round and --rounds select observations of --from-run DIR")
    if args.round is not None and args.rounds is not None:
        raise ConfigError("give --round R (one observation) or --rounds R1,R2,... (several, fused), not both")
    rounds = parse_rounds(args.rounds) if args.rounds is not None else [args.round or 1]
    if len(rounds) > 1 and not attack.fuses:
        raise ConfigError(f"{cfg.attack} attacks one observation and cannot fuse rounds; --rounds needs "
                          f"{' or '.join(fusing_attacks())} (or give --round R)")
    out = Path(args.out or Path("runs") / f"attack-{cfg.attack}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    from_run = Path(args.from_run).resolve() if args.from_run else None
    out.mkdir(parents=True, exist_ok=True)
    dump(cfg, out / "config.toml")
    where = f"round {rounds[0]}" if len(rounds) == 1 else f"rounds {','.join(map(str, rounds))} (fused)"
    source = f"client {args.client or 0}, {where} of {from_run}" if from_run else \
        f"{cfg.trials} fresh exchange(s) of {cfg.model} on {cfg.dataset}"
    console.print(f"fedsim attack: {cfg.attack} on {source} -> {out}")

    def progress(trial: int, row: dict) -> None:
        if row["attack"].startswith("baseline-"):  # trivial guesses on the same targets, scored alike
            console.print(f"    {row['attack']}: PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}")
            return
        extra = "".join(f", {k} {row[k]:.3f}" for k in ("label_acc", "t_acc", "eps_cos") if row.get(k) is not None)
        console.print(f"  trial {trial}: PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}{extra}, "
                      f"{row['wall_s']:.1f} s, against the {row['truth']}")

    try:
        with console.status(f"running {cfg.attack} ..."):
            run_attack(cfg, out, from_run=from_run, client=args.client or 0, rounds=rounds, progress=progress)
    except (AttackError, DataError, ModelError, PartitionError) as err:
        raise ConfigError(str(err)) from None
    console.print(f"done: results.csv, grid_{cfg.attack}.png in {out}")
    return 0


def parse_rounds(text: str) -> list[int]:
    """``--rounds 3,4,5`` -> [3, 4, 5]: server rounds >= 1, distinct; ConfigError otherwise."""
    items = [x for x in text.replace(",", " ").split()]
    try:
        rounds = [int(x) for x in items]
    except ValueError:
        rounds = []
    if not rounds or min(rounds) < 1 or len(set(rounds)) < len(rounds):
        raise ConfigError(f"--rounds '{text}': expected distinct server rounds >= 1 separated by commas, e.g. 3,4,5")
    return rounds


def cmd_unlearn(args: argparse.Namespace) -> int:
    from fedsim.cli import unlearn as driver
    from fedsim.data.datasets import DataError
    from fedsim.data.partition import PartitionError
    from fedsim.models.networks import ModelError

    console = Console(stderr=False)
    run_dir = Path(args.run).resolve()
    what = f"client {args.client}" if args.client is not None else f"class {args.klass}"
    out = Path(args.out or Path("runs") / f"unlearn-{args.method}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    check_out(out, held_ok=True)  # a folder holding this very run continues it
    retrain = driver.check_retrain(args.retrain)
    try:
        request = driver.request_keys(driver.original_config(run_dir), args.client, args.klass)
        cfg = driver.unlearn_config(run_dir, args.method, request, args.set, out)
        cfg, left = driver.continued(out, cfg, warn=lambda line: console.print(line, style="yellow"))
    except (DataError, ModelError, PartitionError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(str(err)) from None
    done = "" if left else f" (its {cfg.rounds} rounds are in {out}: scoring only)"
    console.print(f"fedsim unlearn: {args.method}, forget {what} of {run_dir}{done}")
    if left:
        execute(cfg, console)
    target = driver.report(run_dir, out, args.method, retrain, args.samples, console)
    console.print(f"report: {target / 'report.md'} (table), {target / 'grids.png'} (samples before/after)")
    return 0


def cmd_split_data(args: argparse.Namespace) -> int:
    from fedsim.data.datasets import DataError
    from fedsim.data.partition import PartitionError
    from fedsim.data.split import split_data, summary

    cfg = resolve(args.config, args.set)
    try:
        split = split_data(cfg, Path(args.out).resolve())
    except (DataError, PartitionError) as err:
        raise ConfigError(str(err)) from None
    print("\n".join(summary(split)))
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    """The app folder `fedsim run` submits, for a SuperLink you run yourself (docker/README.md)."""
    import tomli_w

    cfg = resolve(args.config, args.set)
    out = Path(args.out)
    target = out / "pyproject.toml"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if target.exists() and not args.force:
        raise ConfigError(f"{target} exists; use --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    target.write_text(tomli_w.dumps(app_pyproject(cfg)))
    print(f"wrote {target}: fedsim's ServerApp and ClientApp with this run config; submit it with\n"
          f"  flwr run {out} <federation> --stream")
    return 0


def _config_args(parser: argparse.ArgumentParser, what: str) -> None:
    """CONFIG.toml and repeatable --set key=value, as every run-config command takes them."""
    parser.add_argument("config", nargs="?", help=what)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedsim", description="Federated generative-model simulation on Flower + Ray.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a federated simulation",
                         epilog="Every key, its type, default and meaning: docs/configuration.md, "
                                "or `fedsim keys [PATTERN]`.")
    _config_args(run, "TOML file with kebab-case keys (docs/configuration.md)")
    run.add_argument("--out", help="run folder (default runs/<timestamp>)")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last good checkpoint")
    run.set_defaults(func=cmd_run)
    attack = sub.add_parser("attack", help="run a gradient-inversion attack (fresh exchange or recorded run)")
    attack.add_argument("config", nargs="?", help="attack TOML (see experiments/attacks/)")
    attack.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key; threat.KEY=... and options.KEY=... reach the tables")
    attack.add_argument("--out", help="output folder (default runs/attack-<name>-<timestamp>)")
    attack.add_argument("--from-run", metavar="DIR", help="attack an observation recorded by fedsim run")
    attack.add_argument("--client", type=int, help="partition id of the recorded client (default 0)")
    attack.add_argument("--round", type=int, help="server round of the recorded observation (default 1)")
    attack.add_argument("--rounds", metavar="R1,R2,...",
                        help="several server rounds of the client, fused by one attack (agic): e.g. 3,4,5")
    attack.set_defaults(func=cmd_attack)
    unlearn = sub.add_parser("unlearn", help="forget a client's or a class's data from a finished run")
    unlearn.add_argument("--run", required=True, metavar="DIR", help="the finished run (fedsim run --out DIR)")
    who = unlearn.add_mutually_exclusive_group(required=True)
    who.add_argument("--client", type=int, metavar="K", help="forget all data of partition K")
    who.add_argument("--class", dest="klass", type=int, metavar="C", help="forget class C on every client")
    unlearn.add_argument("--method", required=True, metavar="M",
                         help="retrain | federaser | gradient-ascent | erasediff | salun | msgm; "
                              "controls: fine-tune | continue")
    unlearn.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a key of the unlearning run (repeatable), e.g. unlearn-rounds=3")
    unlearn.add_argument("--out", help="folder of the unlearning run (default runs/unlearn-<method>-<timestamp>)")
    unlearn.add_argument("--retrain", metavar="DIR3", help="a retrain run of the same request, compared in the report")
    unlearn.add_argument("--samples", type=int, default=2000, help="generated samples scored per model (default 2000)")
    unlearn.set_defaults(func=cmd_unlearn)
    split = sub.add_parser("split-data", help="write the run's partition as one data-dir per SuperNode")
    _config_args(split, "the run's TOML (dataset, num-clients, partition, seed)")
    split.add_argument("--out", required=True, metavar="DIR", help="new or empty folder for node-<k>/ and server/")
    split.set_defaults(func=cmd_split_data)
    app = sub.add_parser("app", help="write a Flower app folder (pyproject.toml) for flwr run on your SuperLink")
    _config_args(app, "the run's TOML")
    app.add_argument("--out", required=True, metavar="DIR", help="the app folder")
    app.add_argument("--force", action="store_true", help="overwrite DIR/pyproject.toml")
    app.set_defaults(func=cmd_app)
    keys.add_parser(sub)
    distill.add_parser(sub)
    steal.add_parser(sub)
    return parser


def _terminate(signum, frame) -> None:
    """SIGTERM behaves like Ctrl-C: the run's SuperLink (and Ray) are stopped."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        return 2
    except PreflightFailed:
        return 2
    except RunFailed as err:
        print(f"fedsim: run failed: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `fedsim keys | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no second error at interpreter exit
        return 0
    except KeyboardInterrupt:
        print("fedsim: interrupted; rounds already finished are in metrics.csv", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
