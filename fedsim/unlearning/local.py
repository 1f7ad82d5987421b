"""A client's part in an unlearning round: pick the local objective the server
asked for (``objective`` in the TRAIN config, see strategies/unlearning/protocol.py) and
run it on the client's own data. The forget data never leave the client; only
weights (or, in SalUn's saliency round, a gradient) travel.

- ``saliency``: the gradient of the summed forget loss (SalUn's mask is built
  on the server from the sum over clients);
- ``gradient-ascent``: projected gradient ascent on the forget data within a
  ball around a reference model (Halimi et al.): for the requesting client of
  a client-level request the mean of the other clients' models,
  w_ref = (N w - w_k) / (N - 1), with w_k estimated by the client's own local
  training from w; for a class-level request the global model;
- ``erasediff`` / ``msgm`` / ``salun``: their objectives on (kept, forget)
  data; a client holding no forget data trains normally (under SalUn with the
  saliency mask on its gradients, like every client);
- ``fine-tune`` / ``continue`` (the controls): ordinary local training on the
  client's data at the lr sent; they differ only in the data (fine-tune's
  workspace has the request applied, continue's keeps everything).
"""

from __future__ import annotations

import copy

import torch
from flwr.app import ConfigRecord

from fedsim.config import RunConfig, parse_ids
from fedsim.models.networks import build_model
from fedsim.models.train import TrainStats, train_local
from fedsim.models.workspace import Workspace
from fedsim.unlearning.common import UnlearnParams
from fedsim.unlearning.erasediff import erasediff_train
from fedsim.unlearning.gradient_ascent import gradient_ascent_train, reference_model
from fedsim.unlearning.mask import unpack_mask
from fedsim.unlearning.msgm import msgm_train
from fedsim.unlearning.salun import forget_gradient, salun_train

CONTROLS = ("fine-tune", "continue")  # plain training: what a method must beat (strategies.CONTROLS)


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
    if objective == "saliency":
        grads = forget_gradient(model, task, forget, generator=generator)
        return grads, "gradient", TrainStats(loss=0.0, steps=1, num_examples=n_forget)
    if objective in CONTROLS:
        stats = train_local(model, task, *retain, epochs=epochs, batch_size=batch_size, lr=lr,
                            optimizer=cfg.optimizer, momentum=cfg.momentum, generator=generator)
        return model.state_dict(), "weights", stats
    params = unlearn_params(cfg)
    num_classes = ws.train.num_classes
    if objective == "gradient-ascent":
        stats = _gradient_ascent(ws, pid, cfg, forget, epochs=epochs, batch_size=batch_size, lr=lr,
                                 generator=generator)
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
    return model.state_dict(), "weights", stats


def _gradient_ascent(ws: Workspace, pid: int, cfg: RunConfig, forget, *, epochs: int, batch_size: int,
                     lr: float, generator: torch.Generator) -> TrainStats:
    model = ws.model
    global_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if pid in (parse_ids(cfg.forget_clients) or set()) and cfg.clients_per_round >= 2:
        # the client's own model, as it would have sent it: everything it holds, from w
        own = copy.deepcopy(model)
        images = torch.cat([ws.client_data(pid)[0], forget[0]])
        labels = torch.cat([ws.client_data(pid)[1], forget[1]])
        train_local(own, ws.task, images, labels, epochs=cfg.ga_reference_rounds, batch_size=batch_size,
                    lr=cfg.lr, optimizer=cfg.optimizer, momentum=cfg.momentum, generator=generator)
        reference = reference_model(global_sd, own.state_dict(), cfg.clients_per_round)
    else:
        reference = global_sd
    random_init = build_model(cfg.model, ws.train.shape, ws.train.num_classes, conditional=cfg.conditional,
                              seed=cfg.seed).state_dict()
    radius = cfg.ga_radius * _flat_distance(reference, random_init)
    return gradient_ascent_train(model, ws.task, forget, reference=reference, radius=radius, epochs=epochs,
                                 batch_size=batch_size, lr=lr, generator=generator)
