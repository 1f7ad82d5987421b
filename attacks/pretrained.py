"""Victims trained before the attack: the global model of a federation some rounds in, not at init.

Attacks on a model at initialisation flatter them (an untrained network's gradients carry
the input almost linearly). A trained victim here is the attacked architecture trained for
``epochs`` on the dataset's *train* split (the attacked client holds test-split images, so
the targets were never trained on) with Adam (lr 2e-3, batches of 64; fedsim's local
trainer), from the victim's init seed. Its state dict is cached under $FEDSIM_CACHE
(default ~/.cache/fedsim) keyed by everything that shapes it, so trials and configs share it;
``cache_lock`` makes two processes that ask for the same entry at once (the benchmark's --jobs)
train it once: the second waits and loads it.
``train_on_split`` is also the GIDM prior's trainer (attacks/prior.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fedsim.data.datasets import load_dataset
from fedsim.evaluation.evaluator import cache_dir
from fedsim.models.train import Task, train_local

VICTIM_VERSION = 1


@contextlib.contextmanager
def cache_lock(path: Path):
    """An exclusive advisory lock on ``path``'s cache entry (a ``.lock`` file beside it), held while
    the entry is looked up and, if missing, made: the kernel drops it when the process ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def train_on_split(net: nn.Module, task: Task, dataset: str, epochs: int, seed: int, *,
                   dataset_path: str | None = None, image_size: int = 0, progress=None) -> nn.Module:
    """``epochs`` passes of Adam over the train split, shuffled by a generator from ``seed``."""
    data = load_dataset(dataset, "train", dataset_path, image_size)
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(data.labels.copy())
    for epoch in range(epochs):
        stats = train_local(net, task, data.images, labels, epochs=1, batch_size=64, lr=2e-3, generator=g)
        if progress is not None:
            progress(epoch + 1, epochs, stats.loss)
    return net.eval()


def trained_state(net: nn.Module, task: Task, key: list, epochs: int, seed: int, *, dataset: str,
                  dataset_path: str | None = None, image_size: int = 0, progress=None) -> dict[str, torch.Tensor]:
    """The state dict of ``net`` after ``train_on_split``, from the cache when ``key`` (the
    architecture, init and task as the caller names them) was trained before."""
    full = [*key, dataset, dataset_path or "", epochs, seed, VICTIM_VERSION] + ([image_size] if image_size else [])
    digest = hashlib.sha256(json.dumps(full).encode()).hexdigest()[:12]
    path = cache_dir() / f"victim-{dataset}-{key[0]}-{digest}.safetensors"
    with cache_lock(path):
        if path.is_file():
            return load_file(str(path))
        train_on_split(net, task, dataset, epochs, seed, dataset_path=dataset_path, image_size=image_size,
                       progress=progress)
        state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        save_file(state, str(tmp), metadata={"key": json.dumps(full)})
        tmp.replace(path)
        return state
