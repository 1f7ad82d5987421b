"""The target as a label-only black box: each query returns the predicted class and nothing else.

The model sits behind a closure: ``LabelOracle`` holds no reference to it that the attack could
read, only a function from images to labels. Queries are counted against a budget; asking past
it raises ``BudgetExhausted``. Written by hand: a counter and an argmax.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class BudgetExhausted(RuntimeError):
    """The query budget is spent."""


class LabelOracle:
    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor], budget: int) -> None:
        """predict: images (B, C, H, W) -> labels (B,) int64."""
        self._predict = predict
        self.budget, self.used = int(budget), 0

    @classmethod
    def of_model(cls, model: nn.Module, budget: int, batch_size: int = 512) -> LabelOracle:
        """A model's argmax, on no-grad CPU tensors, as the only thing the API gives out."""
        model = model.eval()
        device = next(model.parameters()).device

        @torch.no_grad()
        def predict(x: torch.Tensor) -> torch.Tensor:
            out = [model(x[s:s + batch_size].to(device)).argmax(1).cpu() for s in range(0, len(x), batch_size)]
            return torch.cat(out).long()

        return cls(predict, budget)

    @property
    def left(self) -> int:
        return self.budget - self.used

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Labels (B,) of the queries x; each image counts one query."""
        n = int(x.shape[0])
        if n > self.left:
            raise BudgetExhausted(f"{n} queries asked, {self.left} of {self.budget} left")
        self.used += n
        labels = self._predict(x.detach())
        return labels.detach().clone().long()
