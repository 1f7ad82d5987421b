"""The run folder: resolved config, metrics.csv (one row per round, appended
and flushed as each round ends so a crash loses nothing written), status.json
for the CLI's progress display, plots, samples and the final model."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

BASE_COLUMNS = ["round", "clients_sampled", "clients_failed", "clients_rejected", "train_loss",
                "eval_loss", "bytes_up", "bytes_down", "bytes_up_total", "bytes_down_total", "wall_s", "eval_s"]
# wall_s: whole round (selection, client training, aggregation, evaluation);
# eval_s: the server-side evaluation part of it. Both vary between runs; every
# other column is the same for the same config and seed.


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.csv"
        self.columns: list[str] = list(BASE_COLUMNS)

    def start_metrics(self, extra_columns: list[str]) -> None:
        self.columns = BASE_COLUMNS + extra_columns + ["selected"]
        with self.metrics_path.open("w", newline="") as f:
            csv.writer(f).writerow(self.columns)

    def continue_metrics(self, extra_columns: list[str]) -> None:
        """Append to the metrics.csv of a resumed run, whose columns must be this run's."""
        self.columns = BASE_COLUMNS + extra_columns + ["selected"]
        with self.metrics_path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != self.columns:
            raise ValueError(f"{self.metrics_path} has columns {header}, this run writes {self.columns}")

    def append_row(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c)) for c in self.columns])

    def nothing_aggregated(self) -> bool:
        """Whether every round written so far lost all its clients (failed or rejected): such a
        run trained nothing, whatever its exit code says."""
        try:
            with self.metrics_path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError:
            return False

        def count(row: dict, key: str) -> int:
            return int(float(row.get(key) or 0))

        return bool(rows) and all(count(r, "clients_failed") + count(r, "clients_rejected")
                                  >= count(r, "clients_sampled") for r in rows)

    def status(self, state: str, **info: Any) -> None:
        """Atomic write of status.json: {"state": running|done|failed, ...}."""
        tmp = self.path / f".status.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"state": state, "time": time.time(), **info}))
        tmp.replace(self.path / "status.json")

    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "status.json").read_text())
        except (OSError, ValueError):
            return {}


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def finished_run_config(path: str | Path):
    """The RunConfig of a finished run folder (config.toml and model/), for the commands that act on a
    run's result (fedsim distill, fedsim steal); ConfigError in one line otherwise."""
    from fedsim.config import ConfigError, load_config, read_toml

    run = Path(path)
    if not (run / "config.toml").is_file() or not (run / "model").is_dir():
        raise ConfigError(f"{run} is not a finished run folder (config.toml and model/ expected)")
    return load_config(read_toml(run / "config.toml"))
