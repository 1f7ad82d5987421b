"""Inverting Gradients (Geiping, Bauermeister, Droege, Moeller, NeurIPS 2020).

    min_{x'} 1 - <g', g*> / (||g'|| ||g*||) + a_TV TV(x'),   g' = grad_theta L(x', y)

with the inner product and norms over all parameter tensors concatenated. Adam (lr 0.1) on
sign(grad_x), projection onto the pixel box after each step, step decay x0.1 at 3/8, 5/8 and
7/8 of the run; ``restarts`` independent inits keep the best objective. Labels: granted by
the threat model, else recovered from the last layer (attacks/labels.py). On a FedAvg
update, IG inverts -Delta w as if it were one gradient (its direction is all a cosine uses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attacks.base import Attack, AttackConfig, AttackError, Clock, Reconstruction, Victim, as_list, random_images
from attacks.bn_prior import BNPrior, recovered_statistics
from attacks.labels import recover_labels
from attacks.objectives import Functional, Grads, cosine_distance, observed_gradient, total_variation
from attacks.optimize import adam
from attacks.threat_model import AttackInput


@dataclass(frozen=True)
class IGConfig(AttackConfig):
    iterations: int = 4800
    lr: float = 0.1
    tv: float = 0.2  # total-variation weight (breaching 0.2; older IG code 0.1; paper 1e-2)
    restarts: int = 1
    signed: bool = True
    decay: bool = True
    box: bool = True
    init: str = "randn"
    label_strategy: str = "idlg"  # idlg (B = 1, else count) | bias-sign | row-min | count
    bn_prior: float = 0.1  # threat bn-mode "buffers": weight of the BatchNorm statistics prior (set for scale, untuned)


class IG(Attack):
    name = "ig"
    Config = IGConfig

    def labels(self, fn: Functional, target: Grads, inp: AttackInput, batch: int,
               generator: torch.Generator) -> torch.Tensor:
        if inp.labels is not None:
            return inp.labels
        return recover_labels(fn, target, batch, self.cfg.label_strategy, generator=generator)

    def setup(self, victim: Victim, inputs: list[AttackInput]):
        """(distance closure over x, reference Functional, labels-target) for this attack."""
        inp = inputs[0]
        fn = Functional(victim, inp.sent, inp.bn_mode)
        target = observed_gradient(inp, fn.names, need_scale=False)
        return fn, target, (lambda x, y: cosine_distance(fn.grads(fn.loss(x, y)), target))

    def dummies(self, batch: int, inputs: list[AttackInput]) -> int:
        """How many dummy images are optimised for a batch of ``batch`` (a subclass may keep copies)."""
        return batch

    def prior(self, x: torch.Tensor) -> torch.Tensor | None:
        """An extra term of the objective on the dummies (None: none)."""
        return None

    def images_of(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstructed batch from the dummies."""
        return x

    def reconstruct(self, victim: Victim, inputs: AttackInput | Sequence[AttackInput], *,
                    generator: torch.Generator) -> Reconstruction:
        inputs = as_list(inputs)
        if victim.is_diffusion:
            raise AttackError(f"{self.name} attacks classifiers; use gidm for diffusion models")
        clock = Clock(self.cfg.log_every)
        fn, target, distance = self.setup(victim, inputs)
        batch = max(self.batch_size(inp) for inp in inputs)  # fused observations: the largest
        labels = self.labels(fn, target, inputs[0], batch, generator)
        box = victim.value_range if self.cfg.box else None
        bn = (BNPrior(fn.model, recovered_statistics(fn.model, inputs[0]))
              if inputs[0].bn_mode == "buffers" and self.cfg.bn_prior > 0 else None)
        best_x, best = None, math.inf
        try:
            for restart in range(self.cfg.restarts):
                x = random_images(self.dummies(batch, inputs), victim.shape, victim.value_range, generator,
                                  self.cfg.init).requires_grad_(True)

                def objective() -> torch.Tensor:
                    if bn is not None:
                        bn.reset()
                    value = distance(x, labels) + self.cfg.tv * total_variation(x)
                    extra = self.prior(x)
                    value = value if extra is None else value + extra
                    return value if bn is None else value + self.cfg.bn_prior * bn.value()

                (x_best,), value = adam(objective, [x], iterations=self.cfg.iterations, lr=self.cfg.lr,
                                        signed=self.cfg.signed, decay=self.cfg.decay, boxes=[box], clock=clock,
                                        start=restart * self.cfg.iterations)
                if value < best or best_x is None:
                    best_x, best = x_best, value
        finally:
            if bn is not None:
                bn.close()
        lo, hi = victim.value_range
        return Reconstruction(images=self.images_of(best_x).clamp(lo, hi), labels=labels, history=clock.history,
                              iterations=clock.iterations, extras={"objective": best}, wall_s=clock.elapsed())
