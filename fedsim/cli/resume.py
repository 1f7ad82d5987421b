"""``fedsim run --resume DIR [--set rounds=N]``: what may continue, and with which config.

The run folder's config.toml is the run's config. ``--set`` may change only keys that
cannot change what the rounds already run would have computed (SAFE); ``rounds`` may only
grow (it extends a finished run). Anything else is refused with one line naming the keys,
before any process starts. The ServerApp then restores the last good checkpoint
(fedsim/app/run_state.py) and runs the remaining rounds. ``fedsim unlearn --out DIR`` and
the experiment runners continue an interrupted run through the same check
(``continue_config``), with the config they would start it with.
"""

from __future__ import annotations

from pathlib import Path

from fedsim.config import ConfigError, RunConfig, load_config, read_toml, resolve
from fedsim.records.checkpoint import CheckpointError, Checkpoints
from fedsim.records.run_folder import RunFolder

SAFE = {"rounds", "checkpoint-every", "checkpoint-keep", "round-timeout", "max-in-flight", "out-dir", "resume"}


def resume_config(run_dir: Path, overrides: list[str], warn=print) -> tuple[RunConfig, bool]:
    """(config to continue with, whether there is anything left to run); ``warn`` gets one line
    per corrupt checkpoint skipped."""
    path = run_dir / "config.toml"
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no run there (config.toml missing)")
    return continue_config(run_dir, resolve(path, overrides), warn)


def continue_config(run_dir: Path, wanted: RunConfig, warn=print, flag: str = "--resume") -> tuple[RunConfig, bool]:
    """Whether the run in ``run_dir`` may continue as ``wanted``: (its config, anything left to
    run), else ConfigError (one line, starting with ``flag``)."""
    saved = load_config(read_toml(run_dir / "config.toml"))
    cfg = wanted.replace(out_dir=str(run_dir))
    before, after = saved.to_flwr(), cfg.to_flwr()
    changed = sorted(k for k in after if k not in SAFE and after[k] != before[k])
    if changed:
        raise ConfigError(f"{flag}: {', '.join(changed)} differ from the run's config.toml; only "
                          f"{', '.join(sorted(SAFE - {'out-dir', 'resume'}))} may change")
    if cfg.rounds < saved.rounds:
        raise ConfigError(f"{flag}: rounds can only grow (the run has {saved.rounds})")
    status = RunFolder(run_dir).read_status()
    if status.get("state") == "done" and int(status.get("round", 0)) >= cfg.rounds:
        return cfg, False
    checkpoints = Checkpoints(run_dir)
    if not checkpoints.rounds():
        raise ConfigError(f"{flag}: {run_dir} holds no checkpoint (checkpoint-every = 0, or it stopped "
                          "before its first round ended); start it again with another --out")
    try:  # checked here too (not unpickled), so a corrupt one is reported before anything starts
        checkpoints.latest(warn=warn, unpickle=False)
    except CheckpointError as err:
        raise ConfigError(f"{flag}: {err}") from None
    return cfg.replace(resume=True), True
