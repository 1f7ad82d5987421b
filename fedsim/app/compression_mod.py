"""Client-side mod of update compression (the server side: strategies/compression/compressed.py).

Like Flower's DP mods it wraps the ClientApp's train function and acts only
when the server's TRAIN config asks for it (``compression`` != "none"):

- before training, a ``downlink`` record (codes of the global model's change
  since this client's last round) is applied to the copy of the global model
  kept in the node's context, and replaced by the dense model;
- after training, the update (local weights - global weights, or the FedSGD
  gradient) plus the error-feedback residual is encoded into one byte array
  (record ``compressed``); the new residual stays in the context.
  SalUn's saliency mask (payload "mask") is not an update and is already 1 bit
  per weight: it travels as is and leaves the residual alone.

Context state persists across rounds for a node (in simulation and on a
SuperNode), so residuals and the model copy never live in a client object.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedsim.app.node_data import client_id
from fedsim.compression.codecs import decode_update, encode_update, from_settings
from fedsim.records.wire import to_array_record, to_numpy_dict
from fedsim.rng import derive
from strategies.compression.compressed import COMPRESSED, DOWNLINK, blob_array, layout_of

RESIDUAL = "compression-residual"
VIEW = "compression-view"
VIEW_ROUND = "compression-view-round"


class DownlinkOutOfSync(RuntimeError):
    """The server sent codes from a round this client's model copy is not at."""


def compression_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if msg.metadata.message_type != MessageType.TRAIN or "config" not in msg.content.config_records:
        return call_next(msg, context)
    config = msg.content["config"]
    if str(config.get("compression", "none")) == "none":
        return call_next(msg, context)
    codec, feedback = from_settings(config)
    server_round = int(config["server-round"])
    if DOWNLINK in msg.content.array_records:
        msg.content = _rebuild_global(msg.content, context, codec)
    if bool(config.get("downlink", False)):
        context.state[VIEW] = msg.content["arrays"]
        context.state[VIEW_ROUND] = ConfigRecord({"round": server_round - 1})
    sent = to_numpy_dict(msg.content["arrays"])
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    t0 = time.perf_counter()
    content = reply.content
    meta = content["meta"] if "meta" in content.config_records else ConfigRecord()
    if str(meta.get("payload", "weights")) == "mask":
        return reply
    local = to_numpy_dict(content["arrays"])
    if str(meta.get("payload", "weights")) == "gradient":
        update = {k: local[k] for k in sent}
    else:
        update = {k: local[k] - sent[k] if np.issubdtype(sent[k].dtype, np.floating) else local[k]
                  for k in sent}
    residual = dict(to_numpy_dict(context.state[RESIDUAL])) \
        if feedback and RESIDUAL in context.state.array_records else {}
    pid = client_id(context)
    rng = derive(int(context.run_config.get("seed", 0)), "uplink", server_round, pid) if codec.needs_rng else None
    data, _ = encode_update(codec, update, residual=residual if feedback else None, rng=rng)
    if feedback:
        context.state[RESIDUAL] = to_array_record(residual)
    meta = ConfigRecord({**dict(meta), "codec": codec.spec(), "encode-s": time.perf_counter() - t0})
    out = RecordDict({COMPRESSED: blob_array(data), "meta": meta})
    for key, record in content.array_records.items():  # other arrays (SCAFFOLD's dc_i) travel dense
        if key != "arrays":
            out[key] = record
    for key, record in content.metric_records.items():
        out[key] = record
    reply.content = out
    return reply


def _rebuild_global(content: RecordDict, context: Context, codec) -> RecordDict:
    """Dense global model w~_{t-1} from the stored copy w~_s and the codes of rounds s+1 .. t-1."""
    config = content["config"]
    base = int(config["downlink-base"])
    held = int(context.state[VIEW_ROUND]["round"]) if VIEW_ROUND in context.state.config_records else None
    if held != base:
        raise DownlinkOutOfSync(f"server sent model codes from round {base}, this client holds round {held}")
    view = {k: v.copy() for k, v in to_numpy_dict(context.state[VIEW]).items()}
    layout = layout_of(view)
    codes = to_numpy_dict(content[DOWNLINK])
    for key in sorted(codes, key=lambda k: int(k.split("-")[1])):
        delta = decode_update(codec, codes[key].tobytes(), layout)
        for k, d in delta.items():
            view[k] = (view[k] + d).astype(view[k].dtype) if np.issubdtype(d.dtype, np.floating) else np.array(d)
    out = RecordDict({"arrays": to_array_record(view),
                      "config": config})
    for key, record in content.config_records.items():  # e.g. the simulation's secrets mark
        if key != "config":
            out[key] = record
    for key, record in content.array_records.items():  # e.g. SCAFFOLD's control variate
        if key != DOWNLINK:
            out[key] = record
    return out
