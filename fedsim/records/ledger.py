"""The training ledger: what federated unlearning needs to know about a finished run.

Kept by the server while it trains (strategies/unlearning/ledger.py) under ``RUN/ledger/``:

- ``ledger.json``: seed, ``every`` (Delta_t) and, per round, the partition ids
  whose updates were aggregated with their example counts, and whether the
  round's updates are stored; rewritten atomically after every round;
- ``initial.safetensors``: the global model of round 1 (the start of any replay);
- every ``every`` rounds (1, 1 + every, ...): ``round_RRR/global.safetensors``
  (the model the clients started from) and ``round_RRR/client_PPPP.safetensors``
  (each aggregated client's update: weights - global, or its FedSGD gradient),
  as float16 unless ``full_precision``. FedEraser calibrates with them.

The stored updates are bounded by ``max_bytes``: when the next round would pass
it, no further updates are stored (``ledger.json`` says from which round), the
participant log goes on. Size: (rounds / every) x clients per round x |theta|.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

LEDGER = "ledger"


def _save(tensors: dict[str, np.ndarray], path: Path, half: bool) -> int:
    out = {}
    for k, v in tensors.items():
        t = torch.from_numpy(np.array(v, copy=True))  # read-only views (zero-copy records) need a copy
        out[k] = t.half() if half and t.is_floating_point() else t
    save_file(out, str(path))
    return path.stat().st_size


class LedgerWriter:
    checkpointed = ("stored_bytes", "doc")  # fedsim/records/checkpoint.py

    def __init__(self, run_dir: Path, *, seed: int, every: int, max_bytes: float,
                 full_precision: bool = False, malicious: frozenset[int] = frozenset(),
                 malicious_kind: str = "") -> None:
        """every: store updates every that many rounds (0: participants only); malicious: the
        misbehaving partition ids of a robustness study, listed in the ledger with their kind."""
        self.root = Path(run_dir) / LEDGER
        self.root.mkdir(parents=True, exist_ok=True)
        self.every, self.max_bytes, self.half = every, max_bytes, not full_precision
        self.stored_bytes = 0
        self.doc = {"seed": seed, "every": every, "precision": "float16" if self.half else "float32",
                    "stopped_storing_at": None, "rounds": []}
        if malicious:
            self.doc["malicious"] = {"kind": malicious_kind, "partitions": sorted(int(p) for p in malicious)}

    def stores(self, server_round: int) -> bool:
        return (self.every > 0 and (server_round - 1) % self.every == 0
                and self.doc["stopped_storing_at"] is None)

    def start(self, initial: dict[str, np.ndarray]) -> None:
        if not (self.root / "initial.safetensors").exists():
            _save(initial, self.root / "initial.safetensors", half=False)  # replays start exactly here

    def open_round(self, server_round: int, sent: dict[str, np.ndarray], expected: int) -> None:
        """A round begins: up to ``expected`` updates will be added (its selected clients)."""
        self._round, self._sent, self._expected = server_round, sent, expected
        self._entries: list[tuple[int, int]] = []
        self._folder: Path | None = None
        self._decided = False

    def _storing(self) -> bool:
        """Decided at the round's first update: store if due and the budget holds ``expected`` more."""
        if not self._decided:
            self._decided = True
            if self.stores(self._round):
                per_update = sum(v.size for v in self._sent.values()) * (2 if self.half else 4)
                if self.stored_bytes + per_update * (self._expected + 1) > self.max_bytes:
                    self.doc["stopped_storing_at"] = self._round
                else:
                    self._folder = self.root / f"round_{self._round:03d}"
                    self._folder.mkdir(exist_ok=True)
                    self.stored_bytes += _save(self._sent, self._folder / "global.safetensors", self.half)
        return self._folder is not None

    def add(self, partition_id: int, num_examples: int,
            update: Callable[[], dict[str, np.ndarray]]) -> None:
        """One aggregated client; ``update()`` (its weights - global, or its gradient) is asked
        for, and written at once, only in a storing round."""
        if self._storing():
            self.stored_bytes += _save(update(), self._client_file(partition_id), self.half)
        self._entries.append((int(partition_id), int(num_examples)))

    def close_round(self, aggregated: list[int]) -> None:
        """The round's clients that were in the end aggregated: the others' entries (and files) go."""
        keep = set(aggregated)
        for pid, _ in self._entries:
            if pid not in keep and self._folder is not None:
                path = self._client_file(pid)
                self.stored_bytes -= path.stat().st_size
                path.unlink()
        entries = sorted(e for e in self._entries if e[0] in keep)
        self.doc["rounds"].append({"round": self._round, "stored": self._folder is not None and bool(entries),
                                   "participants": [p for p, _ in entries],
                                   "num_examples": [n for _, n in entries]})
        tmp = self.root / f".ledger.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.doc, indent=1))
        tmp.replace(self.root / "ledger.json")

    def record(self, server_round: int, sent: dict[str, np.ndarray],
               entries: list[tuple[int, int, dict[str, np.ndarray] | None]]) -> None:
        """A whole round at once: entries (partition id, num examples, update or None)."""
        self.open_round(server_round, sent, len(entries))
        for pid, n, update in entries:
            self.add(pid, n, lambda u=update: u)
        self.close_round([pid for pid, _, _ in entries])

    def _client_file(self, partition_id: int) -> Path:
        return self._folder / f"client_{partition_id:04d}.safetensors"


@dataclass
class Ledger:
    """A run's ledger, read back (``load_ledger``)."""
    root: Path
    seed: int
    every: int
    rounds: list[dict] = field(default_factory=list)
    stopped_storing_at: int | None = None
    malicious: dict = field(default_factory=dict)  # {"kind", "partitions"} of a robustness study; {} none

    def participants(self, server_round: int) -> dict[int, int]:
        """partition id -> examples, of the updates aggregated in that round."""
        row = self._row(server_round)
        return dict(zip(row["participants"], row["num_examples"]))

    def stored_rounds(self) -> list[int]:
        return [r["round"] for r in self.rounds if r["stored"]]

    def initial(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.root / "initial.safetensors"))

    def global_at(self, server_round: int) -> dict[str, torch.Tensor]:
        return self._load(server_round, "global")

    def update(self, server_round: int, partition_id: int) -> dict[str, torch.Tensor]:
        return self._load(server_round, f"client_{partition_id:04d}")

    def _row(self, server_round: int) -> dict:
        for row in self.rounds:
            if row["round"] == server_round:
                return row
        raise KeyError(f"round {server_round} is not in the ledger ({len(self.rounds)} rounds)")

    def _load(self, server_round: int, name: str) -> dict[str, torch.Tensor]:
        path = self.root / f"round_{server_round:03d}" / f"{name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"the ledger holds no {name} for round {server_round} "
                                    f"(stored rounds: {self.stored_rounds() or 'none'})")
        return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}


def load_ledger(run_dir: Path) -> Ledger:
    root = Path(run_dir) / LEDGER
    if not (root / "ledger.json").is_file():
        raise FileNotFoundError(f"{run_dir} has no ledger (ledger/ledger.json); it was trained before ledgers "
                                "existed or did not finish its first round")
    doc = json.loads((root / "ledger.json").read_text())
    return Ledger(root=root, seed=int(doc["seed"]), every=int(doc["every"]), rounds=doc["rounds"],
                  stopped_storing_at=doc.get("stopped_storing_at"), malicious=doc.get("malicious", {}))
