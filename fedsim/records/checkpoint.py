"""Checkpoints of a run: what the server needs to continue after round r.

A checkpoint is one file ``checkpoints/round-NNNNNN.ckpt``: a JSON header line
(format, round, payload size and SHA-256) then the pickled payload. It is
written atomically (temporary file, fsync, rename, fsync of the folder), so a
crash leaves either the old set of checkpoints or the new one; a file that is
truncated or altered later fails its checksum on load and the previous one is
used, with one line saying so. The last ``keep`` are kept.

What goes in is gathered by :func:`state_of`: an object lists the attributes
that outlive a round in a class attribute ``checkpointed`` (a tuple of names),
and every attribute whose value itself declares ``checkpointed`` (a selector
inside a strategy, the inner strategy of a wrapper) is walked in turn. So each
strategy layer names its own state next to the code that changes it, and
nothing else of the object (Flower handles, callbacks, the grid) is pickled.

Written by hand: torch.save/pickle give no checksum or atomic replace, and
Flower has no checkpointing of a server's state.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "fedsim-checkpoint/1"
FOLDER = "checkpoints"


class CheckpointError(RuntimeError):
    """No usable checkpoint (none written, or every one corrupt)."""


def state_of(obj: Any) -> dict[str, Any]:
    """{name: value} of the attributes ``obj``'s classes list in ``checkpointed``
    (walked into values that declare their own). The values themselves, not copies:
    pickle them before ``obj`` changes again, as :meth:`Checkpoints.save` does."""
    out = {}
    for name in _names(obj):
        value = getattr(obj, name)
        out[name] = {"__state__": state_of(value)} if _declares(value) else value
    return out


def load_state(obj: Any, state: dict[str, Any]) -> None:
    """Inverse of :func:`state_of` on an object built the same way; ``obj`` takes over the values
    (a checkpoint's payload, unpickled for it alone)."""
    names = set(_names(obj))
    if set(state) != names:
        raise CheckpointError(f"checkpoint holds {sorted(state)} for {type(obj).__name__}, "
                              f"which keeps {sorted(names)}: the run's strategy changed")
    for name, value in state.items():
        if isinstance(value, dict) and set(value) == {"__state__"}:
            load_state(getattr(obj, name), value["__state__"])
        else:
            setattr(obj, name, value)


def _declares(obj: Any) -> bool:
    return any("checkpointed" in cls.__dict__ for cls in type(obj).__mro__)


def _names(obj: Any) -> list[str]:
    names: list[str] = []
    for cls in type(obj).__mro__:
        for name in cls.__dict__.get("checkpointed", ()):
            if name not in names:
                names.append(name)
    return names


@dataclass
class Checkpoint:
    round: int
    payload: dict[str, Any] | None  # None when loaded without unpickling
    path: Path


class Checkpoints:
    """The checkpoints of one run folder."""

    def __init__(self, run_dir: Path, keep: int = 2) -> None:
        self.root = Path(run_dir) / FOLDER
        self.keep = max(int(keep), 1)

    def path(self, server_round: int) -> Path:
        return self.root / f"round-{server_round:06d}.ckpt"

    def rounds(self) -> list[int]:
        """Rounds with a checkpoint file, newest first (not yet verified)."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.glob("round-*.ckpt"):
            try:
                found.append(int(p.stem.split("-")[1]))
            except (IndexError, ValueError):
                continue
        return sorted(found, reverse=True)

    def save(self, server_round: int, payload: dict[str, Any]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        body = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        header = json.dumps({"format": FORMAT, "round": server_round, "bytes": len(body),
                             "sha256": hashlib.sha256(body).hexdigest()})
        final = self.path(server_round)
        atomic_write(final, header.encode() + b"\n" + body)
        for old in self.rounds()[self.keep:]:
            self.path(old).unlink(missing_ok=True)
        return final

    def load(self, server_round: int, unpickle: bool = True) -> Checkpoint:
        """The checkpoint of ``server_round``, checksum checked; without ``unpickle`` its payload
        is None (a check that it would load, without building its objects)."""
        path = self.path(server_round)
        try:
            raw = path.read_bytes()
            head, body = raw.split(b"\n", 1)
            header = json.loads(head)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{path.name} is unreadable ({type(err).__name__})") from None
        if header.get("format") != FORMAT:
            raise CheckpointError(f"{path.name} is not a {FORMAT} file")
        if len(body) != header.get("bytes") or hashlib.sha256(body).hexdigest() != header.get("sha256"):
            raise CheckpointError(f"{path.name} is corrupt (size or checksum does not match)")
        return Checkpoint(int(header["round"]), pickle.loads(body) if unpickle else None, path)

    def latest(self, warn=print, unpickle: bool = True) -> Checkpoint:
        """The newest checkpoint that passes its checksum; ``warn`` gets one line per one skipped."""
        problems = []
        for rnd in self.rounds():
            try:
                return self.load(rnd, unpickle)
            except CheckpointError as err:
                problems.append(str(err))
                warn(f"fedsim: checkpoint {err}; using the one before it")
        raise CheckpointError(f"no usable checkpoint in {self.root}"
                              + (f" ({'; '.join(problems)})" if problems else ""))


def atomic_write(path: Path, data: bytes) -> None:
    """Write, fsync, rename over ``path``, fsync the folder: the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
