"""The GIDM prior: a diffusion model of the victim's domain, trained on data the victim never holds.

GIDM's phase 1 searches the latent space of a *trained* model with the victim's architecture
and schedule. The attacker trains it here on the dataset's train split (the attacked clients
hold test-split images, so the two are disjoint) and caches it under $FEDSIM_CACHE
(default ~/.cache/fedsim), keyed by everything that shapes it. Trained once (minutes on a
CPU for digits with ddpm-tiny), then loaded; one process trains it while another asking waits.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path


from attacks.pretrained import cache_lock, train_on_split
from fedsim.data.datasets import load_dataset
from fedsim.evaluation.evaluator import cache_dir
from fedsim.models.diffusion import NoiseSchedule
from fedsim.models.networks import build_model, save_model
from fedsim.models.train import DiffusionTask

PRIOR_VERSION = 1


def prior_path(dataset: str, model: str, timesteps: int, beta_schedule: str, *, epochs: int = 60,
               seed: int = 0, dataset_path: str | None = None, image_size: int = 0, progress=None) -> Path:
    """Train (or load from the cache) the prior and return its diffusers model directory."""
    key = [dataset, dataset_path or "", model, timesteps, beta_schedule, epochs, seed, PRIOR_VERSION]
    key += [image_size] if image_size else []  # (keys of default-size priors as before)
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]
    path = cache_dir() / f"prior-{dataset}-{model}-{digest}"
    with cache_lock(path):
        if (path / "config.json").is_file():
            return path
        data = load_dataset(dataset, "train", dataset_path, image_size)
        net = build_model(model, data.shape, data.num_classes, seed=seed)
        task = DiffusionTask(NoiseSchedule(timesteps, beta_schedule))
        train_on_split(net, task, dataset, epochs, seed, dataset_path=dataset_path, image_size=image_size,
                       progress=progress)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        save_model(net, tmp)
        (tmp / "fedsim_prior.json").write_text(json.dumps(dict(zip(
            ["dataset", "dataset_path", "model", "timesteps", "beta_schedule", "epochs", "seed", "version", "image_size"],
            key))))
        if path.exists():  # a cut-off attempt's folder without its config.json
            shutil.rmtree(path)
        tmp.replace(path)
        return path
