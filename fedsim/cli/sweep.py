"""Many `fedsim run`s (and `fedsim unlearn`s) from an experiment script: one subprocess each, resumable.

A run whose folder says ``done`` (status.json) is kept. A run left by an interrupted
attempt continues from its last checkpoint when its config.toml is the one this script
would write (``fedsim run --resume``; ``fedsim unlearn`` continues its own folder, then
writes its report); otherwise (another config, no checkpoint) its folder is removed and
it starts again. Each run is a
real ``fedsim`` subprocess (its own SuperLink and Ray), so a failing one cannot take the
script down with it, and each gets SIGTERM when the script dies, however it dies (a
parent-death signal), so a killed script leaves no run behind.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedsim.cli.resume import continue_config
from fedsim.config import ConfigError, resolve
from fedsim.records.checkpoint import Checkpoints


def sibling(script: str, name: str, prefix: str):
    """The module ``name``.py beside ``script`` (an experiment's run.py; experiments/ is not a
    package), loaded once under the key ``prefix_name``: experiments have modules of the same
    names (report.py, summary.py), which a plain import would mix up."""
    key = f"{prefix}_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(script).resolve().parent / f"{name}.py")
        sys.modules[key] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[key])
    return sys.modules[key]


def is_done(folder: Path) -> bool:
    try:
        return json.loads((Path(folder) / "status.json").read_text()).get("state") == "done"
    except (OSError, ValueError):
        return False


def unlearn_done(folder: Path) -> bool:
    """A `fedsim unlearn` run is finished once its folder says done and holds its report."""
    return is_done(folder) and (Path(folder) / "unlearning" / "report.csv").is_file()


def fedsim_run(config: Path, overrides: dict[str, Any], folder: Path) -> str:
    """One `fedsim run CONFIG --set k=v ... --out FOLDER`; '' on success (or already
    done), else the last line it printed (its error)."""
    folder = Path(folder)
    if is_done(folder):
        return ""
    rounds = _resumable(config, overrides, folder)
    if rounds:
        error = _call([sys.executable, "-m", "fedsim.cli", "run", "--resume", str(folder), "--set",
                       f"rounds={rounds}"])
        if not error:
            return ""
        print(f"could not resume {folder} ({error}); starting it again", file=sys.stderr)
    return _fedsim(["run", str(config)], overrides, folder)


def run_all(jobs: list[tuple[str, Path, dict[str, Any], Path]]) -> None:
    """Each job (label, config, overrides, folder) not yet finished, one `fedsim run` at a
    time, with a progress line each; its wall time (start-up included) goes to
    elapsed_s.txt beside its metrics.csv, its error to error.txt (the sweep goes on)."""
    t0 = time.perf_counter()
    todo = [job for job in jobs if not is_done(job[3])]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already finished", flush=True)
    for i, (label, config, overrides, folder) in enumerate(todo, 1):
        start = time.perf_counter()
        err = fedsim_run(config, overrides, folder)
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / ("error.txt" if err else "elapsed_s.txt")).write_text(
            (err if err else f"{time.perf_counter() - start:.1f}") + "\n")
        done = time.perf_counter() - t0
        print(f"[{i}/{len(todo)}] {label}: {'failed: ' + err if err else 'done'} "
              f"({time.perf_counter() - start:.0f} s; elapsed {done / 60:.1f} min, "
              f"ETA {done / i * (len(todo) - i) / 60:.1f} min)", flush=True)


def _resumable(config: Path, overrides: dict[str, Any], folder: Path) -> int:
    """The rounds to run when the folder holds a checkpoint of exactly this run, else 0."""
    if not (folder / "config.toml").is_file() or not Checkpoints(folder).rounds():
        return 0
    try:
        wanted = resolve(config, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
        cfg, left = continue_config(folder, wanted, warn=lambda line: None)
    except (ConfigError, OSError, ValueError):
        return 0
    return cfg.rounds if left else 0


def fedsim_unlearn(run_dir: Path, method: str, request: list[str], overrides: dict[str, Any], folder: Path,
                   retrain: Path | None = None, samples: int = 500) -> str:
    """One `fedsim unlearn --run RUN_DIR REQUEST --method M --set k=v ... --out FOLDER`;
    '' on success (or already done: the folder holds its report), else its last line. A
    folder with a checkpoint is handed to `fedsim unlearn`, which continues it if it is this
    run (else it is removed and the run starts again)."""
    folder = Path(folder)
    if unlearn_done(folder):
        return ""
    args = ["unlearn", "--run", str(run_dir), *request, "--method", method, "--samples", str(samples)]
    args += ["--retrain", str(retrain)] if retrain is not None else []
    if (folder / "config.toml").is_file() and Checkpoints(folder).rounds():
        error = _fedsim(args, overrides, folder, fresh=False)
        if not error:
            return ""
        print(f"could not continue {folder} ({error}); starting it again", file=sys.stderr)
    return _fedsim(args, overrides, folder)


def _fedsim(args: list[str], overrides: dict[str, Any], folder: Path, fresh: bool = True) -> str:
    """`fedsim ARGS --set k=v ... --out FOLDER` in a subprocess, into a fresh folder (an
    interrupted earlier attempt is removed) unless not ``fresh``; '' or the last line it printed."""
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fedsim.cli", *args, "--out", str(folder)]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    return _call(cmd)


def _call(cmd: list[str]) -> str:
    """Run a child that dies with this process; '' or the last line it printed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=die_with_parent)
    out, err = proc.communicate()
    if proc.returncode != 0:
        lines = (err.strip() or out.strip()).splitlines()
        return lines[-1] if lines else f"exit code {proc.returncode}"
    return ""


def die_with_parent() -> None:
    """In a child before exec (Linux): SIGTERM when the parent dies, even by SIGKILL
    (prctl PR_SET_PDEATHSIG; the child's own SIGTERM handling then ends what it started).
    Elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
