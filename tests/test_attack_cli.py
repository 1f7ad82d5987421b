"""``fedsim attack``: bad input is one line and exit 2; presets parse; a fresh exchange writes
results.csv and the grid; and (slow) an attack on an update recorded from a real ``fedsim run``."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from attacks import ATTACKS
from attacks.config import load_attack_config, resolve_attack
from fedsim.cli import main as cli
from fedsim.config import ConfigError, read_toml

REPO = Path(__file__).resolve().parents[1]
FLOWER = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
          "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
PRESETS = REPO / "experiments" / "attacks"


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("name", ["dlg", "idlg", "ig", "simulation", "agic", "gidm", "gidm_plus"])
def test_every_attack_has_a_valid_preset(name):
    cfg = resolve_attack(PRESETS / f"{name}.toml", [])
    assert cfg.attack == name
    ATTACKS[name](**cfg.options)  # options known to the attack


def test_overrides_reach_tables():
    cfg = resolve_attack(PRESETS / "ig.toml", ["options.iterations=7", "threat.labels=known", "batch-size=2"])
    assert (cfg.options["iterations"], cfg.threat["labels"], cfg.batch_size) == (7, "known", 2)


@pytest.mark.parametrize("mapping, needle", [
    ({"atack": "ig"}, "attack"),
    ({"batch-size": "two"}, "batch-size"),
    ({"defense": "secure-agg"}, "defense"),
    ({"threat": {"lables": "known"}}, "labels"),
])
def test_bad_config_names_the_key(mapping, needle):
    with pytest.raises(ConfigError, match=needle):
        load_attack_config(mapping)


@pytest.mark.parametrize("argv, needle", [
    (["--set", "options.nope=1"], "nope"),
    (["--set", "attack=magic"], "magic"),
    (["--from-run", "/nonexistent/run"], "config.toml"),
    (["--client", "3"], "--from-run"),
    (["--rounds", "1,2"], "--from-run"),
    (["--from-run", "/nonexistent/run", "--rounds", "a,b"], "--rounds 'a,b'"),
    (["--from-run", "/nonexistent/run", "--rounds", "2,2"], "distinct"),
    (["--from-run", "/nonexistent/run", "--rounds", "0,1"], ">= 1"),
    (["--from-run", "/nonexistent/run", "--round", "1", "--rounds", "1,2"], "not both"),
    (["--from-run", "/nonexistent/run", "--rounds", "1,2"], "ig attacks one observation and cannot fuse"),
])
def test_cli_bad_input_one_line(capsys, tmp_path, argv, needle):
    code = cli.main(["attack", str(PRESETS / "ig.toml"), "--out", str(tmp_path / "o"), *argv])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and needle in line


def test_fresh_exchange_writes_results_and_grid(tmp_path, capsys):
    out = tmp_path / "dlg"
    code = cli.main(["attack", str(PRESETS / "dlg.toml"), "--set", "trials=2", "--set", "options.iterations=30",
                     "--out", str(out)])
    assert code == 0
    written = list(csv.DictReader((out / "results.csv").open()))
    rows = [r for r in written if r["attack"] == "dlg"]
    assert [r["trial"] for r in rows] == ["0", "1"]
    assert all(float(r["psnr"]) > 40 and float(r["label_acc"]) == 1.0 and r["truth"] == "batch" for r in rows)
    baselines = [(r["trial"], r["attack"]) for r in written if r["attack"] != "dlg"]
    assert baselines == [(t, f"baseline-{k}") for t in "01" for k in ("grey", "mean", "random")]
    assert (out / "grid_dlg.png").stat().st_size > 0
    assert read_toml(out / "config.toml")["attack"] == "dlg"


def test_dp_defense_changes_the_observation(tmp_path):
    from attacks.runner import run_attack
    base = {"attack": "ig", "model": "convnet", "dataset": "digits", "options": {"iterations": 5}}
    clean = run_attack(load_attack_config(base), tmp_path / "a")[0]
    noisy = run_attack(load_attack_config({**base, "defense": "dp"}), tmp_path / "b")[0]
    again = run_attack(load_attack_config({**base, "defense": "dp"}), tmp_path / "c")[0]
    assert clean["psnr"] != noisy["psnr"]
    assert noisy["psnr"] == again["psnr"]  # seeded noise
    written = list(csv.DictReader((tmp_path / "b" / "results.csv").open()))[0]
    assert 7.9 <= float(written["dp_epsilon_spent"]) <= 8.0 and float(written["dp_sigma"]) > 0.5  # accounted, clip 1
    assert "dp_sigma" not in clean and list(csv.DictReader((tmp_path / "a" / "results.csv").open()))[0]["dp_sigma"] == ""


@pytest.mark.slow
def test_attack_on_recorded_run_end_to_end(tmp_path):
    """fedsim run (FedSGD classifier, client 0 recorded in round 1), then fedsim attack --from-run,
    scored against the batch the client wrote down."""
    exe = REPO / ".venv" / "bin" / "fedsim"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    run = tmp_path / "run"
    sets = ["model=cnn", "mode=fedsgd", "num-clients=4", "clients-per-round=4", "rounds=1", "batch-size=2",
            'record-clients="0"', 'record-rounds="1"', "eval-every=0", "partition=iid"]
    res = subprocess.run([str(exe), "run", *sum((["--set", s] for s in sets), []), "--out", str(run)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (run / "observations" / "round_001" / "client_0000" / "meta.json").is_file()
    secrets = sorted(p.relative_to(run).as_posix() for p in (run / "secrets").rglob("*.safetensors"))
    assert secrets == ["secrets/round_001/client_0000.safetensors"]  # the recorded client only, in simulation
    out = tmp_path / "attack"
    res = subprocess.run([str(exe), "attack", str(PRESETS / "ig.toml"), "--set", "options.iterations=100",
                          "--from-run", str(run), "--client", "0", "--round", "1", "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    row = next(csv.DictReader((out / "results.csv").open()))
    assert row["batch_size"] == "2" and row["source"].endswith("client 0 round 1") and row["truth"] == "batch"
    assert float(row["psnr"]) > 5 and (out / "grid_ig.png").is_file()
    res = subprocess.run([str(exe), "attack", str(PRESETS / "ig.toml"), "--from-run", str(run), "--client", "3",
                          "--round", "1", "--out", str(tmp_path / "x")], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "client_0000" in one_line(res.stderr)


def test_compression_defense_attacks_the_decoded_update(tmp_path):
    """The attacked observation is the DHQ-decoded update: sparse, a few magnitudes, bytes kept."""
    from attacks.defenses import compressed
    from attacks.runner import run_attack
    from fedsim.compression.codecs import make_codec
    from fedsim.records.observations import Observation

    sent = {"w": torch.zeros(20, 10), "b": torch.zeros(10)}
    received = {"w": torch.randn(20, 10, generator=torch.Generator().manual_seed(0)), "b": torch.ones(10)}
    obs = Observation(server_round=1, partition_id=0, sent=sent, received=received, payload="weights",
                      num_examples=1)
    out = compressed(obs, make_codec("dhq", keep_ratio=0.1, levels=2), seed=0)
    assert out.codec == "dhq(p=0.1,L=2)" and out.encoded and len(out.encoded) < 4 * 210 / 4
    assert int((out.update()["w"] != 0).sum()) == 20 and len(out.update()["w"].abs().unique()) == 3  # 0 + 2 levels
    base = {"attack": "ig", "model": "convnet", "dataset": "digits", "options": {"iterations": 5}}
    row = run_attack(load_attack_config({**base, "defense": "dhq", "keep-ratio": 0.05}), tmp_path / "a")[0]
    assert row["defense"] == "dhq(p=0.05,L=4)" and np.isfinite(float(row["psnr"]))
    with pytest.raises(ConfigError, match="keep-ratio"):
        load_attack_config({**base, "defense": "dhq", "keep-ratio": 2.0})


@pytest.mark.usefixtures("task_identity", "one_thread")
def test_rounds_fuse_one_clients_observations(tmp_path, capsys):
    """--rounds 1,2,3 with AGIC: one row for three observations, scored against the union of the
    samples the client's secrets name (full epochs on a fixed partition: the partition); a round or
    client not recorded is one line and exit 2."""
    from recorded_setup import recorded_run

    from attacks.trials import recorded_trial
    from fedsim.config import RunConfig
    from fedsim.data.clients import dataset
    from fedsim.records import secrets

    cfg = RunConfig(model="cnn", dataset="digits", num_clients=20, clients_per_round=4, partition="iid",
                    local_epochs=1, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.9)
    run = recorded_run(tmp_path, cfg, 1, rounds=(1, 2, 3))
    out = tmp_path / "agic"
    code = cli.main(["attack", str(PRESETS / "agic.toml"), "--set", "options.iterations=3", "--from-run", str(run),
                     "--client", "1", "--rounds", "1,2,3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["attack"] for r in rows] == ["agic", "baseline-grey", "baseline-mean", "baseline-random"]
    union = {i for r in (1, 2, 3) for i in secrets.load(run, r, 1).indices.tolist()}
    assert all(r["observations"] == "3" and r["source"].endswith("client 1 rounds 1,2,3") for r in rows)
    assert rows[0]["batch_size"] == str(len(union)) == "72" and rows[0]["truth"] == "samples used"
    capsys.readouterr()
    for argv, needle in ((["--client", "1", "--rounds", "1,4"], "round 4"), (["--client", "2", "--rounds", "1,2"],
                                                                              "client 2")):
        code = cli.main(["attack", str(PRESETS / "agic.toml"), "--from-run", str(run), *argv,
                         "--out", str(tmp_path / "bad")])
        assert code == 2 and needle in one_line(capsys.readouterr().err)
    # FedSGD draws another batch every round: the targets are the union, in order of first use
    fedsgd = tmp_path / "fedsgd"
    fedsgd.mkdir()
    run = recorded_run(fedsgd, cfg.replace(mode="fedsgd", batch_size=3), 1, rounds=(1, 2, 3))
    trial = recorded_trial(run, 1, [1, 2, 3])
    used = [secrets.load(run, r, 1).indices.tolist() for r in (1, 2, 3)]
    order = list(dict.fromkeys(i for u in used for i in u))
    assert len(order) > 3 and len(trial.observations) == 3
    train = dataset(cfg, "train")
    assert torch.equal(trial.targets.images, train.images[order])
    for r, sec in enumerate(trial.granted):  # each round's batch, as positions among the union
        assert [order[k] for k in sec.batches[0].tolist()] == used[r]
    assert trial.pool.shape[0] == len(train) - 72  # the baselines' pool: outside the client's partition


@pytest.mark.slow
def test_fused_rounds_on_a_recorded_run_end_to_end(tmp_path, fedsim_cache):
    """A real fedsim run (cnn, 4 clients each training every round, client 0 recorded in rounds 1-3),
    then fedsim attack --rounds 1,2,3 with AGIC: one row, three observations, against the union of
    the recorded samples (the client's partition); a round not recorded: one line, exit 2."""
    import sys

    from fedsim.records import secrets

    env = {**os.environ, **FLOWER, "PYTHONPATH": str(REPO), "FEDSIM_CACHE": str(fedsim_cache)}
    fedsim = [sys.executable, "-m", "fedsim.cli"]
    run = tmp_path / "run"
    sets = ["model='cnn'", "num-clients=4", "clients-per-round=4", "rounds=3", "local-epochs=1", "batch-size=32",
            "optimizer='sgd'", "lr=0.05", "momentum=0.9", "record-clients='0'", "record-rounds='1 2 3'",
            "eval-every=0", "partition='iid'"]
    res = subprocess.run([*fedsim, "run", *sum((["--set", s] for s in sets), []), "--out", str(run)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    meta = (run / "observations" / "round_002" / "client_0000" / "meta.json").read_text()
    assert '"optimizer": "sgd"' in meta and '"momentum": 0.9' in meta and '"shuffle": "per-epoch"' in meta
    out = tmp_path / "attack"
    res = subprocess.run([*fedsim, "attack", str(PRESETS / "agic.toml"), "--set", "options.iterations=3",
                          "--from-run", str(run), "--client", "0", "--rounds", "1,2,3", "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len([r for r in rows if r["attack"] == "agic"]) == 1
    union = {i for r in (1, 2, 3) for i in secrets.load(run, r, 0).indices.tolist()}
    assert rows[0]["observations"] == "3" and rows[0]["source"].endswith("client 0 rounds 1,2,3")
    assert rows[0]["batch_size"] == str(len(union)) and rows[0]["truth"] == "samples used"
    res = subprocess.run([*fedsim, "attack", str(PRESETS / "agic.toml"), "--from-run", str(run), "--client", "0",
                          "--rounds", "2,4", "--out", str(tmp_path / "x")], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "round 4" in one_line(res.stderr)


def test_trained_victim_is_trained_cached_and_shared_by_trials(tmp_path, monkeypatch):
    # victim-epochs = 1: the convnet is trained on the train split (its loss on the attacked test images
    # drops below the untrained net's), cached under FEDSIM_CACHE, and the same for every trial and seed
    from attacks.trials import TRAINED_SEED, fresh_trial
    from attacks.victims import build_victim
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))
    base = {"attack": "ig", "model": "convnet", "dataset": "digits", "batch-size": 16}
    trained = fresh_trial(load_attack_config({**base, "victim-epochs": 1}), 0)
    [cached] = list((tmp_path / "cache").glob("victim-digits-convnet-*.safetensors"))
    x, y = trained.targets.images, trained.targets.secrets.labels
    init = build_victim("convnet", (1, 8, 8), 10, seed=TRAINED_SEED)
    loss = [torch.nn.functional.cross_entropy(m(x), y).item() for m in (init, trained.victim.model)]
    assert loss[1] < 0.7 * loss[0]  # measured 2.30 -> 1.23
    stamp = cached.stat().st_mtime_ns
    other = fresh_trial(load_attack_config({**base, "victim-epochs": 1, "seed": 7}), 3)
    assert cached.stat().st_mtime_ns == stamp  # loaded, not retrained
    for a, b in zip(trained.victim.model.state_dict().values(), other.victim.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="victim-epochs"):
        load_attack_config({**base, "victim-epochs": -1})


def test_image_size_reaches_the_victim_its_targets_and_its_cache_key(tmp_path, monkeypatch):
    # image-size 28: MNIST-5k's own 28x28 (default 16) for the attacked images, the baselines' pool and the
    # trained victim, which is cached apart from the default-size one
    from attacks.trials import fresh_trial
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))
    base = {"attack": "ig", "model": "convnet", "dataset": "mnist5k", "batch-size": 2, "victim-epochs": 1}
    t28 = fresh_trial(load_attack_config({**base, "image-size": 28}), 0)
    assert t28.victim.shape == (1, 28, 28) and t28.targets.images.shape == (2, 1, 28, 28)
    assert t28.pool.shape[1:] == (1, 28, 28) and t28.observations[0].sent["head.weight"].shape[1] == 32 * 7 * 7
    t16 = fresh_trial(load_attack_config(base), 0)
    assert t16.targets.images.shape == (2, 1, 16, 16)
    assert len(list((tmp_path / "cache").glob("victim-mnist5k-convnet-*.safetensors"))) == 2
