"""Client-side mod: keep the node context's state across a resume (simulation only).

State that outlives a round lives in the node's context (compression_mod.py's
error-feedback residual and model copy). When the server marks a TRAIN message with
``client-state`` (strategies/wrappers/client_state.py), this mod, outermost:

- before training, in a context that holds none of it yet (a fresh node after
  ``fedsim run --resume``), loads the newest file this client wrote for a round before
  this one: exactly what the context of an uninterrupted run would hold, since a client
  writes a file every round it trains in and its state changes only then;
- after training, writes the context's state to ``DIR/<client>/round-NNNNNN.state``
  (atomically) and deletes files older than the newest one at or before ``keep-from``
  (no kept server checkpoint can resume from before that round).

A context with no state writes nothing. Pickled dicts of numpy arrays and config values.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from fedsim.app.node_data import client_id
from fedsim.records.checkpoint import atomic_write
from fedsim.records.wire import to_array_record, to_numpy_dict
from strategies.wrappers.client_state import RECORD

RESTORED = "client-state-restored"  # set in a context once it has been restored (or had nothing to restore)


def state_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if msg.metadata.message_type != MessageType.TRAIN or RECORD not in msg.content.config_records:
        return call_next(msg, context)
    mark = msg.content[RECORD]
    folder = Path(str(mark["dir"])) / str(client_id(context))
    server_round = int(msg.content["config"]["server-round"])
    if RESTORED not in context.state.config_records:
        saved = _saved_rounds(folder)
        before = [r for r in saved if r < server_round]
        if before:
            _restore(context, folder / _name(max(before)))
        context.state[RESTORED] = ConfigRecord({"round": server_round})
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    state = _state(context)
    if state["arrays"] or state["configs"]:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / _name(server_round), pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
        _prune(folder, int(mark["keep-from"]))
    return reply


def _name(server_round: int) -> str:
    return f"round-{server_round:06d}.state"


def _saved_rounds(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob("round-*.state"))


def _state(context: Context) -> dict:
    """The context's records as plain dicts of views (pickled at once, so nothing is copied first)."""
    return {"arrays": {k: to_numpy_dict(r)
                       for k, r in context.state.array_records.items()},
            "configs": {k: dict(r) for k, r in context.state.config_records.items() if k != RESTORED}}


def _restore(context: Context, path: Path) -> None:
    state = pickle.loads(path.read_bytes())
    for key, arrays in state["arrays"].items():
        context.state[key] = to_array_record(arrays)
    for key, values in state["configs"].items():
        context.state[key] = ConfigRecord(values)


def _prune(folder: Path, keep_from: int) -> None:
    saved = _saved_rounds(folder)
    anchor = max((r for r in saved if r <= keep_from), default=None)
    for r in saved:
        if anchor is not None and r < anchor:
            (folder / _name(r)).unlink(missing_ok=True)
