"""The delivery index on Flower's in-memory LinkState (fedsim/app/delivery_index.py): nodes
without a waiting message answer at once, and no message is ever hidden from its node."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from fedsim.app.delivery_index import index_deliveries


class ScanState:
    """Flower's semantics in small: messages stored in a list, each ask scans them all."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.stored: list = []
        self.scans = 0

    def store_message_ins(self, message):
        with self.lock:
            self.stored.append(message)
            return message.metadata.message_id

    def get_message_ins(self, node_id, limit, *, run_id=None):
        with self.lock:
            self.scans += 1
            found = [m for m in self.stored if m.metadata.dst_node_id == node_id and not m.delivered][:limit]
            for m in found:
                m.delivered = True
            return found


def message(k: int, node: int):
    return SimpleNamespace(metadata=SimpleNamespace(message_id=f"m{k}", dst_node_id=node), delivered=False)


def test_nodes_without_a_message_are_not_scanned_and_waiting_ones_get_theirs() -> None:
    state = ScanState()
    assert index_deliveries(state) and index_deliveries(state)  # idempotent
    assert all(state.get_message_ins(node_id=n, limit=1) == [] for n in range(1000))
    assert state.scans == 0
    state.store_message_ins(message(0, 7))
    state.store_message_ins(message(1, 7))
    got = [state.get_message_ins(node_id=n, limit=1) for n in range(1000)]
    assert [m.metadata.message_id for ms in got for m in ms] == ["m0"]
    assert state.get_message_ins(node_id=7, limit=1)[0].metadata.message_id == "m1"
    assert state.get_message_ins(node_id=7, limit=1) == []  # found nothing: node 7 leaves the index
    scans = state.scans
    assert state.get_message_ins(node_id=7, limit=1) == [] and state.scans == scans


def test_a_sweep_racing_the_pushes_delivers_every_message_exactly_once() -> None:
    state = ScanState()
    index_deliveries(state)
    nodes, n_messages = 50, 2000
    delivered: list[str] = []
    done = threading.Event()

    def sweep() -> None:  # the engine's thread: every node, again and again
        while True:
            finished = done.is_set()  # read before the sweep: a sweep after the last push follows
            for node in range(nodes):
                delivered.extend(m.metadata.message_id for m in state.get_message_ins(node_id=node, limit=1))
            if finished:
                return

    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    for k in range(n_messages):
        state.store_message_ins(message(k, (k * 7) % nodes))
    done.set()
    sweeper.join(timeout=60)
    # messages still waiting after the last sweep are not hidden: asking each node finds them
    for node in range(nodes):
        while got := state.get_message_ins(node_id=node, limit=1):
            delivered.extend(m.metadata.message_id for m in got)
    assert sorted(delivered) == sorted(f"m{k}" for k in range(n_messages))


def test_a_state_without_the_two_methods_is_left_alone() -> None:
    assert index_deliveries(SimpleNamespace()) is False
