"""fedsim/models/networks.py: registry, sizes, diffusers-format save/load, pretrained start."""

from __future__ import annotations

import pytest
import torch

from fedsim.models.networks import ModelError, SmallCNN, build_model, save_model


def test_small_unet_for_digits_and_cifar_shapes() -> None:
    for shape in [(1, 8, 8), (3, 32, 32), (1, 24, 24)]:
        model = build_model("ddpm-small", shape, 10)
        x = torch.zeros(2, *shape)
        assert model(x, torch.tensor([0, 999])).sample.shape == x.shape


def test_same_seed_same_initial_weights() -> None:
    a = build_model("ddpm-small", (1, 8, 8), 10, seed=1).state_dict()
    b = build_model("ddpm-small", (1, 8, 8), 10, seed=1).state_dict()
    c = build_model("ddpm-small", (1, 8, 8), 10, seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_pretrained_unet_round_trip(tmp_path) -> None:
    """Federated fine-tuning starts from a diffusers checkpoint on disk."""
    model = build_model("ddpm-small", (1, 8, 8), 10, seed=5)
    save_model(model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "config.json").is_file()
    loaded = build_model("ddpm-small", (1, 8, 8), 10, pretrained=str(tmp_path / "ckpt"), seed=0)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    # a pipeline folder with unet/ inside works too
    save_model(model, tmp_path / "pipe" / "unet")
    build_model("ddpm-small", (1, 8, 8), 10, pretrained=str(tmp_path / "pipe"))


def test_pretrained_errors(tmp_path) -> None:
    with pytest.raises(ModelError, match="config.json"):
        build_model("ddpm-small", (1, 8, 8), 10, pretrained=str(tmp_path / "missing"))
    save_model(build_model("ddpm-small", (1, 8, 8), 10), tmp_path / "small")
    with pytest.raises(ModelError, match="expects 1x8x8"):
        build_model("ddpm-small", (3, 32, 32), 10, pretrained=str(tmp_path / "small"))


def test_cnn_save_load_and_features(tmp_path) -> None:
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    assert isinstance(model, SmallCNN)
    save_model(model, tmp_path / "cnn")
    loaded = build_model("cnn", (1, 8, 8), 10, pretrained=str(tmp_path / "cnn"))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))
    assert model.features(x).shape == (3, 128)


def test_unknown_model() -> None:
    with pytest.raises(ModelError, match="known"):
        build_model("gan", (1, 8, 8), 10)
