"""Gradient-inversion attacks on what an honest-but-curious server observes.

Registry: ``ATTACKS[name](**options)`` builds an attack; ``attack.reconstruct(victim, inputs,
generator=g)`` returns a Reconstruction (attacks/base.py). Only the scoring (attacks/scoring.py,
attacks/metrics.py) compares it with the truth.
"""

from attacks.agic import AGIC
from attacks.base import Attack, AttackError, Reconstruction, Victim
from attacks.dlg import DLG
from attacks.gidm import GIDM
from attacks.gidm_plus import GIDMPlus
from attacks.idlg import IDLG
from attacks.ig import IG
from attacks.simulation import Simulation

ATTACKS: dict[str, type[Attack]] = {a.name: a for a in (DLG, IDLG, IG, Simulation, AGIC, GIDM, GIDMPlus)}


def fusing_attacks() -> list[str]:
    """The attacks that use several observations of one client together (``Attack.fuses``)."""
    return [name for name, cls in ATTACKS.items() if cls.fuses]


def build_attack(name: str, **options) -> Attack:
    if name not in ATTACKS:
        raise AttackError(f"unknown attack '{name}'; known: {', '.join(ATTACKS)}")
    return ATTACKS[name](**options)


__all__ = ["ATTACKS", "Attack", "AttackError", "Reconstruction", "Victim", "build_attack", "fusing_attacks"]
