"""The client's part of an unlearning round (fedsim/unlearning/local.py through
fedsim/app/client_app.py) and what the server records of it: the weight a reply
claims (the data the client keeps, never the data it deletes) and, in SalUn's mask
round, that only bit-packed masks travel. The real ClientApp handlers and the real
strategy stack (build_strategy, with the recorder), in one process on digits with
the tiny UNet (a few seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedsim.app import client_app
from fedsim.app.compression_mod import compression_mod
from fedsim.config import RunConfig
from fedsim.data.clients import dataset
from fedsim.models.diffusion import NoiseSchedule
from fedsim.models.networks import build_model
from fedsim.models.workspace import fresh_model, workspace
from fedsim.records.observations import list_observations, load
from fedsim.records.round_log import RoundLog
from fedsim.records.wire import to_array_record, to_numpy_dict
from fedsim.rng import derive
from fedsim.unlearning.common import UnlearnParams
from fedsim.unlearning.erasediff import erasediff_train
from fedsim.unlearning.mask import combine_masks, unpack_each, unpack_mask
from fedsim.unlearning.msgm import msgm_train
from fedsim.unlearning.salun import salun_train
from strategies import build_strategy
from strategies.client_registry import ClientInfo

pytestmark = pytest.mark.usefixtures("task_identity", "one_thread")

BASE = RunConfig(dataset="digits", model="ddpm-tiny", conditional=True, timesteps=20, sample_steps=5,
                 num_clients=4, clients_per_round=4, partition="iid", local_epochs=1, batch_size=32)
SALUN = dict(unlearn_method="salun", unlearn_rounds=1, salun_mask_ratio=0.3)


# -- the weight a reply claims ------------------------------------------------------

def _digits(label: int, n: int):
    d = dataset(BASE, "train")
    idx = np.flatnonzero(d.labels == label)[:n]
    return d.images[torch.from_numpy(idx)], torch.from_numpy(d.labels[idx].copy())


@pytest.mark.parametrize("objective", ["erasediff", "msgm", "salun"])
def test_objectives_weigh_by_the_data_kept(objective):
    """num_examples (the FedAvg weight) = n_retain: 0 for a client that keeps nothing."""
    sched, params = NoiseSchedule(20, "squaredcos_cap_v2"), UnlearnParams(msgm_every=1)
    retain, forget = _digits(0, 12), _digits(1, 8)
    empty = (retain[0][:0], retain[1][:0])
    for kept in (retain, empty):
        model = build_model("ddpm-tiny", (1, 8, 8), 10, conditional=True, seed=0)
        kw = dict(epochs=1, batch_size=8, lr=1e-3, params=params, generator=torch.Generator().manual_seed(0))
        if objective == "erasediff":
            stats = erasediff_train(model, sched, kept, forget, num_classes=10, **kw)
        elif objective == "msgm":
            stats = msgm_train(model, sched, kept, forget, **kw)
        else:
            stats = salun_train(model, sched, kept, forget, None, num_classes=10, **kw)
        assert stats.steps > 0 and stats.num_examples == kept[0].shape[0]


# -- the real client and server, in one process -------------------------------------

def _context(cfg: RunConfig, pid: int) -> Context:
    return Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid}, state=RecordDict(),
                   run_config=cfg.to_flwr())


def _clients(cfg: RunConfig) -> dict[int, ClientInfo]:
    out = {}
    for pid in range(cfg.num_clients):
        query = Message(RecordDict({"config": ConfigRecord({"server-round": 0})}), dst_node_id=100 + pid,
                        message_type=MessageType.QUERY)
        info = client_app.query(query, _context(cfg, pid)).content["info"]
        out[100 + pid] = ClientInfo(100 + pid, pid, int(info["num-examples"]), np.asarray(info["label-hist"]),
                                    int(info["num-forget"]))
    return out


class _Grid:
    def __init__(self, ids):
        self.ids = list(ids)

    def get_node_ids(self):
        return self.ids


def _run(cfg: RunConfig, rounds: int):
    """Rounds of build_strategy's stack with client_app.train answering: (replies per round,
    configs sent per round, global weights after each round, from the initial ones); the
    compression mod stands in front of the handler, as in the ClientApp."""
    infos = _clients(cfg)
    strategy = build_strategy(cfg, infos, RoundLog())
    arrays = to_array_record(fresh_model(cfg, dataset(cfg, "train")).state_dict())
    replies, configs, history = {}, {}, [to_numpy_dict(arrays)]
    for rnd in range(1, rounds + 1):
        train = ConfigRecord({"lr": 1e-3, "local-epochs": 1, "batch-size": cfg.batch_size})
        messages = list(strategy.configure_train(rnd, arrays, train, _Grid(infos)))
        configs[rnd] = dict(messages[0].content["config"])
        replies[rnd] = {infos[m.metadata.dst_node_id].partition_id:
                        compression_mod(m, _context(cfg, infos[m.metadata.dst_node_id].partition_id), client_app.train)
                        for m in messages}
        new, _ = strategy.aggregate_train(rnd, list(replies[rnd].values()))
        arrays = new if new is not None else arrays
        history.append(to_numpy_dict(arrays))
    return replies, configs, history


@pytest.mark.parametrize("compression", ["none", "topk"])
def test_salun_mask_round_records_only_bit_packed_masks(tmp_path, compression):
    """A class request held by every client: the server's recorded observations of the mask
    round hold, per parameter, ceil(n / 8) packed bytes (uint8), never a float tensor or n
    values of anything; the mask sent down is the vote of exactly those masks. A compression
    codec leaves the mask as it is (it is no update)."""
    cfg = BASE.replace(forget_class=3, record_clients="all", out_dir=str(tmp_path), compression=compression,
                       **SALUN)
    replies, configs, _ = _run(cfg, 2)
    shapes = {n: tuple(p.shape) for n, p in workspace(cfg).model.named_parameters()}
    observed = [load(p) for p in list_observations(tmp_path) if load(p).server_round == 1]
    assert sorted(o.partition_id for o in observed) == [0, 1, 2, 3]
    masks = []
    for obs in observed:
        assert obs.payload == "mask" and obs.num_examples == 0 and obs.metrics["num-forget"] > 0
        assert set(obs.received) == set(shapes)
        for name, bits in obs.received.items():
            assert bits.dtype == torch.uint8 and bits.dim() == 1 and bits.numel() == -(-np.prod(shapes[name]) // 8)
        masks.append(unpack_each({k: v.numpy() for k, v in obs.received.items()}, shapes))
        with pytest.raises(ValueError, match="no update"):
            obs.update()
    assert sum(v.numel() for o in observed for v in o.received.values()) <= \
        len(observed) * (sum(int(np.prod(s)) for s in shapes.values()) // 8 + len(shapes))
    want = combine_masks(masks, cfg.salun_mask_ratio, derive(cfg.seed, "salun-mask"))
    got = unpack_mask(bytes(configs[2]["salun-mask"]), shapes)
    assert all(np.array_equal(got[k], want[k]) for k in shapes)
    assert all(load(p).payload == "weights" for p in list_observations(tmp_path) if load(p).server_round == 2)


def test_a_client_that_keeps_nothing_sends_a_forget_only_update_of_one_equal_share():
    """Client-level request on client 1 (all its data): in the SalUn round it reports
    num-examples 0 (num-forget: its data); the new global model is the others' FedAvg plus
    client 1's delta / 4, inside the mask."""
    cfg = BASE.replace(forget_clients="1", **SALUN)
    replies, configs, history = _run(cfg, 2)
    assert list(replies[1]) == [1]  # the mask round: the holder only
    ws = workspace(cfg)
    got = {pid: r.content["metrics"] for pid, r in replies[2].items()}
    assert {pid: (m["num-examples"], m["num-forget"]) for pid, m in got.items()} == \
        {p: (len(ws.parts[p]), len(ws.forget[p])) for p in range(4)}
    assert got[1]["num-examples"] == 0 and got[1]["num-forget"] > 0
    sent, new = history[1], history[2]
    mask = unpack_mask(bytes(configs[2]["salun-mask"]), {n: tuple(p.shape) for n, p in ws.model.named_parameters()})
    deltas = {p: {k: to_numpy_dict(r.content["arrays"])[k].astype(np.float64) - sent[k] for k in sent}
              for p, r in replies[2].items()}
    kept = {p: len(ws.parts[p]) for p in (0, 2, 3)}
    for k in mask:
        want = sum(kept[p] / sum(kept.values()) * deltas[p][k] for p in kept) + deltas[1][k] / 4
        np.testing.assert_allclose(new[k] - sent[k], np.where(mask[k], want, 0.0), rtol=1e-4, atol=1e-6)


def test_gradient_ascent_replies_are_forget_only_and_averaged_with_equal_weights():
    """Gradient ascent trains on forget data alone: every holder reports num-examples 0, whatever
    it keeps, and the new global model is the plain mean of the ascended models."""
    cfg = BASE.replace(model="cnn", conditional=False, forget_class=3, unlearn_method="gradient-ascent")
    replies, _, history = _run(cfg, 1)
    ws = workspace(cfg)
    assert sorted(replies[1]) == [p for p in range(4) if len(ws.forget[p])]
    models = [to_numpy_dict(r.content["arrays"]) for r in replies[1].values()]
    forget_counts = set()
    for pid, r in replies[1].items():
        assert r.content["metrics"]["num-examples"] == 0 and len(ws.parts[pid]) > 0
        assert r.content["metrics"]["num-forget"] == len(ws.forget[pid])
        forget_counts.add(len(ws.forget[pid]))
    assert len(forget_counts) > 1  # equal weights differ from weights by forget counts
    for k, v in history[1].items():
        if np.issubdtype(v.dtype, np.floating):
            np.testing.assert_allclose(v, np.mean([m[k].astype(np.float64) for m in models], axis=0),
                                       rtol=1e-5, atol=1e-6)
