"""fedsim/app/fault_mod.py: who fails is drawn from the seed, each kind fails the way it
really happens, and the server (strategies/fedavg.py) rejects every garbage reply. The
same faults through Ray: tests/test_simulation.py."""

from __future__ import annotations

import os
import signal
from collections import Counter

import numpy as np
import pytest
from flwr.app import Message, MessageType
from client_messages import context, instruction

from fedsim.app import client_app
from fedsim.app.fault_mod import MIXED, ClientOutOfMemory, InjectedClientFailure, fault_mod
from fedsim.config import RunConfig
from fedsim.rng import derive
from strategies.fedavg import reply_problem

pytestmark = pytest.mark.usefixtures("task_identity")

CFG = RunConfig(num_clients=20, partition="iid", local_epochs=1, batch_size=8, model="cnn", client_failure_rate=0.5)


def failing(cfg: RunConfig, rnd: int = 1) -> list[int]:
    return [p for p in range(cfg.num_clients) if derive(cfg.seed, "fault", rnd, p).random() < cfg.client_failure_rate]


def train(cfg: RunConfig, pid: int) -> Message:
    return fault_mod(instruction(cfg, MessageType.TRAIN, pid=pid), context(cfg, pid), client_app.train)


def test_who_fails_is_drawn_from_the_seed():
    fails = failing(CFG)
    assert 0 < len(fails) < CFG.num_clients
    with pytest.raises(InjectedClientFailure, match=f"client {fails[0]} in round 1"):
        train(CFG, fails[0])
    ok = next(p for p in range(CFG.num_clients) if p not in fails)
    msg = instruction(CFG, MessageType.TRAIN, pid=ok)
    assert reply_problem(train(CFG, ok), msg.content["arrays"]) is None


@pytest.mark.parametrize("kind, why", [("nan", "non-finite"), ("wrong-keys", "keys"), ("huge", "shape")])
def test_garbage_replies_are_rejected_by_the_server(kind, why):
    cfg = CFG.replace(fault_kind=kind)
    pid = failing(cfg)[0]
    msg = instruction(cfg, MessageType.TRAIN, pid=pid)
    reply = fault_mod(msg, context(cfg, pid), client_app.train)
    problem = reply_problem(reply, msg.content["arrays"])
    assert problem is not None and why in problem
    assert "num-examples" in reply.content["metrics"]  # the rest of the reply looks normal


def test_out_of_memory_names_the_client_and_round():
    cfg = CFG.replace(fault_kind="oom")
    pid = failing(cfg)[0]
    with pytest.raises(ClientOutOfMemory, match=f"client {pid} in round 1 ran out of memory"):
        train(cfg, pid)


def test_hang_outlasts_the_round_timeout(monkeypatch):
    slept = []
    monkeypatch.setattr("fedsim.app.fault_mod.time.sleep", slept.append)
    cfg = CFG.replace(fault_kind="hang", round_timeout=20.0)
    reply = train(cfg, failing(cfg)[0])
    assert slept and slept[0] > 20.0
    assert not reply.has_error()  # it does reply, too late


def test_kill_sends_sigkill_to_its_own_process(monkeypatch):
    sent = []

    def fake_kill(pid, sig):
        sent.append((pid, sig))
        raise SystemExit  # the real one does not return

    monkeypatch.setattr("fedsim.app.fault_mod.os.kill", fake_kill)
    cfg = CFG.replace(fault_kind="kill")
    with pytest.raises(SystemExit):
        train(cfg, failing(cfg)[0])
    assert sent == [(os.getpid(), signal.SIGKILL)]


def test_mixed_draws_every_kind():
    kinds = Counter()
    for rnd in range(1, 40):
        for pid in failing(CFG, rnd):
            draw = derive(CFG.seed, "fault", rnd, pid)
            draw.random()
            kinds[MIXED[int(draw.integers(len(MIXED)))]] += 1
    assert set(kinds) == {"raise", "kill", "hang", "nan", "wrong-keys", "huge", "oom"}
    assert np.all(np.array(list(kinds.values())) > 10)


def test_a_dead_simulation_worker_is_replaced(monkeypatch):
    """fedsim/app/actor_restart.py on Flower's own pool class: the task's error still reaches
    Flower, and the actor that goes back in the pool is a new one, not the dead one."""
    import ray
    from flwr.simulation.ray_transport import ray_actor

    from fedsim.app import actor_restart

    assert actor_restart.install() and actor_restart.install()  # idempotent
    pool = object.__new__(ray_actor.BasicActorPool)
    pool.pool, pool._future_to_actor = [], {"future": "dead actor"}
    pool.create_actor_fn = lambda: "new actor"

    def died(future):
        raise ray.exceptions.RayActorError()

    monkeypatch.setattr(ray_actor.ray, "get", died)
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: None)
    with pytest.raises(ray.exceptions.RayActorError):
        pool.fetch_result_and_return_actor_to_pool("future")
    pool.add_actor_back_to_pool("future")  # what Flower's RayBackend does after any failure
    assert pool.pool == ["new actor"]
