"""Client mod: misbehaving clients' model-level attacks (fedsim/data/malicious.py says who).

A malicious client (``malicious-share`` > 0, its partition id among ``malicious_ids``) trains
honestly, then, for ``malicious-kind``:

- ``sign-flip``: sends -s x its update (the weights' change, or its gradient in FedSGD);
- ``scale``: sends s x its update (a boosted update);
- ``noise``: sends Gaussian noise of s x the update's RMS per coordinate instead, drawn from
  (seed, "malicious-noise", round, client);

with s = ``malicious-scale``; non-float arrays are left alone. The reply's ``meta`` says
``malicious`` = kind (the server's ledger and metrics mark these clients from the same seeded
set). Innermost of the mods, so compression encodes what the attacker sends. Data-level
kinds (label-flip, backdoor) act on the samples the client holds instead (fedsim/data/clients.py).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType

from fedsim.app.node_data import client_id
from fedsim.data.malicious import MODEL_KINDS, malicious_ids
from fedsim.records.wire import to_array_record, to_numpy_dict
from fedsim.rng import derive


def malicious_mod(msg: Message, context: Context, call_next) -> Message:
    run = context.run_config
    share, kind = float(run.get("malicious-share", 0.0)), str(run.get("malicious-kind", "sign-flip"))
    if msg.metadata.message_type != MessageType.TRAIN or share <= 0 or kind not in MODEL_KINDS:
        return call_next(msg, context)
    seed, pid = int(run.get("seed", 0)), client_id(context)
    if pid not in malicious_ids(seed, int(run.get("num-clients", 1)), share):
        return call_next(msg, context)
    sent = to_numpy_dict(msg.content["arrays"])
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    content = reply.content
    meta = content["meta"] if "meta" in content.config_records else ConfigRecord()
    gradient = str(meta.get("payload", "weights")) == "gradient"
    rnd = int(msg.content["config"]["server-round"])
    local = to_numpy_dict(content["arrays"])
    rng = derive(seed, "malicious-noise", rnd, pid)
    s = float(run.get("malicious-scale", 4.0))
    out = {}
    for k, v in local.items():
        if not np.issubdtype(v.dtype, np.floating):
            out[k] = v
            continue
        update = v if gradient else v - sent[k]
        if kind == "sign-flip":
            bad = -s * update
        elif kind == "scale":
            bad = s * update
        else:
            rms = float(np.sqrt(np.mean(np.square(update, dtype=np.float64)))) if update.size else 0.0
            bad = rng.standard_normal(update.shape) * s * rms
        out[k] = (bad if gradient else sent[k] + bad).astype(v.dtype)
    content["arrays"] = to_array_record(out)
    content["meta"] = ConfigRecord({**dict(meta), "malicious": kind})
    return reply
