"""Backdoor poisoning (fedsim/data/backdoor.py, its wiring in fedsim/data/clients.py) and the backdoor
evaluation (fedsim/evaluation/backdoor.py): Halimi et al.'s test of gradient-ascent unlearning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.config import ConfigError, RunConfig
from fedsim.data.backdoor import add_trigger, poisoned_indices, trigger_side
from fedsim.data.clients import dataset, run_partition, split_request, as_held
from fedsim.evaluation.backdoor import backdoor_accuracy
from fedsim.evaluation.server import ServerEvaluator
from fedsim.models.workspace import fresh_model, workspace
from fedsim.unlearning.report import Request, score

CFG = RunConfig(model="cnn", num_clients=10, clients_per_round=2, partition="dirichlet", seed=3,
                backdoor_clients="2 7", backdoor_target=4, backdoor_fraction=0.5)


def test_trigger_is_a_white_square_one_pixel_from_the_bottom_right_corner():
    x = torch.full((2, 1, 8, 8), -0.25)
    out = add_trigger(x)
    assert trigger_side(8) == 2 and trigger_side(16) == 3 and trigger_side(28) == 5
    square = torch.zeros(8, 8, dtype=torch.bool)
    square[5:7, 5:7] = True
    assert (out[:, 0][:, square] == 1.0).all() and (out[:, 0][:, ~square] == -0.25).all()
    assert (x == -0.25).all()  # a copy


def test_poisoned_indices_are_a_seeded_share_of_the_backdoor_clients_other_class_samples():
    labels = np.array([0, 1, 1, 2, 0, 1, 2, 2, 1, 0, 2, 1])
    parts = {0: np.array([0, 1, 2, 3, 4, 5]), 1: np.array([6, 7, 8]), 2: np.array([9, 10, 11])}
    idx = poisoned_indices(labels, parts, [0, 2], target=1, fraction=0.5, seed=0)
    assert set(idx) <= {0, 3, 4} | {9, 10}  # clients 0 and 2 only, never a sample of class 1
    assert len(set(idx) & {0, 3, 4}) == 2 and len(set(idx) & {9, 10}) == 1  # round(0.5 x 3), round(0.5 x 2)
    assert np.array_equal(idx, poisoned_indices(labels, parts, [2, 0], target=1, fraction=0.5, seed=0))
    draws = {tuple(poisoned_indices(labels, parts, [0, 2], target=1, fraction=0.5, seed=s)) for s in range(20)}
    assert len(draws) > 1  # the seed decides which
    assert set(poisoned_indices(labels, parts, [0], target=1, fraction=1.0, seed=0)) == {0, 3, 4}


def test_with_backdoor_poisons_only_the_chosen_samples_and_keeps_the_partition():
    clean = dataset(CFG, "train")
    before = clean.images.clone()
    poisoned = as_held(CFG, clean)
    parts = run_partition(CFG, clean.labels)
    expected = poisoned_indices(clean.labels, dict(enumerate(parts)), [2, 7], target=4, fraction=0.5, seed=3)
    assert len(expected) > 10
    changed_label = np.flatnonzero(poisoned.labels != clean.labels)
    assert np.array_equal(changed_label, expected) and (poisoned.labels[expected] == 4).all()
    changed_image = torch.nonzero((poisoned.images != clean.images).flatten(1).any(1)).flatten().numpy()
    assert set(changed_image) <= set(expected)  # a trigger on an already white corner changes nothing
    assert torch.equal(poisoned.images[expected], add_trigger(clean.images[expected]))
    assert torch.equal(clean.images, before) and not clean.labels.flags.writeable  # the cache is untouched
    assert set(expected) <= set(parts[2]) | set(parts[7])
    # partitions and requests see the true labels: a backdoor moves no sample
    plain = CFG.replace(backdoor_clients="")
    for a, b in zip(split_request(CFG.replace(forget_class=4), clean.labels),
                    split_request(plain.replace(forget_class=4), clean.labels)):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    ws = workspace(CFG)
    assert all(np.array_equal(ws.parts[i], k) for i, k in enumerate(split_request(plain, clean.labels)[0]))
    assert torch.equal(ws.client_data(7)[1], torch.from_numpy(poisoned.labels[ws.parts[7]]))
    assert torch.equal(ws.client_data(0)[0], clean.images[torch.from_numpy(ws.parts[0])])
    assert as_held(plain, clean) is clean


@pytest.mark.parametrize("changes, message", [(dict(backdoor_target=10), "backdoor-target"),
                                              (dict(backdoor_clients="12"), "not partition ids")])
def test_bad_backdoor_keys_are_one_line(changes, message):
    with pytest.raises(ConfigError, match=message):
        as_held(CFG.replace(**changes), dataset(CFG, "train"))


def test_backdoor_config_checks():
    with pytest.raises(ConfigError, match="backdoor-fraction"):
        CFG.replace(backdoor_fraction=0.0)
    with pytest.raises(ConfigError, match="backdoor-clients"):
        CFG.replace(backdoor_clients="all")
    with pytest.raises(ConfigError, match="ga-stop-accuracy"):
        RunConfig(model="ddpm-tiny", ga_stop_accuracy=0.5)
    RunConfig(model="cnn", ga_stop_accuracy=0.5)


class Susceptible(nn.Module):
    """Says class 0 (the target) when the trigger is there and pixel (0, 0) is positive, else class 2."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        hit = (x[:, 0, 5, 5] > 0.5) & (x[:, 0, 0, 0] > 0)
        logits = torch.zeros(len(x), 3)
        logits[:, 2] = 1.0
        logits[hit, 0] = 2.0
        return logits + self.bias


def test_backdoor_accuracy_by_hand():
    images = torch.full((4, 1, 8, 8), -1.0)
    images[[0, 1, 3], 0, 0, 0] = 1.0  # susceptible: 0 (of the target class), 1 and 3
    labels = torch.tensor([0, 1, 2, 1])
    # of the three images not of class 0, triggered, two are classified as 0
    assert backdoor_accuracy(Susceptible(), images, labels, target=0) == pytest.approx(2 / 3)
    assert math.isnan(backdoor_accuracy(Susceptible(), images[:1], labels[:1], target=0))


def test_the_server_and_the_unlearning_report_score_the_backdoor(tmp_path):
    ev = ServerEvaluator(CFG, tmp_path)
    assert ev.quality_columns == ["test_acc", "backdoor_acc"]
    state = ev.model.state_dict()
    row = ev(1, state)
    test = dataset(CFG, "test")
    labels = torch.tensor(test.labels)
    assert row["backdoor_acc"] == backdoor_accuracy(ev.model, test.images, labels, 4)
    model = fresh_model(CFG, test)
    out = score(CFG, model.state_dict(), Request(frozenset({7}), -1))
    assert out["backdoor_acc"] == row["backdoor_acc"] and out["clean_acc"] == row["test_acc"]
    assert "backdoor_acc" not in score(CFG.replace(backdoor_clients=""), model.state_dict(), Request(frozenset({7}), -1))
