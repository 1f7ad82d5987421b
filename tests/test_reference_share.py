"""Gradient ascent's a_k (strategies/unlearning/reference_share.py): read from the original run's
ledger under its weighting, sent only in the ascent round, read back by the client
(fedsim/unlearning/gradient_ascent.py own_share)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim.config import RunConfig, write_toml
from fedsim.records.ledger import LedgerWriter, load_ledger
from fedsim.records.round_log import RoundLog
from fedsim.unlearning.gradient_ascent import own_share, reference_model
from strategies import build_strategy
from strategies.client_registry import ClientInfo
from strategies.unlearning.reference_share import last_round_shares, original_weighting

pytestmark = pytest.mark.usefixtures("task_identity")

W0 = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
LAST = {1: 300, 2: 20, 3: 80}  # the original run's last round: client 1 a Maverick with 3/4 of the samples


def original_run(folder, weighting="samples"):
    writer = LedgerWriter(folder, seed=0, every=0, max_bytes=1e9)
    writer.start(W0)
    writer.record(1, W0, [(0, 10, None), (1, 300, None), (2, 20, None)])
    writer.record(2, W0, [(p, n, None) for p, n in LAST.items()])
    write_toml(RunConfig(num_clients=4, clients_per_round=3, model="cnn", weighting=weighting), folder / "config.toml")
    return folder


def test_shares_are_the_weights_of_the_last_aggregation(tmp_path):
    ledger = load_ledger(original_run(tmp_path))
    assert last_round_shares(ledger, "samples", [1, 3, 0]) == {0: 0.0, 1: 0.75, 3: 0.2}
    assert last_round_shares(ledger, "uniform", [1, 0]) == {0: 0.0, 1: pytest.approx(1 / 3)}
    assert original_weighting(str(tmp_path), "uniform") == "samples"
    assert original_weighting(str(tmp_path / "nowhere"), "uniform") == "uniform"


def test_w_ref_from_the_ledger_is_the_sample_weighted_mean_of_the_other_clients(tmp_path):
    """The last round aggregated clients 1, 2, 3 by samples; client 1 (3/4 of them) asks to be
    forgotten: w_ref = (w - a_1 w_1) / (1 - a_1) must be (20 w_2 + 80 w_3) / 100."""
    ledger = load_ledger(original_run(tmp_path))
    g = torch.Generator().manual_seed(1)
    models = {p: {"w": torch.randn(4, 2, generator=g, dtype=torch.float64)} for p in LAST}
    total = sum(LAST.values())
    glob = {"w": sum(n / total * models[p]["w"] for p, n in LAST.items())}
    share = last_round_shares(ledger, original_weighting(str(tmp_path), "uniform"), [1])[1]
    ref = reference_model(glob, models[1], share)
    assert torch.allclose(ref["w"], (20 * models[2]["w"] + 80 * models[3]["w"]) / 100, rtol=0, atol=1e-12)


class FakeGrid:
    def __init__(self, ids):
        self.ids = list(ids)

    def get_node_ids(self):
        return self.ids


@pytest.mark.parametrize("weighting, share", [("samples", 0.75), ("uniform", 1 / 3)])
def test_the_ascent_round_sends_the_requesting_client_its_share_and_no_key_leaks_into_later_rounds(
        tmp_path, weighting, share):
    run = original_run(tmp_path, weighting)
    infos = {200 + p: ClientInfo(200 + p, p, (10, 0, 12, 13)[p], np.zeros(2, np.int64), (0, 300, 0, 0)[p])
             for p in range(4)}
    cfg = RunConfig(num_clients=4, clients_per_round=2, model="cnn", forget_clients="1", rounds=3,
                    unlearn_method="gradient-ascent", unlearn_from=str(run), unlearn_rounds=1, unlearn_lr=0.05,
                    weighting="samples")  # the unlearning run's own weighting does not matter
    strategy = build_strategy(cfg, infos, RoundLog())
    arrays = ArrayRecord({k: Array(v) for k, v in W0.items()})
    config = ConfigRecord({"lr": 1e-3, "local-epochs": 1})  # Flower's start() passes this one record every round
    sent = []
    for rnd in (1, 2):
        replies = []
        for m in strategy.configure_train(rnd, arrays, config, FakeGrid(infos)):
            pid = infos[m.metadata.dst_node_id].partition_id
            sent.append((rnd, pid, dict(m.content["config"])))
            content = RecordDict({"arrays": m.content["arrays"],
                                  "metrics": MetricRecord({"num-examples": 5, "train-loss": 0.0}),
                                  "meta": ConfigRecord({"partition-id": pid, "payload": "weights"})})
            replies.append(Message(content, reply_to=m))
        strategy.aggregate_train(rnd, replies)
    first = [c for r, p, c in sent if r == 1]
    assert [p for r, p, _ in sent if r == 1] == [1]  # the ascent round: the holder only
    assert own_share(first[0], 1) == pytest.approx(share) and own_share(first[0], 2) == 0.0
    assert first[0]["lr"] == 0.05 and first[0]["objective"] == "gradient-ascent"
    for _, _, c in (s for s in sent if s[0] == 2):
        assert c["objective"] == "train" and c["lr"] == 1e-3  # the run's lr again
        assert own_share(c, 1) == 0.0 and "ga-shares" not in c
    assert dict(config) == {"lr": 1e-3, "local-epochs": 1}


def test_a_class_request_sends_no_share(tmp_path):
    run = original_run(tmp_path)
    infos = {200 + p: ClientInfo(200 + p, p, 10, np.zeros(2, np.int64), 3) for p in range(4)}
    cfg = RunConfig(num_clients=4, clients_per_round=2, model="cnn", forget_class=1, rounds=2,
                    unlearn_method="gradient-ascent", unlearn_from=str(run), unlearn_rounds=1)
    strategy = build_strategy(cfg, infos, RoundLog())
    arrays = ArrayRecord({k: Array(v) for k, v in W0.items()})
    for m in strategy.configure_train(1, arrays, ConfigRecord({}), FakeGrid(infos)):
        assert "ga-shares" not in m.content["config"]
