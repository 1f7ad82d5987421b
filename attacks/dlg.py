"""DLG: Deep Leakage from Gradients (Zhu, Liu, Han, NeurIPS 2019).

    min_{x', y'} || grad_theta CE(f(x'), softmax(y')) - g* ||^2

over dummy images x' (B, C, H, W) and label logits y' (B, K), with L-BFGS (lr 1). The
recovered label is argmax y'. When the threat model grants the labels, only x' is
optimised. Reliable on a sigmoid LeNet with uniform(-0.5, 0.5) weights; with PyTorch's
default init it usually fails (shared/papers/attacks.md, peer numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attacks.base import Attack, AttackConfig, AttackError, Clock, Reconstruction, Victim, as_list, random_images
from attacks.objectives import Functional, l2_distance, observed_gradient
from attacks.optimize import lbfgs
from attacks.threat_model import AttackInput


@dataclass(frozen=True)
class DLGConfig(AttackConfig):
    iterations: int = 300  # L-BFGS steps
    lr: float = 1.0
    inner: int = 20  # closure evaluations per L-BFGS step (torch's max_iter)
    init: str = "randn"  # dummy-image init: randn | uniform | zeros


class DLG(Attack):
    name = "dlg"
    Config = DLGConfig

    def labels(self, fn: Functional, target, inp: AttackInput, batch: int,
               generator: torch.Generator) -> torch.Tensor | None:
        """Known labels when granted; None means: optimise them jointly (DLG)."""
        return inp.labels

    def reconstruct(self, victim: Victim, inputs: AttackInput | Sequence[AttackInput], *,
                    generator: torch.Generator) -> Reconstruction:
        inp = as_list(inputs)[0]
        if victim.is_diffusion:
            raise AttackError(f"{self.name} attacks classifiers; use gidm (or gidm with phases = 'pixel') "
                              "for diffusion models")
        clock = Clock(self.cfg.log_every)
        fn = Functional(victim, inp.sent, inp.bn_mode)
        target = observed_gradient(inp, fn.names)
        batch = self.batch_size(inp)
        labels = self.labels(fn, target, inp, batch, generator)
        x = random_images(batch, victim.shape, victim.value_range, generator, self.cfg.init).requires_grad_(True)
        variables = [x]
        if labels is None:
            y_logits = torch.randn((batch, victim.num_classes), generator=generator).requires_grad_(True)
            variables.append(y_logits)

        def objective() -> torch.Tensor:
            if labels is None:
                loss = fn.loss(x, soft_labels=torch.softmax(variables[1], dim=1))
            else:
                loss = fn.loss(x, labels)
            return l2_distance(fn.grads(loss), target)

        best, _ = lbfgs(objective, variables, iterations=self.cfg.iterations, lr=self.cfg.lr,
                        inner=self.cfg.inner, clock=clock)
        out_labels = labels if labels is not None else best[1].argmax(1)
        lo, hi = victim.value_range
        return Reconstruction(images=best[0].clamp(lo, hi), labels=out_labels, history=clock.history,
                              iterations=clock.iterations, wall_s=clock.elapsed())
