"""``fedsim split-data``: write the run's partition to disk, one data-dir per SuperNode.

For trying deployment with real SuperNodes on data whose split is known: each
node-<k>/ holds exactly client k's partition of the run's dataset (the simulation's
partitioner and seed), as PNGs in class directories, and server/ holds the whole
train split (the server's reference for Frechet distance) and the test split, so
that the run itself uses ``dataset = "folder"``. The unlearning request is not
applied here: a node holds all of its data and leaves out the forget data at run time.

Layout (class names zero-padded, so sorted order is numeric order; every class
directory exists on every node, empty where the node holds none of that class)::

    DIR/node-<k>/<class>/<sample index>.png
    DIR/server/train/<class>/<sample index>.png
    DIR/server/test/<class>/<sample index>.png
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fedsim.config import ConfigError, RunConfig
from fedsim.data.clients import dataset, run_partition
from fedsim.data.datasets import ImageData


@dataclass(frozen=True)
class Split:
    out: Path
    node_sizes: list[int]  # images written for node k
    train_size: int
    test_size: int
    image_size: int  # side length of every image written


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255]: round((x + 1) * 127.5), clipped."""
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_images(data: ImageData, idx: np.ndarray, root: Path) -> None:
    """data[idx] as root/<class>/<index>.png, every class directory created (maybe empty)."""
    width = len(str(max(data.num_classes - 1, 0)))
    digits = len(str(max(len(data) - 1, 0)))
    for c in range(data.num_classes):
        (root / f"{c:0{width}d}").mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(data.images[np.asarray(idx, dtype=np.int64)].numpy())  # (n, C, H, W)
    for i, img in zip(idx, pixels):
        pil = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))  # "L" or "RGB"
        pil.save(root / f"{data.labels[i]:0{width}d}" / f"{int(i):0{digits}d}.png")


def split_data(cfg: RunConfig, out: Path) -> Split:
    """Write node-<k>/ for k in 0..num-clients-1 and server/{train,test}/ under ``out``.

    Raises ConfigError if ``out`` is a file or a non-empty folder; DataError or
    PartitionError (one line) for a dataset or partition the run could not use either.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder; choose a new one")
    train, test = dataset(cfg, "train"), dataset(cfg, "test")
    if train.shape[1] != train.shape[2]:
        raise ConfigError(f"split-data writes square images; '{cfg.dataset}' has {train.shape[1]}x{train.shape[2]}")
    parts = run_partition(cfg, train.labels)
    for k, idx in enumerate(parts):
        write_images(train, idx, out / f"node-{k}")
    write_images(train, np.arange(len(train)), out / "server" / "train")
    write_images(test, np.arange(len(test)), out / "server" / "test")
    return Split(out, [len(p) for p in parts], len(train), len(test), train.shape[1])


def summary(split: Split) -> list[str]:
    """What was written, and the node-config and run-config lines that use it."""
    out = split.out
    sizes = ", ".join(f"node-{k} {n}" for k, n in enumerate(split.node_sizes))
    return [
        f"wrote {sum(split.node_sizes)} images for {len(split.node_sizes)} nodes ({sizes}), "
        f"server/train {split.train_size}, server/test {split.test_size} -> {out}",
        f"SuperNode k: flower-supernode ... --node-config 'data-dir=\"{out}/node-<k>\" client-id=<k>'",
        f"run config:  dataset = \"folder\"  dataset-path = \"{out}/server\"  image-size = {split.image_size}",
        f"  (fedsim run --set dataset=folder --set dataset-path={out}/server --set image-size={split.image_size})",
    ]
