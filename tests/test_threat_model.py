"""attacks/threat_model.py: expose() grants exactly what the ThreatModel says."""

from __future__ import annotations

import torch

from attacks.threat_model import LocalHparams, Secrets, ThreatModel, expose
from fedsim.records.observations import Observation

OBS = Observation(server_round=1, partition_id=3, sent={"w": torch.zeros(2)}, received={"w": torch.ones(2)},
                  payload="weights", num_examples=4, config={"lr": 0.1, "local-epochs": 2, "batch-size": 2})
SECRETS = Secrets(labels=torch.tensor([1, 2, 3, 4]), eps=torch.randn(4, 1, 2, 2), t=torch.tensor([5, 5, 5, 5]))


def test_nothing_secret_by_default() -> None:
    inp = expose(OBS, ThreatModel(), SECRETS)
    assert inp.labels is None and inp.eps is None and inp.t is None
    assert torch.equal(inp.update["w"], torch.ones(2)) and inp.num_samples == 4
    assert inp.hparams == LocalHparams(lr=0.1, epochs=2, batch_size=2)


def test_grants() -> None:
    inp = expose(OBS, ThreatModel(labels="known", eps_known=True, t_known=True, num_samples=False,
                                  local_hparams=False), SECRETS)
    assert torch.equal(inp.labels, SECRETS.labels) and torch.equal(inp.t, SECRETS.t)
    assert inp.eps is SECRETS.eps and inp.num_samples is None and inp.hparams is None


def test_recovered_labels_are_not_given() -> None:
    assert expose(OBS, ThreatModel(labels="recovered"), SECRETS).labels is None
    assert ThreatModel().as_dict()["labels"] == "recovered"


def test_batch_order_only_when_granted_and_training_config_read() -> None:
    batches = (torch.tensor([2, 0]), torch.tensor([1, 3]))
    secrets = Secrets(labels=SECRETS.labels, batches=batches)
    assert expose(OBS, ThreatModel(), secrets).batches is None
    assert expose(OBS, ThreatModel(batch_order_known=True), secrets).batches is batches
    # an observation from before the config carried them: plain SGD in a fixed order, as assumed then
    h = expose(OBS, ThreatModel()).hparams
    assert (h.optimizer, h.momentum, h.shuffle) == ("sgd", 0.0, "fixed")
    said = Observation(**{**OBS.__dict__, "config": {**OBS.config, "optimizer": "adam", "momentum": 0.0,
                                                     "grad-clip": 1.0, "shuffle": "per-epoch"}})
    h = expose(said, ThreatModel()).hparams
    assert (h.optimizer, h.grad_clip, h.shuffle) == ("adam", 1.0, "per-epoch")
