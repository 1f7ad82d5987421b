"""Which simulated nodes have a message waiting: an index for Flower's delivery sweep.

Flower's simulation engine hands messages to its Ray actors from a thread that,
every 0.1 s, asks the in-memory LinkState for the next message of *every
registered node* (``add_messages_to_queue`` in flwr/server/superlink/fleet/vce/
vce_api.py); each ask takes the state's lock and scans every stored message.
With 1000 registered nodes and fedsim's window of 16 messages in flight that
is ~16,000 message checks ten times a second, under the GIL, on a 2-core machine
where the two client actors need the CPU: py-spy put the sweep at 17 % of the
simulation process's samples at 1000 clients per round. The cost grows with the
registered nodes, not the clients per round: with 10,000 registered clients and
100 per round the first round took 31.8 s; with the index, 3.4-3.9 s
(experiments/bench_simulation.py --registered 10000:100). No setting of the
engine changes it.

Written by hand because nothing in Flower offers it: :func:`index_deliveries`
wraps the state's ``store_message_ins`` and ``get_message_ins`` on this one
state object (the engine, its threads and its actors stay Flower's) with a set
of the nodes that may have an undelivered message. A node outside the set
answers "nothing" at once; a node in it is asked as before and leaves the set
when the ask finds nothing. One lock orders "store, then mark" against "find
nothing, then unmark" (the state's own reentrant lock, so that Flower's paths that store under
it cannot deadlock against these), so no message is ever hidden: at worst a node is asked
once more than needed. Expired messages are found by the same ask and dropped as
before. Simulation only (deployed SuperNodes pull their own messages).
"""

from __future__ import annotations

import threading
from typing import Any

INSTALLED = "_fedsim_delivery_index"


def index_deliveries(state: Any) -> bool:
    """Install the index on a LinkState object (idempotent); False where the state lacks the two
    methods this wraps (another Flower version's state: left as it is)."""
    if getattr(state, INSTALLED, False):
        return True
    store, get = getattr(state, "store_message_ins", None), getattr(state, "get_message_ins", None)
    if store is None or get is None:
        return False
    waiting: set[int] = set()
    lock = getattr(state, "lock", None) or threading.RLock()

    def store_message_ins(message, *args, **kwargs):
        with lock:
            message_id = store(message, *args, **kwargs)
            if message_id is not None:
                waiting.add(message.metadata.dst_node_id)
            return message_id

    def get_message_ins(node_id, limit, *args, **kwargs):
        if node_id not in waiting:  # set membership under the GIL: a racing store marks after storing
            return []
        with lock:
            found = get(node_id, limit, *args, **kwargs)
            if not found:
                waiting.discard(node_id)
            return found

    state.store_message_ins, state.get_message_ins = store_message_ins, get_message_ins
    setattr(state, INSTALLED, True)
    return True
