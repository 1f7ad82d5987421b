"""What the ServerApp checkpoints after a round and restores on ``--resume``.

A checkpoint (fedsim/records/checkpoint.py) holds, after round r:
- the global weights after round r (numpy arrays, exact bytes);
- every strategy layer's state (``state_of(strategy)``: FedEMD's cumulative histogram,
  Shapley values, Maverick counts, the downlink's model copy / residual / codes, the
  ledger's document, byte totals, SalUn's mask);
- the server EMA of the global models, and the round-0 scores and last row the final
  status reports.
metrics.csv, the ledger's stored rounds, recorded observations and secrets are files the
run folder already holds: on restore, metrics.csv is cut back to rounds <= r (rows a crash
wrote after the checkpoint go; the rounds are run again, with the same seeds, and write
the same bytes), and the clients' state files of later rounds are removed.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from flwr.app import ArrayRecord

from fedsim.records.checkpoint import FOLDER, Checkpoints, atomic_write, load_state, state_of
from fedsim.records.wire import to_array_record, to_numpy_dict

CLIENT_STATE = "clients"  # under checkpoints/: fedsim/app/state_mod.py's files


class RunState:
    def __init__(self, folder, cfg, strategy, evaluator, recorder) -> None:
        self.folder, self.cfg = folder, cfg
        self.strategy, self.evaluator, self.recorder = strategy, evaluator, recorder
        self.checkpoints = Checkpoints(folder.path, keep=cfg.checkpoint_keep)

    @property
    def client_dir(self) -> Path:
        return self.folder.path.resolve() / FOLDER / CLIENT_STATE

    def oldest_kept(self) -> int:
        """The round the oldest kept checkpoint resumes from (0: none yet)."""
        rounds = self.checkpoints.rounds()
        return rounds[-1] if rounds else 0

    def due(self, rnd: int) -> bool:
        every = self.cfg.checkpoint_every
        return every > 0 and rnd > 0 and (rnd % every == 0 or rnd == self.cfg.rounds)

    def save(self, rnd: int, arrays: ArrayRecord) -> None:
        ema = self.evaluator.ema
        self.checkpoints.save(rnd, {
            "round": rnd,
            "arrays": to_numpy_dict(arrays),  # views: save() pickles them at once
            "strategy": state_of(self.strategy),
            "ema": None if ema is None else _to_cpu(ema.state_dict()),
            "recorder": {"initial": self.recorder.initial, "last": self.recorder.last},
        })

    def restore(self, warn) -> tuple[int, ArrayRecord]:
        """(round r, global weights after r) of the last good checkpoint; every layer restored."""
        ckpt = self.checkpoints.latest(warn=warn)
        state = ckpt.payload
        load_state(self.strategy, state["strategy"])
        if self.evaluator.ema is not None:
            if state["ema"] is None:
                raise ValueError("the checkpoint holds no EMA but the run has ema-decay > 0")
            self.evaluator.ema.load_state_dict(state["ema"])
        self.recorder.initial, self.recorder.last = state["recorder"]["initial"], state["recorder"]["last"]
        cut_metrics(self.folder.metrics_path, ckpt.round)
        drop_client_state_after(self.client_dir, ckpt.round)
        arrays = to_array_record(state["arrays"])
        return ckpt.round, arrays


def cut_metrics(path: Path, last_round: int) -> None:
    """Keep the header and the rows of rounds <= last_round (atomic rewrite)."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= last_round]
    out = io.StringIO(newline="")
    csv.writer(out).writerows(kept)
    atomic_write(path, out.getvalue().encode())


def drop_client_state_after(root: Path, last_round: int) -> None:
    if not root.is_dir():
        return
    for path in root.glob("*/round-*.state"):
        m = re.fullmatch(r"round-(\d+)", path.stem)
        if m and int(m.group(1)) > last_round:
            path.unlink(missing_ok=True)


def _to_cpu(value):
    if hasattr(value, "detach"):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value

