"""What an honest-but-curious server saw: one client's upload in one round.

An Observation holds exactly what crossed the wire, decoded to tensors: the
global weights the server sent, the client's reply (weights, a FedSGD
gradient, or SalUn's bit-packed saliency mask, as the ``payload`` says), the
number of examples and the reply's metrics, plus the training config the server
sent. Ground truth (the client's images and labels) is never part of it;
attacks take an Observation and a ThreatModel, and only attacks/metrics.py sees
the truth.

Stored under the run folder as
``observations/round_RRR/client_PPP/{sent,received}.safetensors`` and
``meta.json``. A compressed upload is stored as received (decoded, the update the
server aggregated) and as ``received.bin`` (the bytes that travelled).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


@dataclass
class Observation:
    server_round: int
    partition_id: int
    sent: dict[str, torch.Tensor]  # global weights the server sent
    received: dict[str, torch.Tensor]  # the client's reply: weights, gradients, or packed mask bits (uint8)
    payload: str  # "weights" | "gradient" | "mask"
    num_examples: int
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # what the server sent with the weights
    codec: str = ""  # compressed upload: the codec (e.g. "dhq(p=0.01,L=4)"); received is its decoding
    encoded: bytes | None = None  # compressed upload: the bytes that travelled

    def update(self) -> dict[str, torch.Tensor]:
        """Delta w = w_local - w_server (the negative gradient direction); for a
        FedSGD observation, the gradient itself. A mask observation has no update (ValueError)."""
        if self.payload == "mask":
            raise ValueError("a saliency-mask observation (SalUn's mask round) carries no update to attack")
        if self.payload == "gradient":
            return dict(self.received)
        return {k: self.received[k] - self.sent[k] for k in self.sent}


def folder_of(root: Path, server_round: int, partition_id: int) -> Path:
    return Path(root) / "observations" / f"round_{server_round:03d}" / f"client_{partition_id:04d}"


def save(obs: Observation, root: Path) -> Path:
    path = folder_of(root, obs.server_round, obs.partition_id)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in obs.sent.items()}, str(path / "sent.safetensors"))
    save_file({k: v.contiguous() for k, v in obs.received.items()}, str(path / "received.safetensors"))
    meta = {"server_round": obs.server_round, "partition_id": obs.partition_id, "payload": obs.payload,
            "num_examples": obs.num_examples, "metrics": obs.metrics, "config": obs.config,
            "codec": obs.codec, "keys": list(obs.sent)}  # safetensors sorts keys; keep the model's order
    if obs.encoded is not None:
        (path / "received.bin").write_bytes(obs.encoded)
    (path / "meta.json").write_text(json.dumps(meta, indent=1, default=_hex))
    return path


def _hex(value: Any) -> str:
    """bytes in the config sent (SalUn's packed mask) are stored as hex text."""
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def load(path: Path) -> Observation:
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"no observation at {path} (expected meta.json, sent/received.safetensors)")
    meta = json.loads((path / "meta.json").read_text())
    encoded = (path / "received.bin").read_bytes() if (path / "received.bin").is_file() else None
    sent, received = load_file(str(path / "sent.safetensors")), load_file(str(path / "received.safetensors"))
    keys = meta.pop("keys", None) or list(sent)  # the model's order (the order of received.bin)
    return Observation(sent={k: sent[k] for k in keys}, received={k: received[k] for k in keys if k in received},
                       encoded=encoded, **meta)


def list_observations(root: Path) -> list[Path]:
    return sorted(Path(root).glob("observations/round_*/client_*"))
