"""Tests for fedsim/config.py: one typed, frozen RunConfig, parsed once.

Every bad input must raise ConfigError with one line naming the key, before
anything starts; the same kebab-case table works as a fedsim TOML file, as
``--set`` overrides and as Flower's ``[tool.flwr.app.config]``.
"""

import tomllib
from pathlib import Path

import pytest

from fedsim.config import ConfigError, RunConfig, load_config, parse_override, read_toml, resolve

REPO = Path(__file__).resolve().parents[1]


# --- load_config: keys ---

def test_defaults_from_empty_mapping():
    assert load_config({}) == RunConfig()


def test_unknown_key_is_named_with_nearest_suggestion():
    with pytest.raises(ConfigError) as err:
        load_config({"num-client": 5})
    msg = str(err.value)
    assert "'num-client'" in msg and "did you mean 'num-clients'" in msg
    assert "\n" not in msg


def test_unknown_key_far_from_any_known_key_has_no_suggestion():
    with pytest.raises(ConfigError) as err:
        load_config({"zzzzqqqq": 1})
    assert "'zzzzqqqq'" in str(err.value) and "did you mean" not in str(err.value)


def test_snake_case_key_is_rejected():
    # Flower and fedsim use kebab-case only; the snake_case field name is a typo here.
    with pytest.raises(ConfigError, match="num-clients"):
        load_config({"num_clients": 5})


# --- load_config: types ---

@pytest.mark.parametrize("key, value", [
    ("rounds", "ten"),       # str for int
    ("rounds", 2.5),         # non-integral float for int
    ("rounds", True),        # bool is not an int here
    ("lr", True),            # bool is not a float here
    ("lr", "0.1"),           # str for float
    ("conditional", 1),      # int for bool
    ("conditional", "true"),  # str for bool
    ("dataset", 3),          # int for str
])
def test_wrong_type_names_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        load_config({key: value})
    msg = str(err.value)
    assert msg.startswith(f"{key} expects ") and repr(value) in msg


def test_literal_choice_rejected_listing_choices():
    with pytest.raises(ConfigError) as err:
        load_config({"model": "gan"})
    msg = str(err.value)
    assert "model" in msg and "'gan'" in msg
    for choice in ("ddpm-small", "ddpm-large", "cnn"):
        assert choice in msg


def test_int_accepted_for_float_key_and_stored_as_float():
    cfg = load_config({"lr": 1, "server-lr": 2, "client-gpus": 0})
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    assert cfg.server_lr == 2.0 and type(cfg.server_lr) is float
    assert cfg.client_gpus == 0.0 and type(cfg.client_gpus) is float


def test_integral_float_accepted_for_int_key_and_stored_as_int():
    cfg = load_config({"rounds": 3.0})
    assert cfg.rounds == 3 and type(cfg.rounds) is int


def test_valid_values_are_kept():
    cfg = load_config({"model": "cnn", "mode": "fedsgd", "conditional": True, "dataset": "lfw",
                       "num-clients": 4, "clients-per-round": 2, "lr": 0.25})
    assert (cfg.model, cfg.mode, cfg.conditional, cfg.dataset) == ("cnn", "fedsgd", True, "lfw")
    assert (cfg.num_clients, cfg.clients_per_round, cfg.lr) == (4, 2, 0.25)
    assert not cfg.is_diffusion and RunConfig().is_diffusion


# --- cross-field and range checks ---

def test_clients_per_round_above_num_clients():
    with pytest.raises(ConfigError) as err:
        load_config({"num-clients": 5, "clients-per-round": 6})
    assert "clients-per-round" in str(err.value) and "(5)" in str(err.value) and "6" in str(err.value)


def test_clients_per_round_equal_to_num_clients_is_fine():
    assert load_config({"num-clients": 5, "clients-per-round": 5}).clients_per_round == 5


@pytest.mark.parametrize("mapping, key", [
    ({"rounds": 0}, "rounds"),
    ({"lr": 0}, "lr"),
    ({"lr": -1e-3}, "lr"),
    ({"num-clients": 0, "clients-per-round": 0}, "num-clients"),
    ({"partition-alpha": 0.0}, "partition-alpha"),
    ({"client-failure-rate": 1.0}, "client-failure-rate"),
    ({"timesteps": 10, "sample-steps": 11}, "sample-steps"),
    ({"batch-size": 0}, "batch-size"),
])
def test_range_checks_name_the_key(mapping, key):
    with pytest.raises(ConfigError, match=key):
        load_config(mapping)


# --- parse_override ---

@pytest.mark.parametrize("item, expected", [
    ("rounds=3", ("rounds", 3)),
    ("dataset=mnist", ("dataset", "mnist")),         # bare word -> str
    ('dataset="mnist"', ("dataset", "mnist")),        # quoted TOML string
    ("lr=1e-3", ("lr", 0.001)),
    ("conditional=true", ("conditional", True)),
    (" rounds = 4 ", ("rounds", 4)),                  # whitespace around key and value
    ("dataset-path=/data/mnist", ("dataset-path", "/data/mnist")),
    ("out-dir=runs/a=b", ("out-dir", "runs/a=b")),    # only the first '=' splits
])
def test_parse_override(item, expected):
    key, value = parse_override(item)
    assert (key, value) == expected
    assert type(value) is type(expected[1])


@pytest.mark.parametrize("item", ["x", "", "=3"])
def test_parse_override_without_key_value(item):
    with pytest.raises(ConfigError, match="key=value"):
        parse_override(item)


# --- read_toml / resolve ---

def test_read_toml_missing_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as err:
        read_toml(missing)
    assert str(missing) in str(err.value)


def test_read_toml_invalid_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(bad)


def test_read_toml_pyproject_style_table(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\n\n[tool.flwr.app.config]\nrounds = 2\nmodel = "cnn"\n')
    assert read_toml(path) == {"rounds": 2, "model": "cnn"}


def test_resolve_file_plus_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('rounds = 2\ndataset = "digits"\nnum-clients = 8\nclients-per-round = 4\n')
    cfg = resolve(path, ["rounds=7", "lr=0.5", "model=cnn"])
    assert cfg.rounds == 7  # the override wins over the file
    assert (cfg.num_clients, cfg.clients_per_round) == (8, 4)  # from the file
    assert (cfg.lr, cfg.model) == (0.5, "cnn")  # from overrides only
    assert cfg.batch_size == RunConfig().batch_size  # untouched default


def test_resolve_without_file():
    assert resolve(None, ["rounds=2"]) == RunConfig(rounds=2)


def test_resolve_rejects_bad_override(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("rounds = 2\n")
    with pytest.raises(ConfigError, match="rounds expects int"):
        resolve(path, ["rounds=ten"])


def test_resolve_rejects_unknown_key_in_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("roundz = 2\n")
    with pytest.raises(ConfigError, match="did you mean 'rounds'"):
        resolve(path, [])


# --- RunConfig ---

def test_runconfig_is_hashable_and_frozen():
    a, b = RunConfig(rounds=3), RunConfig(rounds=3)
    assert a == b and hash(a) == hash(b)
    assert len({a, b, RunConfig(rounds=4)}) == 2
    with pytest.raises(AttributeError):
        a.rounds = 5


def test_replace_revalidates():
    assert RunConfig().replace(rounds=2).rounds == 2
    with pytest.raises(ConfigError, match="rounds"):
        RunConfig().replace(rounds=0)


@pytest.mark.parametrize("cfg", [
    RunConfig(),
    RunConfig(model="cnn", mode="fedsgd", lr=0.25, num_clients=7, clients_per_round=3,
              conditional=True, dataset="lfw", beta_schedule="squaredcos_cap_v2", out_dir="/tmp/x"),
])
def test_to_flwr_roundtrips_through_load_config(cfg):
    flwr = cfg.to_flwr()
    assert all("_" not in key for key in flwr)  # kebab-case, as Flower's run_config holds it
    assert load_config(flwr) == cfg


def test_write_toml_roundtrips_through_read_toml(tmp_path):
    from fedsim.config import write_toml

    cfg = RunConfig(rounds=3, lr=0.5, model="cnn")
    write_toml(cfg, tmp_path / "config.toml")
    assert load_config(read_toml(tmp_path / "config.toml")) == cfg


# --- pyproject.toml mirrors the defaults ---

def test_pyproject_flwr_app_config_equals_defaults():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    table = data.get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    assert table is not None, "pyproject.toml lacks [tool.flwr.app.config]"
    expected = RunConfig().to_flwr()
    assert set(table) == set(expected), (
        f"missing: {sorted(set(expected) - set(table))}; extra: {sorted(set(table) - set(expected))}")
    # Exactly: same values and same TOML types (3600.0 not 3600, false not 0).
    differ = {k: (table[k], expected[k]) for k in expected
              if table[k] != expected[k] or type(table[k]) is not type(expected[k])}
    assert differ == {}
    assert load_config(read_toml(REPO / "pyproject.toml")) == RunConfig()


def test_pyproject_table_is_what_the_generator_writes():
    """`fedsim keys --pyproject` rewrites the table; running it now must change nothing."""
    from pathlib import Path

    from fedsim.cli.keys import pyproject_with_defaults

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert pyproject_with_defaults(text) == text
