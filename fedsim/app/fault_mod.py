"""Client-side fault injection for fault-tolerance studies, as a mod (like Flower's DP mods).

With ``client-failure-rate`` > 0, the client of each TRAIN message fails with that
probability, drawn from (seed, "fault", round, client), so a seed says who fails when.
``fault-kind`` says how, each the way it really happens:

- ``raise``: the ClientApp raises; Flower replies with an error.
- ``kill``: the process running the client dies by SIGKILL (a Ray worker in simulation):
  what the kernel's out-of-memory killer does.
- ``hang``: the client sleeps past ``round-timeout``, then replies too late.
- ``nan`` / ``wrong-keys`` / ``huge``: a reply of garbage: NaN weights; arrays under names
  that are not the model's; one array 16x the size of the model's largest.
- ``oom``: the client asks for 1 TiB; numpy's MemoryError is reported with the client id.
- ``mixed``: each failing client draws one of the kinds above from the same generator
  (a killed Ray worker is replaced: fedsim/app/actor_restart.py).

The server's side (fedsim.strategies.fedavg.reply_problem) rejects what is unsound and
counts it; a hang counts as failed once the round's timeout passes.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict

from fedsim.app.node_data import client_id
from fedsim.rng import derive

KINDS = ("raise", "kill", "hang", "nan", "wrong-keys", "huge", "oom")
MIXED = KINDS


class InjectedClientFailure(RuntimeError):
    """Raised on purpose (fault-kind = raise)."""


class ClientOutOfMemory(MemoryError):
    """A client ran out of memory; says which client and round."""


def fault_mod(msg: Message, context: Context, call_next) -> Message:
    run = context.run_config
    rate = float(run.get("client-failure-rate", 0.0))
    if msg.metadata.message_type != MessageType.TRAIN or rate <= 0:
        return call_next(msg, context)
    pid, rnd = client_id(context), int(msg.content["config"]["server-round"])
    draw = derive(int(run.get("seed", 0)), "fault", rnd, pid)
    if draw.random() >= rate:
        return call_next(msg, context)
    kind = str(run.get("fault-kind", "raise"))
    if kind == "mixed":
        kind = MIXED[int(draw.integers(len(MIXED)))]
    where = f"client {pid} in round {rnd}"
    if kind == "raise":
        raise InjectedClientFailure(f"{where} failed on purpose")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        time.sleep(float(run.get("round-timeout", 3600.0)) * 1.5 + 1.0)
        return call_next(msg, context)
    if kind == "oom":
        try:
            np.ones(2**40, dtype=np.uint8)  # refused by the allocator, nothing is touched
        except MemoryError as err:
            raise ClientOutOfMemory(f"{where} ran out of memory ({err})") from None
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    content = reply.content  # a compressed reply has no "arrays": garbage in the model's place
    model = content["arrays"] if "arrays" in content.array_records else msg.content["arrays"]
    arrays = {k: v.numpy() for k, v in model.items()}
    if kind == "nan":
        arrays = {k: np.full(v.shape, np.nan, dtype=np.float32) for k, v in arrays.items()}
    elif kind == "wrong-keys":
        arrays = {f"not-{k}": v for k, v in arrays.items()}
    else:  # huge
        arrays[next(iter(arrays))] = np.zeros(16 * max(v.size for v in arrays.values()), dtype=np.float32)
    out = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()})})
    for key, record in [*content.metric_records.items(), *content.config_records.items()]:
        out[key] = record
    reply.content = out
    return reply
