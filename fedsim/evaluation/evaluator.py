"""The evaluator classifier and the Frechet distance in its feature space.

Inception-FID needs weights that cannot be downloaded here, so generation
quality is scored offline by a SmallCNN trained once per dataset on its train
split and cached on disk. Its penultimate features (128-d) stand in for
Inception's pool3: the Frechet distance (Heusel et al. 2017, eq. 6) between
generated and real features. This is NOT Inception-FID and is not comparable
with published FID numbers; it is comparable across fedsim runs on the same
dataset. The evaluator's test accuracy is reported alongside.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from fedsim.data.datasets import ImageData
from fedsim.models.networks import SmallCNN
from fedsim.models.train import ClassifierTask, accuracy, train_local

EVALUATOR_VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("FEDSIM_CACHE", Path.home() / ".cache" / "fedsim"))


@dataclass
class Evaluator:
    model: SmallCNN
    test_accuracy: float

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        self.model.eval()
        return torch.cat([self.model.features(images[s:s + batch_size])
                          for s in range(0, images.shape[0], batch_size)]).double().numpy()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> np.ndarray:
        self.model.eval()
        return self.model(images).argmax(1).numpy()


def get_evaluator(train: ImageData, test: ImageData, *, epochs: int = 20) -> Evaluator:
    """Train (seed 0) or load the cached evaluator for this dataset."""
    digest = hashlib.sha256(json.dumps([train.name, list(train.shape), len(train.labels),
                                        int(train.labels.sum()), EVALUATOR_VERSION]).encode())
    path = cache_dir() / f"evaluator-{train.name}-{digest.hexdigest()[:12]}"
    if (path / "model.safetensors").is_file():
        model = SmallCNN.from_pretrained(path)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = SmallCNN(train.shape[0], train.num_classes)
        labels = torch.tensor(train.labels)
        train_local(model, ClassifierTask(), train.images, labels, epochs=epochs, batch_size=64,
                    lr=1e-3, generator=torch.Generator().manual_seed(0))
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        if path.exists():  # another process cached it meanwhile: keep theirs
            shutil.rmtree(tmp)
        else:
            tmp.replace(path)
    return Evaluator(model, accuracy(model, test.images, torch.tensor(test.labels)))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) for features (N, D)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Add a small ridge before the matrix square root, as pytorch-fid does for
    # near-singular products (few samples, or a collapsed generator).
    eps = np.eye(s_a.shape[0]) * 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))
