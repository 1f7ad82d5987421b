"""Many `fedsim run`s (and `fedsim unlearn`s) from an experiment script: one subprocess each, resumable.

A run whose folder says ``done`` (status.json) is kept; a folder left by an
interrupted attempt is removed and the run starts again. Each run is a real
``fedsim run`` (its own SuperLink and Ray), so a failing one cannot take the
script down with it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


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
    return _fedsim(["run", str(config)], overrides, folder)


def fedsim_unlearn(run_dir: Path, method: str, request: list[str], overrides: dict[str, Any], folder: Path,
                   retrain: Path | None = None, samples: int = 500) -> str:
    """One `fedsim unlearn --run RUN_DIR REQUEST --method M --set k=v ... --out FOLDER`;
    '' on success (or already done: the folder holds its report), else its last line."""
    folder = Path(folder)
    if unlearn_done(folder):
        return ""
    args = ["unlearn", "--run", str(run_dir), *request, "--method", method, "--samples", str(samples)]
    return _fedsim(args + (["--retrain", str(retrain)] if retrain is not None else []), overrides, folder)


def _fedsim(args: list[str], overrides: dict[str, Any], folder: Path) -> str:
    """`fedsim ARGS --set k=v ... --out FOLDER` in a subprocess, into a fresh folder (an
    interrupted earlier attempt is removed); '' or the last line it printed."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fedsim.cli", *args, "--out", str(folder)]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        lines = (res.stderr.strip() or res.stdout.strip()).splitlines()
        return lines[-1] if lines else f"exit code {res.returncode}"
    return ""
