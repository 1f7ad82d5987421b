"""What a simulated client trained on in a recorded round: the ground truth of an attack.

Written by the client (fedsim/app/client_app.py), only in simulation and only for a
recorded client and round: the server marks those TRAIN messages with a ``secrets``
record naming the run folder (strategies/wrappers/secrets.py). A SuperNode with its own
data never gets the mark and writes nothing. The server never reads these files; only
the attack runner's scoring does (attacks/scoring.py), to score against exactly the
samples the observed update came from.

One file per client and round, beside the observations:
``secrets/round_RRR/client_PPPP.safetensors`` with, over the S samples used, in the order
they were used (step 0's batch first, each batch in its own order):

- ``indices`` (S,) int64: indices into the run's train split (the partition's samples;
  FedSGD: the one batch; local training: every step's batch, so each epoch's order);
- ``step`` (S,) int64: the local step each sample was used in (epoch = step // steps per epoch);
- ``t`` (S,) int64 and ``eps`` (S, C, H, W) float32, diffusion models only: the timestep and
  noise each sample was trained with (4 bytes per pixel per use: the size of the images used);

and string metadata: payload ("gradient" | "weights"), epochs, steps.
The same config and seed give the same file (the client's draws come from
(seed, "train", round, client)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

RECORD = "secrets"  # the TRAIN message's ConfigRecord that asks for the file; key "dir": the run folder


class StepLike(Protocol):  # fedsim.models.train.Step
    indices: torch.Tensor
    t: torch.Tensor | None
    eps: torch.Tensor | None


@dataclass(frozen=True)
class ClientSecrets:
    indices: torch.Tensor  # (S,) into the train split, in the order used
    step: torch.Tensor  # (S,) local step of each use
    payload: str  # "gradient" (FedSGD: one batch) | "weights" (local training)
    epochs: int
    steps: int
    t: torch.Tensor | None = None  # (S,)
    eps: torch.Tensor | None = None  # (S, C, H, W)

    @property
    def steps_per_epoch(self) -> int:
        return max(self.steps // max(self.epochs, 1), 1)

    def first_use(self) -> torch.Tensor:
        """(N,) the distinct samples in the order of their first use: FedSGD's batch as drawn;
        for local training, the first epoch's order (for a full pass, the partition)."""
        seen: dict[int, None] = {}
        for i in self.indices.tolist():
            seen.setdefault(i, None)
        return torch.tensor(list(seen), dtype=torch.long)


def path_of(root: Path, server_round: int, partition_id: int) -> Path:
    return Path(root) / "secrets" / f"round_{server_round:03d}" / f"client_{partition_id:04d}.safetensors"


def save(root: Path, server_round: int, partition_id: int, trace: Sequence[StepLike], train_index: np.ndarray, *,
         payload: str, epochs: int) -> Path:
    """Write the trace of one client's round. trace: one entry per local step with ``indices``
    into the client's own samples; train_index (n,) maps those to indices of the train split."""
    index = torch.as_tensor(np.asarray(train_index), dtype=torch.long)
    tensors = {"indices": torch.cat([index[s.indices.long()] for s in trace]),
               "step": torch.cat([torch.full((len(s.indices),), k, dtype=torch.long) for k, s in enumerate(trace)])}
    if trace and trace[0].t is not None:
        tensors["t"] = torch.cat([s.t.long().cpu() for s in trace])
        tensors["eps"] = torch.cat([s.eps.float().cpu() for s in trace])
    path = path_of(root, server_round, partition_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"payload": payload, "epochs": str(epochs), "steps": str(len(trace))}
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)  # a reader never sees half a file
    return path


def load(root: Path, server_round: int, partition_id: int) -> ClientSecrets | None:
    """The client's secrets of that round, or None if the run did not write them (an older run,
    a deployment, an unrecorded client)."""
    path = path_of(root, server_round, partition_id)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return ClientSecrets(indices=tensors["indices"], step=tensors["step"], payload=meta.get("payload", "weights"),
                         epochs=int(meta.get("epochs", 1)), steps=int(meta.get("steps", 1)),
                         t=tensors.get("t"), eps=tensors.get("eps"))
