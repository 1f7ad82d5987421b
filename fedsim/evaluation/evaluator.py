"""The evaluator: a classifier per dataset that names the class of an image, or says "not recognised".

Inception-FID needs weights that cannot be downloaded here, so generated images are
judged offline by a SmallCNN trained once per dataset and cached on disk
(FEDSIM_CACHE, default ~/.cache/fedsim). A classifier alone assigns every input to
some class, noise included, so the evaluator has a reject option made of two tests,
both calibrated on real images it never trained on (a fixed stratified tenth of the
train split; the test split stays untouched for validation):

- **feature-space distance** (Lee et al., NeurIPS 2018): class means and one shared
  covariance of the penultimate features of the training images; an image is far when
  its smallest Mahalanobis distance to a class mean exceeds the CALIBRATION quantile of
  the calibration images' distances. Strong against noise and blur;
- **confidence**: the max softmax must reach the (1 - CALIBRATION) quantile of the
  calibration images' max softmax.

An image is *recognised* when it passes both; ``predict`` gives its class, or -1.
Once built, the evaluator is validated on reference sets (references.py: held-out real
images, uniform and Gaussian noise, blurred and noised real images, samples of an
untrained DDPM) and the table is written next to its weights as ``validation.csv``.

Written by hand because no library offers a calibrated reject option for a custom
classifier; the training loop is the plain PyTorch one with 1-pixel random shifts.
Its 128-d penultimate features are the feature space of FD, KID and precision/recall
(metrics.py); none of these are comparable with published Inception-based numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fedsim.data.datasets import ImageData
from fedsim.models.networks import SmallCNN

EVALUATOR_VERSION = 2
CALIBRATION = 0.985  # share of calibration images each reject test accepts
CALIBRATION_PERCENT = 10  # of each class of the train split, held out to calibrate the thresholds
EPOCHS = 30
WIDTH = 64


def cache_dir() -> Path:
    return Path(os.environ.get("FEDSIM_CACHE", Path.home() / ".cache" / "fedsim"))


@dataclass
class Evaluator:
    model: SmallCNN
    class_means: torch.Tensor  # (K, D) penultimate features per class, training images
    precision: torch.Tensor  # (D, D) inverse of the shared covariance (with a ridge)
    max_distance: float  # Mahalanobis threshold (squared distance)
    min_confidence: float  # max-softmax threshold
    test_accuracy: float  # plain argmax accuracy on the test split, every image counted
    validation: pd.DataFrame = field(default_factory=pd.DataFrame)

    @torch.no_grad()
    def _forward(self, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D), logits (N, K)) in float32."""
        self.model.eval()
        feats, logits = [], []
        for s in range(0, images.shape[0], batch_size):
            f = self.model.features(images[s:s + batch_size].float())
            feats.append(f)
            logits.append(self.model.head(f))
        if not feats:
            return torch.zeros(0, self.class_means.shape[1]), torch.zeros(0, self.class_means.shape[0])
        return torch.cat(feats), torch.cat(logits)

    def features(self, images: torch.Tensor) -> np.ndarray:
        """(N, D) float64 penultimate features: the space of FD, KID and precision/recall."""
        return self._forward(images)[0].double().numpy()

    def distance(self, feats: torch.Tensor) -> torch.Tensor:
        """(N,) smallest squared Mahalanobis distance to a class mean."""
        diff = feats[:, None, :] - self.class_means[None]  # (N, K, D)
        return torch.einsum("nkd,de,nke->nk", diff, self.precision, diff).min(1).values

    def judge(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(argmax over the K classes (N,), recognised (N,) bool)."""
        return self._judge(*self._forward(images))

    def predict_with_features(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``predict`` and ``features`` from one pass over the images."""
        return self.predict_full(images)[:2]

    def predict_full(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``predict``, ``features`` and the softmax over the K classes (N, K), the reject
        logit left out (rows sum to 1, as a plain classifier's would), from one pass."""
        feats, logits = self._forward(images)
        pred, ok = self._judge(feats, logits)
        return np.where(ok, pred, -1), feats.double().numpy(), logits[:, :-1].softmax(1).double().numpy()

    def _judge(self, feats: torch.Tensor, logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        prob = logits.softmax(1)  # K classes + the reject class
        conf, pred = prob[:, :-1].max(1)
        ok = (self.distance(feats) <= self.max_distance) & (conf >= self.min_confidence) & (prob.argmax(1) < prob.shape[1] - 1)
        return pred.numpy(), ok.numpy()

    def predict(self, images: torch.Tensor) -> np.ndarray:
        """(N,) the class of each recognised image, -1 for an image not recognised."""
        pred, ok = self.judge(images)
        return np.where(ok, pred, -1)


def calibration_split(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the fixed stratified CALIBRATION_PERCENT % of each class (seed 0)."""
    rng = np.random.default_rng(0)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        mask[idx[:max(1, len(idx) * CALIBRATION_PERCENT // 100)]] = True
    return mask


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to 1 pixel per axis (background -1 fills the border)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[..., dy:dy + h, dx:dx + w]


def synthetic_negatives(real: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A batch of "not an image of this dataset" examples, as many as `real`: a quarter each
    of uniform noise, Gaussian noise, real images blurred (sigma 1/10 to 1/5 of the side) and
    real images under strong noise (std 0.5 to 1). Untrained-DDPM samples are never used here:
    they validate the reject option on a kind it did not train on."""
    from fedsim.evaluation.references import gaussian_blur

    n, side = len(real), real.shape[-1]
    kind = torch.arange(n) % 4
    out = torch.empty_like(real)
    out[kind == 0] = torch.rand(out[kind == 0].shape, generator=generator) * 2 - 1
    out[kind == 1] = torch.randn(out[kind == 1].shape, generator=generator).clamp(-1, 1)
    sigma = side * (0.1 + 0.1 * float(torch.rand((), generator=generator)))
    out[kind == 2] = gaussian_blur(real[kind == 2], sigma)
    std = 0.5 + 0.5 * torch.rand((int((kind == 3).sum()), 1, 1, 1), generator=generator)
    out[kind == 3] = real[kind == 3] + std * torch.randn(real[kind == 3].shape, generator=generator)
    return out.clamp(-1, 1)


def _train(model: SmallCNN, images: torch.Tensor, labels: torch.Tensor, epochs: int) -> None:
    """Cross-entropy over K classes plus the reject class K, which gets one synthetic negative
    per four real images in every batch."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    reject = model.config["num_classes"] - 1
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for s in range(0, len(images), 64):
            idx = order[s:s + 64]
            neg = synthetic_negatives(images[idx[:16]], gen)
            x = torch.cat([_shift(images[idx], gen), neg])
            y = torch.cat([labels[idx], torch.full((len(neg),), reject)])
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()


def fit(train: ImageData, *, epochs: int = EPOCHS) -> Evaluator:
    """Train the classifier on the train split minus the calibration tenth, fit the class
    means and covariance, calibrate both thresholds. Seeded: the same data gives the same evaluator."""
    cal = calibration_split(train.labels)
    images, labels = train.images, torch.from_numpy(np.array(train.labels))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SmallCNN(train.shape[0], train.num_classes + 1, width=WIDTH)
    _train(model, images[~cal], labels[~cal], epochs)
    ev = Evaluator(model, torch.zeros(train.num_classes, 128), torch.eye(128), np.inf, 0.0, float("nan"))
    fit_stats(ev, images[~cal], labels[~cal])
    calibrate(ev, images[cal])
    return ev


def fit_stats(ev: Evaluator, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Class means and the shared covariance (ridge 1e-3 of its mean variance) of the features."""
    feats = ev._forward(images)[0].double()
    k = int(labels.max()) + 1
    means = torch.stack([feats[labels == c].mean(0) for c in range(k)])
    centred = feats - means[labels]
    cov = centred.T @ centred / max(len(feats) - k, 1)
    cov += torch.eye(cov.shape[0], dtype=cov.dtype) * (1e-3 * float(cov.diagonal().mean()) + 1e-9)
    ev.class_means, ev.precision = means.float(), torch.linalg.inv(cov).float()


def calibrate(ev: Evaluator, images: torch.Tensor) -> None:
    feats, logits = ev._forward(images)
    ev.max_distance = float(torch.quantile(ev.distance(feats).double(), CALIBRATION))
    ev.min_confidence = float(torch.quantile(logits.softmax(1)[:, :-1].max(1).values.double(), 1 - CALIBRATION))


def _digest(train: ImageData) -> str:
    key = [train.name, list(train.shape), len(train.labels), int(train.labels.sum()),
           float(train.images[:64].sum()), EVALUATOR_VERSION, CALIBRATION, EPOCHS]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]


def _save(ev: Evaluator, path: Path) -> None:
    ev.model.save_pretrained(path)
    from safetensors.torch import save_file

    save_file({"class_means": ev.class_means.contiguous(), "precision": ev.precision.contiguous()},
              str(path / "reject.safetensors"))
    (path / "reject.json").write_text(json.dumps({"max_distance": ev.max_distance,
                                                  "min_confidence": ev.min_confidence,
                                                  "calibration": CALIBRATION}, indent=1))
    ev.validation.to_csv(path / "validation.csv", index=False)


def _load(path: Path) -> Evaluator:
    from safetensors.torch import load_file

    tensors = load_file(str(path / "reject.safetensors"))
    meta = json.loads((path / "reject.json").read_text())
    return Evaluator(SmallCNN.from_pretrained(path), tensors["class_means"], tensors["precision"],
                     meta["max_distance"], meta["min_confidence"], float("nan"),
                     pd.read_csv(path / "validation.csv"))


def evaluator_path(train: ImageData) -> Path:
    return cache_dir() / f"evaluator-{train.name}-{_digest(train)}"


def get_evaluator(train: ImageData, test: ImageData) -> Evaluator:
    """Build (seed 0), validate and cache, or load, the evaluator of this dataset."""
    from fedsim.evaluation.references import validate

    path = evaluator_path(train)
    if (path / "validation.csv").is_file():
        ev = _load(path)
    else:
        ev = fit(train)
        ev.validation = validate(ev, test)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        _save(ev, tmp)
        if path.exists():  # another process cached it meanwhile: keep theirs
            shutil.rmtree(tmp)
            ev = _load(path)
        else:
            tmp.replace(path)
    pred = ev._forward(test.images)[1][:, :-1].argmax(1).numpy()
    ev.test_accuracy = float((pred == test.labels).mean())
    return ev
