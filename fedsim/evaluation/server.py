"""Server-side evaluation of the global model after every round.

Every round: held-out loss on the test split with a fixed probe (the same
(eps, t) per test image every round, so rounds are comparable), or test
accuracy for classifiers (with a backdoor, from backdoor-clients or malicious clients, also ``backdoor_acc``, the share of
triggered test images classified as the target: fedsim/evaluation/backdoor.py). At
evaluation rounds (every ``eval-every`` rounds and the last) for diffusion models: a PNG
grid of samples; the share of samples the evaluator recognises (``recognised``) and, per
class, the share recognised as that class (``gen_class_c``: unrecognised samples count
for no class); for class-conditional models, the share recognised as the class they were
conditioned on (``label_match``); FD, KID and precision/recall in the evaluator's feature
space against one half of the test split, each beside its floor (the other half against
the same reference, at the same N); Inception-FID when ``inception-weights`` names a
local TorchScript Inception.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fedsim.config import RunConfig
from fedsim.data.clients import backdoor_clients, dataset
from fedsim.evaluation.backdoor import backdoor_accuracy
from fedsim.evaluation.evaluator import Evaluator, get_evaluator
from fedsim.evaluation.inception import inception_features, load_inception
from fedsim.evaluation.metrics import frechet_distance, real_halves, scores
from fedsim.models.diffusion import sample
from fedsim.models.train import Task, accuracy, run_task, per_sample_losses
from fedsim.models.workspace import fresh_model, pick_device
from fedsim.rng import torch_generator

QUALITY_METRICS = ("fd", "fd_floor", "kid", "kid_std", "kid_floor", "precision", "precision_floor",
                   "recall", "recall_floor")


def save_grid(images: torch.Tensor, path: Path, ncol: int = 16, scale: int = 4) -> None:
    """(N, C, H, W) in [-1, 1] -> one PNG, nearest-neighbour upscaled."""
    n, c, h, w = images.shape
    ncol = min(ncol, n)
    nrow = -(-n // ncol)
    grid = torch.ones(c, nrow * (h + 1) + 1, ncol * (w + 1) + 1)
    for i, img in enumerate(images):
        r, k = divmod(i, ncol)
        grid[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w] = img
    arr = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[..., 0] if c == 1 else arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST).save(path)


class ServerEvaluator:
    def __init__(self, cfg: RunConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self.test = dataset(cfg, "test")
        self.device = pick_device(cfg.device)
        self.model = fresh_model(cfg, self.test).to(self.device)
        self.task: Task = run_task(cfg)
        self.labels = torch.tensor(self.test.labels)
        self._evaluator: Evaluator | None = None
        self._real_features: tuple[np.ndarray, np.ndarray] | None = None  # (floor half, reference half)
        self._real_inception: np.ndarray | None = None
        self.ema = None
        if cfg.ema_decay > 0:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.model.parameters(), decay=cfg.ema_decay)

    @property
    def quality_columns(self) -> list[str]:
        if not self.cfg.is_diffusion:
            return ["test_acc", *(["backdoor_acc"] if backdoor_clients(self.cfg) else [])]
        extra = ["inception_fid"] if self.cfg.inception_weights else []
        match = ["label_match"] if self.cfg.conditional else []
        return ["recognised", *match, *QUALITY_METRICS, *extra, "evaluator_acc",
                *[f"gen_class_{c}" for c in range(self.test.num_classes)]]

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = get_evaluator(dataset(self.cfg, "train"), self.test)
            feats = self._evaluator.features(self.test.images)
            floor, reference = real_halves(self.test.labels)
            self._real_features = feats[floor], feats[reference]
        return self._evaluator

    def score_images(self, images: torch.Tensor, seed: int) -> tuple[np.ndarray, dict[str, float]]:
        """The evaluator's predictions for generated images (-1: rejected), and their recognised
        share with FD, KID, precision and recall against the reference half (floors from the other)."""
        pred, feats = self.evaluator.predict_with_features(images)
        floor, reference = self._real_features
        return pred, {"recognised": float((pred >= 0).mean()), **scores(feats, floor, reference, seed=seed)}

    def is_quality_round(self, rnd: int) -> bool:
        every = self.cfg.eval_every
        return every > 0 and (rnd == self.cfg.rounds or rnd % every == 0)

    def __call__(self, rnd: int, state_dict: dict[str, torch.Tensor]) -> dict[str, float]:
        """Scores of the global model after round `rnd` (0: the initial model); with ema-decay,
        of the EMA of the global models so far, which this call first updates."""
        self.model.load_state_dict(state_dict)
        if self.ema is not None and rnd > 0:
            self.ema.step(self.model.parameters())
            self.ema.copy_to(self.model.parameters())
        losses = per_sample_losses(self.model, self.task, self.test.images, self.labels,
                                   generator=torch_generator(self.cfg.seed, "eval-probe"))
        out = {"eval_loss": float(losses.mean())}
        if not self.cfg.is_diffusion:
            out["test_acc"] = accuracy(self.model, self.test.images, self.labels)
            if backdoor_clients(self.cfg):
                out["backdoor_acc"] = backdoor_accuracy(self.model, self.test.images, self.labels,
                                                        self.cfg.backdoor_target)
        elif rnd > 0 and self.is_quality_round(rnd):
            out.update(self.quality(rnd))
        return out

    def utility(self, state_dict: dict[str, torch.Tensor]) -> float:
        """One score of a model, higher is better: test accuracy (classifiers) or minus the
        held-out loss with the fixed probe (diffusion). Used to value client contributions."""
        self.model.load_state_dict(state_dict)
        if not self.cfg.is_diffusion:
            return accuracy(self.model, self.test.images, self.labels)
        losses = per_sample_losses(self.model, self.task, self.test.images, self.labels,
                                   generator=torch_generator(self.cfg.seed, "eval-probe"))
        return -float(losses.mean())

    def quality(self, rnd: int) -> dict[str, float]:
        cfg, k = self.cfg, self.test.num_classes
        labels = torch.arange(cfg.num_samples) % k if cfg.conditional else None
        images = sample(self.model, self.task.schedule, cfg.num_samples, self.test.shape,
                        generator=torch_generator(cfg.seed, "sample", rnd), sampler=cfg.sampler,
                        steps=cfg.sample_steps, labels=labels, device=self.device).cpu()
        if labels is not None:  # class-conditional: one column per class, up to 10 rows
            save_grid(images[:k * max(1, min(10, cfg.num_samples // k))], self.out / "samples" / f"round_{rnd:03d}.png", ncol=k)
        else:
            save_grid(images[:64], self.out / "samples" / f"round_{rnd:03d}.png")
        pred, row = self.score_images(images, cfg.seed)
        hist = np.bincount(pred[pred >= 0], minlength=k) / len(images)
        row.update({"evaluator_acc": self.evaluator.test_accuracy,
                    "label_match": float((pred == labels.numpy()).mean()) if labels is not None else float("nan")})
        row.update({f"gen_class_{c}": float(hist[c]) for c in range(k)})
        if cfg.inception_weights:
            detector = load_inception(cfg.inception_weights)
            if self._real_inception is None:
                self._real_inception = inception_features(detector, self.test.images)
            row["inception_fid"] = frechet_distance(inception_features(detector, images), self._real_inception)
        return {key: row[key] for key in self.quality_columns}
