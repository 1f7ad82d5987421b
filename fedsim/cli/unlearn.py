"""``fedsim unlearn --run DIR (--client K | --class C) --method M [--set ...] [--out DIR2]``.

Turns a deletion request on a finished run into one more federated run, then
scores it. Every method is a run of the same ServerApp/ClientApp, configured
from DIR's config.toml:

    retrain          replay DIR's ledger (same initial model, seeds and
                     participants per round) without the forgotten data
    federaser        start from DIR's ledger (M(t_1), minus the forgotten
                     client's first stored update), then one calibration round
                     per stored round (strategies/unlearning/federaser.py)
    gradient-ascent  from DIR's model: ``unlearn-rounds`` rounds (gradient ascent:
    erasediff        1) of projected gradient ascent / EraseDiff / SalUn (+ its
    salun            mask round) / MSGM by the clients holding forget data, the
    msgm             others training normally (strategies/unlearning/protocol.py), at
                     ``unlearn-lr`` if set; gradient ascent then adds 2 normal rounds
    fine-tune        controls: ``unlearn-rounds`` rounds of ordinary training from DIR's
    continue         model at ``unlearn-lr``, fine-tune on the data the clients keep (the
                     FT baseline of the SalUn and EraseDiff papers), continue on all data,
                     forget data included (what training longer alone changes)

Defaults follow from the method (rounds, start model, local epochs); any key
can still be overridden with ``--set``. The unlearning run keeps no ledger
updates and records no observations unless asked (``--set record-clients=all``,
as for any run: what the server sees, e.g. SalUn's masks); its clients start from fresh state, so
compression residuals of the forgotten client are gone, and clients declare
histograms of the data they keep, so FedEMD's p_glob no longer counts the
forgotten data.

The report (DIR2/unlearning/) scores the original model, the unlearned one
and, with ``--retrain DIR3``, a retrained one (fedsim/unlearning/report.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_type_hints

from rich.console import Console

from fedsim.config import ConfigError, RunConfig, load_config, parse_ids, parse_override, read_toml

# retrain, then every unlearn-method RunConfig accepts (one list: the config's Literal)
METHODS = ("retrain", *(m for m in get_args(get_type_hints(RunConfig)["unlearn_method"]) if m))
GA_NORMAL_ROUNDS = 2  # normal rounds after gradient ascent (Halimi et al.: a few)


def original_config(run_dir: Path) -> RunConfig:
    """The config of a finished, ordinary run (the one a request is made against)."""
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"--run {run_dir}: not a run folder (no config.toml)")
    cfg = load_config(read_toml(run_dir / "config.toml"))
    if not (run_dir / "model" / "config.json").is_file():
        raise ConfigError(f"--run {run_dir} has no trained model (model/); did the run finish?")
    if cfg.unlearn_method or cfg.forget_clients.strip() or cfg.forget_class >= 0:
        raise ConfigError(f"--run {run_dir} is itself an unlearning run; pass the original run")
    return cfg


def request_keys(original: RunConfig, client: int | None, klass: int | None) -> dict[str, Any]:
    if (client is None) == (klass is None):
        raise ConfigError("give exactly one of --client K or --class C")
    if client is not None and not 0 <= client < original.num_clients:
        raise ConfigError(f"--client {client} is not a partition id of the run (0..{original.num_clients - 1})")
    if klass is not None and klass < 0:
        raise ConfigError(f"--class {klass} must be >= 0")
    return {"forget-clients": str(client) if client is not None else "", "forget-class": -1 if klass is None else klass}


def unlearn_config(run_dir: Path, method: str, request: dict[str, Any], overrides: list[str],
                   out: Path) -> RunConfig:
    """The run config of method ``method`` (``out``: the unlearning run folder, where
    FedEraser's start model is written unless ``out`` already holds a run)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; known: {', '.join(METHODS)}")
    original = original_config(run_dir)
    user = dict(parse_override(item) for item in overrides)
    mapping = {**original.to_flwr(), **request, "record-clients": "", "ledger-every": 0, "eval-every": 0,
               "out-dir": str(out)}
    if method == "retrain":
        mapping["replay"] = str(run_dir)
    else:
        mapping["unlearn-method"] = method
        mapping["unlearn-from"] = str(run_dir)
        mapping["pretrained"] = str(run_dir / "model")
    mapping.update(user)
    cfg = load_config(mapping)  # validates the user's keys too
    if method == "federaser":
        return _federaser(cfg, run_dir, out, user)
    if method == "gradient-ascent" and "unlearn-rounds" not in user:
        cfg = cfg.replace(unlearn_rounds=1)  # one ascent round, then normal rounds (Halimi et al.)
    if method != "retrain" and "rounds" not in user:
        extra = 1 if method == "salun" else GA_NORMAL_ROUNDS if method == "gradient-ascent" else 0
        cfg = cfg.replace(rounds=cfg.unlearn_rounds + extra)
    return cfg


def _federaser(cfg: RunConfig, run_dir: Path, out: Path, user: dict[str, Any]) -> RunConfig:
    from fedsim.data.clients import dataset
    from fedsim.models.networks import save_model
    from fedsim.models.workspace import fresh_model
    from fedsim.records.ledger import load_ledger
    from strategies.unlearning.federaser import calibration_rounds, start_model

    if cfg.mode != "fedavg":
        raise ConfigError("federaser replays weight updates: the run must use mode = fedavg")
    try:
        ledger = load_ledger(run_dir)
    except FileNotFoundError as err:
        raise ConfigError(f"federaser: {err}") from None
    forgotten = parse_ids(cfg.forget_clients, "forget-clients") or set()
    rounds = calibration_rounds(ledger, client_level=bool(forgotten))
    if not rounds:
        raise ConfigError(f"federaser needs client updates stored during training; {run_dir} was trained with "
                          f"ledger-every = {ledger.every} (train with --set ledger-every=2)")
    original = load_config(read_toml(run_dir / "config.toml"))
    start = out / "unlearning" / "start_model"
    if not (out / "metrics.csv").exists():  # else continued() decides: this run's own start model, or refused
        model = fresh_model(original.replace(pretrained=str(run_dir / "model")), dataset(original, "train"))
        model.load_state_dict(start_model(ledger, forgotten, client_level=bool(forgotten)))
        save_model(model, start)
    epochs = max(1, round(cfg.federaser_ratio * original.local_epochs))
    changes = {"pretrained": str(start), "rounds": len(rounds), "local_epochs": epochs}
    return cfg.replace(**{k: v for k, v in changes.items() if k.replace("_", "-") not in user})


def continued(out: Path, cfg: RunConfig, warn) -> tuple[RunConfig, bool]:
    """(config to run into ``out``, whether any round is left). A fresh folder runs ``cfg``; one
    that holds this same run continues it from its last checkpoint (or, finished, is only
    scored again); one holding another run is refused (fedsim/cli/resume.py)."""
    if not (out / "metrics.csv").exists():
        return cfg, True
    from fedsim.cli.resume import continue_config

    return continue_config(out, cfg, warn, flag=f"--out {out} holds a run")


def report(run_dir: Path, out: Path, method: str, retrain: Path | None, num_samples: int,
           console: Console) -> Path:
    """Score original, unlearned (and retrained) models into out/unlearning/."""
    from fedsim.unlearning.report import Request, cost, write_report

    original = load_config(read_toml(run_dir / "config.toml"))
    request = Request.of(load_config(read_toml(out / "config.toml")))
    target = out / "unlearning"
    target.mkdir(parents=True, exist_ok=True)
    models = [("original", run_dir), (method, out)]
    if retrain is not None and method != "retrain":
        models.append(("retrain", retrain))
    rows = []
    for name, folder in models:
        with console.status(f"scoring {name} ({num_samples} samples) ..."):
            row = {"model": name, **_cached_score(folder, original, request, num_samples, target / f"grid_{name}.png"),
                   **cost(folder)}
        rows.append(row)
        console.print(f"  {name}: forget_rate {row['forget_rate']:.3f}, fd_remaining {row['fd_remaining']:.3g}, "
                      f"mia_auc {row['mia_auc']:.3f}, {row['rounds']:.0f} rounds, {row['wall_s']:.1f} s")
    write_report(target, rows, request, seed=original.seed)
    return target


def _cached_score(folder: Path, original: RunConfig, request, num_samples: int, grid: Path) -> dict:
    """score() of folder/model, kept in folder/unlearning_scores/ (keyed by the scoring's version, request and
    sample count, with the model file's size and time) so an original or retrained model is scored once."""
    import json
    import shutil

    from fedsim.models.networks import load_pretrained
    from fedsim.unlearning.report import SCORE_VERSION, score

    weights = next((folder / "model").glob("*.safetensors"))
    stamp = weights.stat()
    key = (f"v{SCORE_VERSION}-{request.describe().replace(' ', '-')}-n{num_samples}-{stamp.st_size}-"
           f"{int(stamp.st_mtime)}")
    cache = folder / "unlearning_scores"
    if (cache / f"{key}.json").is_file():
        if (cache / f"{key}.png").is_file():
            shutil.copyfile(cache / f"{key}.png", grid)
        return json.loads((cache / f"{key}.json").read_text())
    state = load_pretrained(folder / "model").state_dict()
    result = score(original, state, request, num_samples=num_samples, grid_path=grid)
    cache.mkdir(exist_ok=True)
    (cache / f"{key}.json").write_text(json.dumps(result))
    if grid.is_file():  # classifiers have no sample grid
        shutil.copyfile(grid, cache / f"{key}.png")
    return result


def check_retrain(path: str | None) -> Path | None:
    if path is None:
        return None
    folder = Path(path).resolve()
    if not (folder / "model" / "config.json").is_file():
        raise ConfigError(f"--retrain {folder} has no trained model (model/)")
    return folder
