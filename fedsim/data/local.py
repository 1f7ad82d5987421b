"""Readers for datasets stored on local disk: MNIST idx files, CIFAR-10 pickles, image folders.

Why a separate file: datasets.py decides *what* a dataset is (scaling to [-1, 1], padding,
splits, caching); this file only turns bytes on disk into uint8 numpy arrays and says,
in one line, what was expected when the bytes are not what they should be.
Nothing here downloads anything.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049  # 0x0803: ubyte x 3 dims, 0x0801: ubyte x 1 dim


class DataError(ValueError):
    """Bad dataset name, path or format; the message is one line naming what was expected."""


def require_dir(path: str | Path | None, what: str, expected: str) -> Path:
    """`path` as an existing directory, else DataError saying which directory `what` needs."""
    if path is None or str(path) == "":
        raise DataError(f"{what}: needs path= (a directory containing {expected})")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what}: path {p} does not exist (expected a directory containing {expected})")
    if not p.is_dir():
        raise DataError(f"{what}: path {p} is not a directory (expected one containing {expected})")
    return p


def _find(directory: Path, name: str, what: str) -> Path:
    """`directory/name` or `directory/name.gz` (also under `raw/`, torchvision's layout)."""
    for d in (directory, directory / "raw"):
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{what}: expected {name}[.gz] in {directory}")


def _read_bytes(file: Path, what: str) -> bytes:
    try:
        if file.suffix == ".gz":
            with gzip.open(file, "rb") as f:
                return f.read()
        return file.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{what}: cannot read {file}: {e}") from None


def _parse_idx(raw: bytes, magic: int, file: Path, what: str) -> np.ndarray:
    """idx format (LeCun et al.): big-endian int32 magic, int32 dims, then uint8 data."""
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DataError(f"{what}: {file} is too short for an idx header ({len(raw)} bytes)")
    found = int(np.frombuffer(raw, ">i4", count=1)[0])
    if found != magic:
        raise DataError(f"{what}: {file} has magic number {found}, expected {magic}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise DataError(f"{what}: {file} has {len(raw) - header} data bytes, expected {size} for shape {dims}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_idx_split(path: str | Path | None, split: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-style idx pair for one split.

    Returns images (N, 28, 28) uint8 and labels (N,) int64 in [0, 10).
    Files: {train,t10k}-{images-idx3,labels-idx1}-ubyte, each optionally .gz.
    """
    prefix = "train" if split == "train" else "t10k"
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    directory = require_dir(path, what, " and ".join(names))
    img_file, lab_file = (_find(directory, n, what) for n in names)
    images = _parse_idx(_read_bytes(img_file, what), IDX_IMAGES_MAGIC, img_file, what)
    labels = _parse_idx(_read_bytes(lab_file, what), IDX_LABELS_MAGIC, lab_file, what).astype(np.int64)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{what}: {img_file} holds {images.shape[1]}x{images.shape[2]} images, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"{what}: {img_file} has {len(images)} images but {lab_file} has {len(labels)} labels")
    if len(labels) and labels.max() >= 10:
        raise DataError(f"{what}: {lab_file} has label {labels.max()}, expected labels 0..9")
    return images, labels


def read_cifar10(path: str | Path | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 python batches ("cifar-10-batches-py" or its parent directory).

    Returns images (N, 3, 32, 32) uint8 and labels (N,) int64 in [0, 10). The batches
    are pickles: load only files you trust.
    """
    what = "CIFAR-10"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    directory = require_dir(path, what, "cifar-10-batches-py/ or " + ", ".join(names))
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    images, labels = [], []
    for name in names:
        file = directory / name
        if not file.is_file():
            raise DataError(f"{what}: expected {name} in {directory}")
        try:
            with open(file, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            lab = np.asarray(batch[b"labels"], dtype=np.int64)
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{what}: {file} is not a CIFAR-10 batch with b'data' and b'labels' ({e!r})") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(lab):
            raise DataError(
                f"{what}: {file} has data {data.shape} and {len(lab)} labels, expected (N, 3072) and N labels"
            )
        if len(lab) and (lab.min() < 0 or lab.max() >= 10):
            raise DataError(f"{what}: {file} has labels outside 0..9")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)


def class_dirs(root: Path) -> list[str]:
    """Sorted names of the non-hidden subdirectories of `root`: the class names."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_image_folder(root: Path, classes: list[str], image_size: int,
                      allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images under root/<class>/ for each name in `classes` (label = position in `classes`).

    Every image is converted to RGB and resized bilinearly to image_size x image_size.
    Returns images (N, 3, S, S) uint8 and labels (N,) int64. Files are read in sorted order,
    so the result does not depend on the filesystem's listing order. allow_empty: an empty
    class directory is fine (a node's own data need not hold every class); no image at all
    is still an error.
    """
    from PIL import Image, UnidentifiedImageError  # Pillow only when a folder is used

    what = "folder"
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files and not allow_empty:
            raise DataError(f"{what}: class directory {root / name} has no {'/'.join(IMAGE_SUFFIXES)} images")
        for file in files:
            try:
                with Image.open(file) as im:
                    rgb = im.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            except (OSError, UnidentifiedImageError) as e:
                raise DataError(f"{what}: cannot read image {file}: {e}") from None
            images.append(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"{what}: no {'/'.join(IMAGE_SUFFIXES)} images in the class directories of {root}")
    return np.stack(images), np.asarray(labels, dtype=np.int64)
