"""fedsim/unlearning/membership.py: the calibrated attack separates members whose loss is lower
than a reference model's, even when image difficulty swamps the plain loss, and finds nothing
(AUC interval around 0.5) when members are not special; references never saw the image scored."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.config import RunConfig
from fedsim.data.clients import dataset
from fedsim.data.datasets import load_dataset
from fedsim.evaluation.metrics import real_halves
from fedsim.models.workspace import fresh_model
from fedsim.unlearning.membership import (MIA_KEYS, AttackConfig, calibrated_scores, draw_probes, membership,
                                          probe_losses, reference_of, roc_summary)

pytestmark = pytest.mark.usefixtures("one_thread")
N_MEMBERS, N_OTHERS = 200, 200


class ToyModel(nn.Module):
    """Loss of image i under probe eps: d_i * factor_i * exp(0.3 eps_i), where the image
    carries log d_i in pixel (0, 0) and its index in pixel (0, 1); d_i spans 100x."""

    def __init__(self, factor: torch.Tensor) -> None:
        super().__init__()
        self.factor = factor
        self.unused = nn.Parameter(torch.zeros(()))  # probe_losses reads the device from a parameter

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        idx = x[:, 0, 0, 1].round().long()
        return torch.exp(x[:, 0, 0, 0] + 0.3 * eps[:, 0, 0, 0]) * self.factor[idx]


class ToyTask:
    def loss(self, model, x, y, *, generator, eps, t):
        return model(x, eps)


def _toy(member_factor: float) -> tuple[torch.Tensor, torch.Tensor, ToyModel, list[ToyModel]]:
    """Images, labels, a target model whose members' loss is ``member_factor`` x a reference's
    (times its own 5 % per-image quirk), and the two references."""
    g = torch.Generator().manual_seed(0)
    n = N_MEMBERS + N_OTHERS
    images = torch.zeros(n, 1, 2, 2)
    images[:, 0, 0, 0] = torch.empty(n).uniform_(math.log(0.1), math.log(10.0), generator=g)
    images[:, 0, 0, 1] = torch.arange(n).float()
    quirk = torch.exp(0.05 * torch.randn(n, generator=g))
    factor = quirk * torch.where(torch.arange(n) < N_MEMBERS, member_factor, 1.0)
    return images, torch.zeros(n, dtype=torch.long), ToyModel(factor), [ToyModel(torch.ones(n)) for _ in range(2)]


def _attack(member_factor: float) -> tuple[dict, dict]:
    images, labels, target, refs = _toy(member_factor)
    probes = draw_probes(images.shape, [1, 2], 2, torch.Generator().manual_seed(1))
    ref_of = np.arange(len(images)) % 2
    s = calibrated_scores(target, refs, ToyTask(), images, labels, ref_of, probes)
    plain = -probe_losses(target, ToyTask(), images, labels, probes).mean(0)
    return roc_summary(s[:N_MEMBERS], s[N_MEMBERS:]), roc_summary(plain[:N_MEMBERS], plain[N_MEMBERS:])


def test_calibrated_attack_finds_members_that_difficulty_hides() -> None:
    calibrated, plain = _attack(0.7)  # members' loss 30 % below the reference's
    assert calibrated["auc"] > 0.99 and calibrated["auc_low"] > 0.95 and calibrated["tpr_1fpr"] > 0.9
    assert plain["auc"] < 0.75  # difficulty (100x) swamps a 30 % loss gap without the reference


def test_calibrated_attack_finds_nothing_when_members_are_not_special() -> None:
    calibrated, _ = _attack(1.0)
    assert calibrated["auc_low"] < 0.5 < calibrated["auc_high"] and calibrated["tpr_1fpr"] < 0.1


def test_members_are_compared_with_non_members_of_their_own_class() -> None:
    # a Maverick's forget set: 80 % of one class that is easier to denoise (loss 3x lower), against
    # class-balanced test images; no member is special, so only the class mix differs
    g = torch.Generator().manual_seed(2)
    member_class, other_class = np.r_[np.zeros(160), np.arange(40) % 4 + 1], np.arange(200) % 5
    def loss(classes):
        return torch.exp(torch.randn(len(classes), generator=g) + torch.from_numpy(np.where(classes == 0, -1.1, 0.0)))
    members, others = -loss(member_class), -loss(other_class)
    pooled = roc_summary(members, others)
    assert pooled["auc_low"] > 0.6  # the easy class looks like membership
    matched = roc_summary(members, others, member_class, other_class)
    assert matched["auc_low"] < 0.5 < matched["auc_high"] and matched["tpr_1fpr"] < 0.1


def test_roc_summary_of_separated_and_identical_scores() -> None:
    sep = roc_summary(torch.tensor([3.0, 4.0, 5.0]), torch.tensor([0.0, 1.0, 2.0]))
    assert sep["auc"] == 1.0 and sep["tpr_1fpr"] == 1.0
    same = roc_summary(np.zeros(5), np.zeros(5))
    assert same["auc"] == 0.5 and same["tpr_1fpr"] == 0.0
    assert all(math.isnan(v) for v in roc_summary(np.zeros(0), np.ones(3)).values())


def test_no_image_is_scored_with_a_reference_trained_on_it() -> None:
    labels = load_dataset("digits", "test").labels
    others = np.isin(labels, [0, 3])
    ref_of = reference_of(7, labels, others)
    assert len(ref_of) == 7 + others.sum() and ref_of[:7].tolist() == [0, 1, 0, 1, 0, 1, 0]
    halves = real_halves(labels)
    trained_on = {r: set(halves[r].tolist()) for r in (0, 1)}  # reference r trains on half r
    for i, r in zip(np.flatnonzero(others), ref_of[7:]):
        assert i not in trained_on[r]


def test_membership_of_a_classifier_is_the_loss_threshold(fedsim_cache, monkeypatch) -> None:
    monkeypatch.setenv("FEDSIM_CACHE", str(fedsim_cache))
    cfg = RunConfig(model="cnn", num_clients=10)
    train, test = dataset(cfg, "train"), dataset(cfg, "test")
    keep = torch.from_numpy(train.labels == 2)
    out = membership(cfg, fresh_model(cfg, test), (train.images[keep], torch.tensor(train.labels)[keep]), test)
    assert list(out) == MIA_KEYS and out["mia_auc"] == out["mia_loss_auc"]
    assert out["mia_auc_low"] < out["mia_auc"] < out["mia_auc_high"]


def test_references_are_trained_once_and_cached(fedsim_cache, monkeypatch) -> None:
    from fedsim.unlearning import membership as mia

    monkeypatch.setenv("FEDSIM_CACHE", str(fedsim_cache))
    cfg = RunConfig(model="ddpm-tiny", timesteps=100, beta_schedule="squaredcos_cap_v2", num_clients=10)
    attack = AttackConfig(reference_epochs=1)
    first = mia.reference_models(cfg, dataset(cfg, "test"), attack, "cpu")

    def no_training(*args, **kwargs):
        raise AssertionError("reference models trained again")

    monkeypatch.setattr(mia, "train_local", no_training)
    again = mia.reference_models(cfg, dataset(cfg, "test"), attack, "cpu")
    for a, b in zip(first, again):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(*(next(iter(m.state_dict().values())) for m in first))  # two halves, two seeds
    with pytest.raises(AssertionError, match="trained again"):  # other training settings: other references
        mia.reference_models(cfg, dataset(cfg, "test"), AttackConfig(reference_epochs=2), "cpu")
