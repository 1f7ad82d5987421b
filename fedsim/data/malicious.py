"""Misbehaving clients for robustness studies: who they are, and the data-level attacks.

``malicious_ids``: round(share x num-clients) partition ids drawn once from (seed, "malicious"):
stable over rounds and the same in every process (server, actors, pre-flight). What they do is
``malicious-kind``:

- model-level, as a client mod on the update they send (fedsim/app/malicious_mod.py):
  ``sign-flip`` sends -s x its update, ``scale`` s x its update, ``noise`` Gaussian noise of
  s x its update's RMS per coordinate instead (s = ``malicious-scale``);
- data-level, on the samples they hold (here, applied by fedsim/data/clients.py):
  ``label-flip`` trains on labels C - 1 - y, ``backdoor`` plants the trigger patch with the
  backdoor target (fedsim/data/backdoor.py; the server reports the attack success rate).
Written by hand: a seeded choice and a label map.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fedsim.data.datasets import ImageData
from fedsim.rng import derive

MODEL_KINDS = ("sign-flip", "scale", "noise")
DATA_KINDS = ("label-flip", "backdoor")


@lru_cache(maxsize=16)  # asked on every TRAIN message by the client mod
def malicious_ids(seed: int, num_clients: int, share: float) -> frozenset[int]:
    """The misbehaving partition ids: round(share x num_clients) of them, drawn from (seed, "malicious")."""
    n = int(round(share * num_clients))
    if n <= 0:
        return frozenset()
    return frozenset(int(i) for i in derive(seed, "malicious").choice(num_clients, size=n, replace=False))


def flip_labels(data: ImageData, idx: np.ndarray) -> ImageData:
    """A copy of ``data`` whose samples ``idx`` have label C - 1 - y (the images shared unchanged)."""
    labels = data.labels.copy()
    labels[idx] = data.num_classes - 1 - labels[idx]
    labels.setflags(write=False)
    return ImageData(data.images, labels, data.num_classes, data.name)
