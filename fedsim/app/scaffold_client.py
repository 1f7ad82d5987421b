"""SCAFFOLD on the client (fedsim/models/scaffold.py has the math, strategies/scaffold.py the server).

``start``: when the server's TRAIN message carries c (``scaffold-c``), read c_i from the node
context (zeros at first), note the weights x the round starts from, pick option I or II
(``scaffold-variate``: auto is II for plain SGD, I otherwise) and, for option I, compute
c_i+ at x before training. The caller trains with ``control.correction`` (c - c_i) added to
every step's gradient. ``finish``: keep c_i+ in the context (state_mod checkpoints it with
the rest) and return dc_i = c_i+ - c_i, the reply's ``scaffold-dc``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from flwr.app import ArrayRecord, Context, Message

from fedsim.models import scaffold
from fedsim.models.scaffold import CONTROL, DELTA, STATE
from fedsim.records.wire import to_array_record, to_state_dict
from fedsim.rng import torch_generator

__all__ = ["CONTROL", "DELTA", "STATE", "Control", "finish", "start"]


class Control(NamedTuple):
    """A SCAFFOLD round on this client: c, c_i, c - c_i, the weights x it started from, the option."""
    c: dict
    c_i: dict
    correction: dict
    x: dict
    option: str
    fresh: dict | None  # option I: c_i+ computed at x before training


def start(msg: Message, context: Context, ws, images: torch.Tensor, labels: torch.Tensor, *, seed: int, rnd: int,
          pid: int, batch_size: int, optimizer: str, momentum: float) -> Control | None:
    """None unless the server sent SCAFFOLD's c (strategies/scaffold.py); else the round's control state."""
    if CONTROL not in msg.content.array_records:
        return None
    c = to_state_dict(msg.content[CONTROL])
    held = context.state.array_records.get(STATE)
    c_i = to_state_dict(held) if held is not None else {k: torch.zeros_like(v) for k, v in c.items()}
    x = {k: p.detach().cpu().clone() for k, p in ws.model.named_parameters()}
    chosen = scaffold.option(str(msg.content["config"].get("scaffold-variate", "auto")), optimizer, momentum)
    fresh = scaffold.variate_i(ws.model, ws.task, images, labels, batch_size=batch_size, like=c,
                               generator=torch_generator(seed, "scaffold", rnd, pid)) if chosen == "i" else None
    return Control(c, c_i, scaffold.correction(c, c_i), x, chosen, fresh)


def finish(control: Control, context: Context, ws, steps: int, lr: float) -> ArrayRecord:
    """Keep c_i+ in the node context; return dc_i = c_i+ - c_i as the reply's record."""
    if control.option == "i":
        new = control.fresh
    else:
        y = {k: p.detach().cpu() for k, p in ws.model.named_parameters()}
        new = scaffold.variate_ii(control.c_i, control.c, control.x, y, max(steps, 1), lr)
    context.state[STATE] = to_array_record(new)
    return to_array_record({k: new[k] - control.c_i[k] for k in control.c})
