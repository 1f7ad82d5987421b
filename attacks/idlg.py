"""iDLG: improved DLG (Zhao, Mopuri, Bilen 2020).

For B = 1 with cross-entropy and non-negative inputs to the last layer, the true label is
the single negative entry of dL/db (equivalently argmin_c sum_j dL/dW_cj): it is read off
the gradient analytically (attacks/labels.py), and DLG then optimises only the image with
the L2 gradient distance. For B > 1 a label strategy is chosen with ``label_strategy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.dlg import DLG, DLGConfig
from attacks.labels import recover_labels
from attacks.objectives import Functional
from attacks.threat_model import AttackInput


@dataclass(frozen=True)
class IDLGConfig(DLGConfig):
    label_strategy: str = "idlg"  # idlg (B = 1) | bias-sign | row-min | count


class IDLG(DLG):
    name = "idlg"
    Config = IDLGConfig

    def labels(self, fn: Functional, target, inp: AttackInput, batch: int,
               generator: torch.Generator) -> torch.Tensor:
        if inp.labels is not None:
            return inp.labels
        return recover_labels(fn, target, batch, self.cfg.label_strategy, generator=generator)
