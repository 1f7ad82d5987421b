"""A client's part in an unlearning round: pick the local objective the server
asked for (``objective`` in the TRAIN config, see strategies/unlearning/protocol.py) and
run it on the client's own data. The forget data never leave the client; only
weights (or, in SalUn's saliency round, a bit-packed mask) travel.

- ``saliency``: SalUn's mask, computed here: the gradient of the summed forget
  loss, its top ``salun-mask-ratio`` share by |g| (mask.top_share), sent as one
  packed uint8 array per parameter (payload "mask"); the gradient itself stays
  here (the server combines the holders' masks by votes, mask.combine_masks);
- ``gradient-ascent``: projected gradient ascent on the forget data within a
  ball around a reference model (Halimi et al.): for a requesting client whose
  aggregation weight a_k in the original run's last round the server sent
  (0 < a_k < 1), the weighted mean of the other clients' models,
  w_ref = (w - a_k w_k) / (1 - a_k), with w_k estimated by the client's own
  local training from w; else (class-level requests, a client absent from the
  last round) the global model, which then is exactly that mean. With
  ``ga-stop-accuracy`` the ascent stops once the accuracy on a validation slice
  falls below it. The spec names no holder of that clean validation set; here it
  is VALIDATION_SIZE test-split images, seeded, the same for every client (no
  client trains on the test split; the slice only decides when to stop, and in
  a deployment the node needs the run's dataset-path for it);
- ``erasediff`` / ``msgm`` / ``salun``: their objectives on (kept, forget)
  data; a client holding no forget data trains normally (under SalUn with the
  saliency mask on its gradients, like every client);
- ``fine-tune`` / ``continue`` (the controls): ordinary local training on the
  client's data at the lr sent; they differ only in the data (fine-tune's
  workspace has the request applied, continue's keeps everything).

``num-examples`` (the FedAvg weight) counts the kept examples the update learned
from: n_retain, and 0 for gradient ascent and for the mask, which see forget data
only. A reply with 0 is a forget-only update, which the server adds with the share
of one client in an equal-weight round (strategies/unlearning/protocol.py), never
weighted by the data being deleted.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from flwr.app import ConfigRecord

from fedsim.config import CONTROLS, RunConfig
from fedsim.data.clients import dataset
from fedsim.models.networks import build_model
from fedsim.models.train import TrainStats, train_local
from fedsim.models.workspace import Workspace
from fedsim.rng import derive
from fedsim.unlearning.common import UnlearnParams
from fedsim.unlearning.erasediff import erasediff_train
from fedsim.unlearning.gradient_ascent import gradient_ascent_train, own_share, reference_model
from fedsim.unlearning.mask import pack_each, top_share, unpack_mask
from fedsim.unlearning.msgm import msgm_train
from fedsim.unlearning.salun import forget_gradient, salun_train

VALIDATION_SIZE = 200  # clean test images the gradient-ascent client checks its accuracy on


def unlearn_params(cfg: RunConfig) -> UnlearnParams:
    return UnlearnParams(
        msgm_loss=cfg.msgm_loss, msgm_weight=cfg.msgm_weight, msgm_every=cfg.msgm_every,
        msgm_orth_form=cfg.msgm_orth_form, msgm_obtuse_form=cfg.msgm_obtuse_form, msgm_margin=cfg.msgm_margin,
        erasediff_lambda=cfg.erasediff_lambda, erasediff_rule=cfg.erasediff_rule, erasediff_eta=cfg.erasediff_eta,
        erasediff_inner_passes=cfg.erasediff_inner_passes, erasediff_target=cfg.erasediff_target,
        salun_mask_ratio=cfg.salun_mask_ratio, salun_beta=cfg.salun_beta, salun_relabel=cfg.salun_relabel,
        grad_clip=cfg.unlearn_grad_clip)


def _mask_of(model: torch.nn.Module, data: bytes) -> dict[str, torch.Tensor]:
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    return {k: torch.from_numpy(v.copy()) for k, v in unpack_mask(data, shapes).items()}


def _flat_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a if a[k].is_floating_point()) ** 0.5)


def run_objective(objective: str, ws: Workspace, pid: int, cfg: RunConfig, sent: ConfigRecord, *,
                  epochs: int, batch_size: int, lr: float, generator: torch.Generator
                  ) -> tuple[dict[str, torch.Tensor], str, TrainStats]:
    """(tensors to send, payload kind, stats) after the objective; ws.model holds the global weights."""
    model, task = ws.model, ws.task
    retain, forget = ws.client_data(pid), ws.forget_data(pid)
    n_forget = int(forget[1].shape[0])
    if objective == "saliency":  # the gradient stays here; its mask goes up
        grads = forget_gradient(model, task, forget, generator=generator)
        mask = top_share({k: g.float().cpu().numpy() for k, g in grads.items()}, cfg.salun_mask_ratio)
        packed = {k: torch.from_numpy(v) for k, v in pack_each(mask).items()}
        return packed, "mask", TrainStats(loss=0.0, steps=1, num_examples=0)
    if objective in CONTROLS:
        stats = train_local(model, task, *retain, epochs=epochs, batch_size=batch_size, lr=lr,
                            optimizer=cfg.optimizer, momentum=cfg.momentum, grad_clip=cfg.grad_clip,
                            generator=generator)
        return model.state_dict(), "weights", stats
    params = unlearn_params(cfg)
    num_classes = ws.train.num_classes
    if objective == "gradient-ascent":
        stats = _gradient_ascent(ws, pid, cfg, forget, own_share(sent, pid), epochs=epochs,
                                 batch_size=batch_size, lr=lr, generator=generator)
    elif objective == "salun":
        mask = _mask_of(model, bytes(sent["salun-mask"])) if "salun-mask" in sent else None
        hooks = [p.register_hook(lambda g, m=mask[name]: g * m.to(g.dtype))
                 for name, p in model.named_parameters()] if mask else []
        try:
            if n_forget:
                stats = salun_train(model, task.schedule, retain, forget, mask, epochs=epochs,
                                    batch_size=batch_size, lr=lr, params=params, num_classes=num_classes,
                                    generator=generator)
            else:
                stats = train_local(model, task, *retain, epochs=epochs, batch_size=batch_size, lr=lr,
                                    optimizer=cfg.optimizer, momentum=cfg.momentum, generator=generator)
        finally:
            for h in hooks:
                h.remove()
    elif objective in ("erasediff", "msgm"):
        if not n_forget:
            stats = train_local(model, task, *retain, epochs=epochs, batch_size=batch_size, lr=lr,
                                optimizer=cfg.optimizer, momentum=cfg.momentum, generator=generator)
        elif objective == "erasediff":
            stats = erasediff_train(model, task.schedule, retain, forget, epochs=epochs, batch_size=batch_size,
                                    lr=lr, params=params, num_classes=num_classes, generator=generator)
        else:
            stats = msgm_train(model, task.schedule, retain, forget, epochs=epochs, batch_size=batch_size,
                               lr=lr, params=params, generator=generator)
    else:
        raise ValueError(f"unknown objective {objective!r} in the TRAIN config")
    if objective == "gradient-ascent":  # trained on forget data only: a forget-only update
        stats = replace(stats, num_examples=0)
    return model.state_dict(), "weights", stats


def validation_slice(cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of VALIDATION_SIZE test-split images drawn with derive(seed, "ga-validation")."""
    test = dataset(cfg, "test")
    idx = derive(cfg.seed, "ga-validation").choice(len(test), size=min(VALIDATION_SIZE, len(test)), replace=False)
    return test.images[torch.from_numpy(idx)], torch.from_numpy(test.labels[idx])


def _gradient_ascent(ws: Workspace, pid: int, cfg: RunConfig, forget, share: float, *, epochs: int,
                     batch_size: int, lr: float, generator: torch.Generator) -> TrainStats:
    model = ws.model
    global_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if 0 < share < 1:
        # the client's own model, as it would have sent it: everything it holds, from w
        own = copy.deepcopy(model)
        images = torch.cat([ws.client_data(pid)[0], forget[0]])
        labels = torch.cat([ws.client_data(pid)[1], forget[1]])
        train_local(own, ws.task, images, labels, epochs=cfg.ga_reference_rounds, batch_size=batch_size,
                    lr=cfg.lr, optimizer=cfg.optimizer, momentum=cfg.momentum, generator=generator)
        reference = reference_model(global_sd, own.state_dict(), share)
    else:
        reference = global_sd
    random_init = build_model(cfg.model, ws.train.shape, ws.train.num_classes, conditional=cfg.conditional,
                              seed=cfg.seed).state_dict()
    radius = cfg.ga_radius * _flat_distance(reference, random_init)
    validation = validation_slice(cfg) if cfg.ga_stop_accuracy > 0 else None
    return gradient_ascent_train(model, ws.task, forget, reference=reference, radius=radius, epochs=epochs,
                                 batch_size=batch_size, lr=lr, generator=generator, validation=validation,
                                 stop_accuracy=cfg.ga_stop_accuracy)
