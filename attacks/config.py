"""``fedsim attack`` config: one frozen dataclass, kebab-case TOML keys, unknown keys rejected.

A file names the attack, the victim (model, dataset), how the client trains (batch size =
images the client holds, local steps: 1 = a FedSGD gradient, > 1 = a FedAvg update), the
defense, the threat model, and the attack's own options in an ``[options]`` table:

    attack = "ig"
    model = "convnet"
    dataset = "photos"
    batch-size = 1
    [threat]
    labels = "recovered"
    [options]
    iterations = 2000

``--set key=value`` overrides top-level keys, ``threat.KEY=value`` and ``options.KEY=value``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from attacks.threat_model import ThreatModel
from fedsim.compression.codecs import make_codec
from fedsim.config import ConfigError, parse_override, read_toml


@dataclass(frozen=True)
class AttackRunConfig:
    attack: str = "ig"
    model: str = "convnet"  # lenet | convnet | cnn | ddpm-tiny | ddpm-small | ...
    init: str = "default"  # victim weights: default | uniform (DLG's U(-0.5, 0.5))
    victim_epochs: int = 0  # > 0: the victim is trained that many epochs on the train split first (cached)
    dataset: str = "photos"
    dataset_path: str = ""
    image_size: int = 0  # mnist5k / folder: the side (0: the dataset's default, mnist5k 16; 28: MNIST's own)
    timesteps: int = 16  # diffusion victims
    beta_schedule: str = "squaredcos_cap_v2"
    t_mode: str = "shared"  # shared | per-sample (diffusion client noise)
    batch_size: int = 1  # images the attacked client holds (reconstructed together)
    local_steps: int = 1  # 1: FedSGD gradient; > 1: FedAvg update of that many SGD steps
    lr: float = 0.05  # client SGD learning rate
    defense: str = "none"  # none | dp (update clip + noise) | dp-sgd (Opacus) | secagg (SecAgg+ aggregate) | topk | stc | dhq | qsgd
    dp_clip: float = 1.0  # the L2 clip norm (of the update; of each sample's gradient with dp-sgd): the sensitivity
    dp_epsilon: float = 8.0
    dp_delta: float = 1e-5
    dp_releases: int = 1  # the client's noised updates (dp-sgd: rounds of local steps) the budget covers
    secagg_clients: int = 4  # defense secagg: clients in the round's SecAgg+ aggregate (the attacked one included)
    keep_ratio: float = 0.01  # defense topk / stc / dhq: the update is compressed as fedsim's codec sends it
    dhq_levels: int = 4
    qsgd_levels: int = 16
    trials: int = 1
    seed: int = 0
    prior_epochs: int = 60  # GIDM prior training when no prior path is given
    lpips_backbone: str = ""  # torchvision's AlexNet checkpoint (alexnet-owt-7be5be79.pth): LPIPS; "": n/a
    threat: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def threat_model(self) -> ThreatModel:
        known = {f.name for f in dataclasses.fields(ThreatModel)}
        values = {}
        for k, v in self.threat.items():
            name = k.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown threat key '{k}'; known: "
                                  f"{', '.join(sorted(n.replace('_', '-') for n in known))}")
            values[name] = v
        return ThreatModel(**values)

    def codec(self):
        """The uplink codec of a compression defense (None for none / dp)."""
        if self.defense in ("none", "dp", "dp-sgd", "secagg"):
            return None
        return make_codec(self.defense, keep_ratio=self.keep_ratio, levels=self.dhq_levels,
                          qsgd_levels=self.qsgd_levels)

    def replace(self, **changes: Any) -> AttackRunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v for k, v in out.items() if v != {} and v is not None}


DEFENSES = ("none", "dp", "dp-sgd", "secagg", "topk", "stc", "dhq", "qsgd")


def load_attack_config(mapping: dict[str, Any]) -> AttackRunConfig:
    fields = {f.name: f for f in dataclasses.fields(AttackRunConfig)}
    values: dict[str, Any] = {}
    for key, value in mapping.items():
        name = key.replace("-", "_")
        if name == "dp_sensitivity":
            raise ConfigError("dp-sensitivity was removed: the sensitivity of a clipped update is dp-clip, and the "
                              "noise comes from the accountant (set dp-epsilon, dp-delta, dp-releases)")
        if name not in fields:
            raise ConfigError(f"unknown attack config key '{key}'; known: "
                              f"{', '.join(sorted(k.replace('_', '-') for k in fields))}")
        default = fields[name].default
        if name in ("threat", "options"):
            if not isinstance(value, dict):
                raise ConfigError(f"'{key}' must be a table")
        elif default is not dataclasses.MISSING and type(default) is not type(value):
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            else:
                raise ConfigError(f"'{key}' must be {type(default).__name__}, got {value!r}")
        values[name] = value
    cfg = AttackRunConfig(**values)
    for key, allowed in (("defense", DEFENSES), ("t_mode", ("shared", "per-sample")),
                         ("init", ("default", "uniform"))):
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"'{key.replace('_', '-')}' must be one of {', '.join(allowed)}")
    for key in ("batch_size", "local_steps", "trials", "timesteps", "dp_releases"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"'{key.replace('_', '-')}' must be >= 1")
    if cfg.secagg_clients < 2:
        raise ConfigError("'secagg-clients' must be >= 2 (secure aggregation of one client is its reply)")
    if cfg.victim_epochs < 0:
        raise ConfigError("'victim-epochs' must be >= 0 (0: the victim at initialisation)")
    if not (cfg.dp_epsilon > 0 and 0 < cfg.dp_delta < 1 and cfg.dp_clip > 0):
        raise ConfigError("dp-epsilon and dp-clip must be > 0 and dp-delta in (0, 1)")
    if cfg.lpips_backbone and not Path(cfg.lpips_backbone).expanduser().is_file():
        raise ConfigError(f"lpips-backbone {cfg.lpips_backbone}: no such file (torchvision's AlexNet checkpoint, "
                          "alexnet-owt-7be5be79.pth)")
    cfg.threat_model()
    try:
        cfg.codec()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return cfg


def resolve_attack(path: str | Path | None, overrides: list[str]) -> AttackRunConfig:
    mapping = read_toml(path) if path else {}
    for item in overrides:
        key, value = parse_override(item)
        head, dot, rest = key.partition(".")
        if dot and head in ("threat", "options"):
            mapping.setdefault(head, {})[rest] = value
        else:
            mapping[key] = value
    return load_attack_config(mapping)


def dump(cfg: AttackRunConfig, path: Path) -> None:
    path.write_text(tomli_w.dumps(cfg.to_dict()))
