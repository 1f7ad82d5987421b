"""Tests for fedsim/data/datasets.py and fedsim/data/local.py.

Built-in datasets (digits, lfw) are checked for shapes, range and the fixed split; the
on-disk formats are checked with tiny synthetic files written to tmp_path, with pixel
values small enough to check by hand.
"""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from fedsim.data.datasets import DATASETS, DataError, ImageData, clear_cache, load_dataset


# --- built-in datasets ---

def test_digits_shapes_range_and_split():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert isinstance(train, ImageData) and train.name == "digits" and train.num_classes == 10
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.shape == (1, 8, 8) and len(train) == 1437
    assert train.images.dtype == torch.float32
    assert train.images.min() == -1.0 and train.images.max() == 1.0
    assert train.labels.dtype == np.int64 and set(np.unique(train.labels)) == set(range(10))
    assert (np.bincount(test.labels, minlength=10) >= 35).all()  # stratified: 20 % of each ~180
    with pytest.raises(ValueError):
        train.labels[0] = 3  # the cached labels are read-only


def test_digits_cached_and_deterministic():
    first = load_dataset("digits")
    assert load_dataset("digits", "train") is first  # same object from the cache
    clear_cache()
    again = load_dataset("digits")
    assert again is not first
    assert torch.equal(again.images, first.images) and np.array_equal(again.labels, first.labels)


def test_lfw_is_24x24_faces_vs_background():
    train, test = load_dataset("lfw", "train"), load_dataset("lfw", "test")
    assert train.images.shape == (160, 1, 24, 24) and test.images.shape == (40, 1, 24, 24)
    assert train.num_classes == 2 and np.bincount(test.labels).tolist() == [20, 20]
    assert -1.0 <= train.images.min() and train.images.max() <= 1.0


# --- MNIST idx files ---

def write_idx(path, magic, array, gz):
    raw = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def make_mnist(root, gz=False, n_train=5, n_test=3):
    """Image i is all 0 except pixel (0, 0) = 255; label i % 10."""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 0, 0] = 255
        write_idx(root / f"{prefix}-images-idx3-ubyte", 2051, images, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", 2049, np.arange(n, dtype=np.uint8) % 10, gz)
    return root


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_files_load_and_pad(tmp_path, gz, name):
    make_mnist(tmp_path, gz)
    train = load_dataset(name, "train", path=str(tmp_path))
    test = load_dataset(name, "test", path=str(tmp_path))
    assert train.images.shape == (5, 1, 32, 32) and test.images.shape == (3, 1, 32, 32)
    assert train.labels.tolist() == [0, 1, 2, 3, 4] and train.num_classes == 10
    img = train.images[0, 0]
    assert img[2, 2] == 1.0  # pixel (0, 0) = 255 lands at (2, 2) after 2 px of padding
    assert (img[:2] == -1).all() and (img[:, :2] == -1).all()  # padding is background -1
    assert img.sum() == 1.0 - (32 * 32 - 1)  # one +1, the rest -1


def test_idx_missing_file_is_named(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"MNIST: expected t10k-labels-idx1-ubyte\[\.gz\] in"):
        load_dataset("mnist", "test", path=str(tmp_path))


def test_idx_bad_magic(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", 2049, np.zeros((5, 28, 28), np.uint8), gz=False)
    with pytest.raises(DataError, match=r"magic number 2049, expected 2051"):
        load_dataset("mnist", path=str(tmp_path))


def test_idx_truncated(tmp_path):
    make_mnist(tmp_path)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"3910 data bytes, expected 3920"):
        load_dataset("mnist", path=str(tmp_path))


def test_idx_count_mismatch(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", 2049, np.zeros(4, np.uint8), gz=False)
    with pytest.raises(DataError, match=r"5 images but .* has 4 labels"):
        load_dataset("mnist", path=str(tmp_path))


# --- CIFAR-10 pickles ---

def make_cifar(root, per_batch=2):
    """Batch b holds `per_batch` images filled with the value b, labels b, b+1, ..."""
    batches = root / "cifar-10-batches-py"
    batches.mkdir()
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = np.full((per_batch, 3072), b * 51, np.uint8)  # 0, 51, ..., 255
        labels = [(b + i) % 10 for i in range(per_batch)]
        with open(batches / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
    return batches


@pytest.mark.parametrize("parent", [False, True])
def test_cifar_batches(tmp_path, parent):
    batches = make_cifar(tmp_path)
    path = str(tmp_path if parent else batches)
    train, test = load_dataset("cifar10", "train", path=path), load_dataset("cifar10", "test", path=path)
    assert train.images.shape == (10, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    assert train.images[0].min() == -1.0  # batch 1: value 0
    assert train.images[-1].max().item() == pytest.approx(0.6)  # batch 5: 204 * 2 / 255 - 1
    assert test.images.max() == 1.0  # 255
    assert train.labels.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]


def test_cifar_missing_batch_is_named(tmp_path):
    batches = make_cifar(tmp_path)
    (batches / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"CIFAR-10: expected data_batch_3 in .*cifar-10-batches-py"):
        load_dataset("cifar10", path=str(tmp_path))


def test_cifar_malformed_batch(tmp_path):
    batches = make_cifar(tmp_path)
    (batches / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"is not a CIFAR-10 batch"):
        load_dataset("cifar10", "test", path=str(batches))


# --- image folders ---

def make_folder(root, classes=("cat", "dog"), per_class=5):
    """Class c's images are solid gray (c * 255); sizes differ to exercise resizing."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (10 + i, 12), (255 * c,) * 3).save(root / name / f"{i}.png")
    return root


def test_folder_with_fixed_split(tmp_path):
    make_folder(tmp_path)
    train = load_dataset("folder", "train", path=str(tmp_path), image_size=16)
    test = load_dataset("folder", "test", path=str(tmp_path), image_size=16)
    assert train.images.shape == (8, 3, 16, 16) and test.images.shape == (2, 3, 16, 16)
    assert train.num_classes == 2 and test.labels.tolist() == [0, 1]  # 20 % of 5 per class
    cat = train.images[train.labels == 0]
    assert (cat == -1.0).all() and (train.images[train.labels == 1] == 1.0).all()


def test_folder_with_train_test_subfolders(tmp_path):
    make_folder(tmp_path / "train", per_class=3)
    make_folder(tmp_path / "test", per_class=1)
    train = load_dataset("folder", "train", path=str(tmp_path), image_size=8)
    test = load_dataset("folder", "test", path=str(tmp_path), image_size=8)
    assert train.images.shape == (6, 3, 8, 8) and test.labels.tolist() == [0, 1]


def test_folder_without_class_dirs(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match=r"expected class subdirectories of images in"):
        load_dataset("folder", path=str(tmp_path))


def test_folder_empty_class_dir(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "eel").mkdir()
    with pytest.raises(DataError, match=r"class directory .*eel has no .png"):
        load_dataset("folder", path=str(tmp_path))


# --- names and paths ---

def test_unknown_name_lists_known():
    with pytest.raises(DataError, match=r"unknown dataset 'mnsit'; known: cifar10, digits, fashion-mnist"):
        load_dataset("mnsit")
    assert set(DATASETS) == {"mnist5k", "digits", "lfw", "photos", "mnist", "fashion-mnist", "cifar10", "folder", "synthetic"}


def test_unknown_split():
    with pytest.raises(DataError, match=r"unknown split 'val'"):
        load_dataset("digits", "val")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "folder"])
@pytest.mark.parametrize("path", [None, ""])
def test_path_required(name, path):
    with pytest.raises(DataError, match=r"needs path="):
        load_dataset(name, path=path)


def test_path_missing(tmp_path):
    with pytest.raises(DataError, match=r"path .*nowhere does not exist"):
        load_dataset("mnist", path=str(tmp_path / "nowhere"))


def test_mnist5k_is_real_mnist_with_a_fixed_stratified_split():
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    assert train.images.shape == (4000, 1, 16, 16) and test.images.shape == (1000, 1, 16, 16)
    assert (np.bincount(train.labels, minlength=10) == 400).all()
    assert (np.bincount(test.labels, minlength=10) == 100).all()
    assert train.images.min() >= -1.0 and train.images.max() <= 1.0
    # MNIST digits: a dark background (most pixels near -1) with bright strokes
    assert float((train.images < -0.9).float().mean()) > 0.5 and float(train.images.max()) > 0.9
    native = load_dataset("mnist5k", "train", image_size=28)
    padded = load_dataset("mnist5k", "train", image_size=32)
    assert native.images.shape == (4000, 1, 28, 28) and padded.images.shape == (4000, 1, 32, 32)
    torch.testing.assert_close(padded.images[:, :, 2:30, 2:30], native.images)
    assert (padded.images[:, :, :2] == -1).all() and np.array_equal(padded.labels, native.labels)
    # the 16x16 images are the 28x28 ones shrunk: their class means stay far apart
    means = torch.stack([train.images[train.labels == c].mean(0) for c in range(10)]).flatten(1)
    assert torch.cdist(means, means)[~torch.eye(10, dtype=bool)].min() > 1.0
    assert load_dataset("mnist5k", "train", image_size=0) is train


@pytest.mark.parametrize("size", [-1, 2, 3, True])
def test_mnist5k_rejects_bad_image_sizes(size):
    with pytest.raises(DataError, match="image_size"):
        load_dataset("mnist5k", "train", image_size=size)


def test_synthetic_is_sized_balanced_seeded_and_separable():
    """A systems-benchmark dataset: synthetic-N has N train and N/5 test images, 10 balanced classes
    in [-1, 1], the same images every time, and classes a linear model on FFT magnitudes separates."""
    from sklearn.linear_model import LogisticRegression

    train, test = load_dataset("synthetic-1000", "train"), load_dataset("synthetic-1000", "test")
    assert len(train) == 1000 and len(test) == 200 and train.shape == (1, 16, 16) and train.num_classes == 10
    assert np.bincount(train.labels).tolist() == [100] * 10 and np.bincount(test.labels).tolist() == [20] * 10
    assert train.images.min() >= -1 and train.images.max() <= 1 and train.images.std() > 0.3
    before = train.images.clone()
    clear_cache()
    assert torch.equal(load_dataset("synthetic-1000", "train").images, before)
    assert load_dataset("synthetic-1000", "train", image_size=8).shape == (1, 8, 8)
    assert len(load_dataset("synthetic", "test")) == 10_000

    def features(d):
        return np.abs(np.fft.rfft2(d.images.numpy()[:, 0])).reshape(len(d), -1)

    acc = LogisticRegression(max_iter=2000).fit(features(train), train.labels).score(features(test), test.labels)
    assert acc > 0.9  # measured 1.0


@pytest.mark.parametrize("name", ["synthetic-5", "synthetic-x", "synthetic-"])
def test_synthetic_bad_sizes_are_one_line(name):
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset(name, "train")


def test_synthetic_label_skew_partitions_like_real_data():
    from fedsim.data.partition import label_histograms, partition

    labels = load_dataset("synthetic-2000", "train").labels
    parts = partition(labels, 20, "dirichlet", seed=0, alpha=0.1)
    hist = label_histograms(labels, parts, 10)
    assert sum(len(p) for p in parts) == 2000
    assert np.median((hist / hist.sum(1, keepdims=True)).max(1)) > 0.5  # most clients dominated by one class
