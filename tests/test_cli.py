"""Tests for fedsim/cli/main.py: bad input gives exit code 2 and ONE line on stderr.

All cases fail in validation (config, pre-flight, run folder); a guard makes
any attempt to start a federation fail the test instead.
"""

import os
import subprocess
from pathlib import Path

import pytest

from fedsim.cli import main as cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_simulation(monkeypatch, tmp_path):
    """Fail loudly if a case gets past validation; run in a scratch cwd (runs/ lands there)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the CLI tried to start a simulation")

    monkeypatch.setattr(cli, "LocalFederation", refuse)
    monkeypatch.setattr(cli, "RunFolder", refuse)
    monkeypatch.chdir(tmp_path)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(["run", *argv])
    captured = capsys.readouterr()
    return code, one_line(captured.err)


def test_unknown_key_suggests_nearest(capsys, tmp_path):
    code, line = run(capsys, "--set", "num-client=5", "--out", str(tmp_path / "out"))
    assert code == 2
    assert "num-client" in line and "num-clients" in line
    assert not (tmp_path / "out").exists()


def test_wrong_type(capsys, tmp_path):
    code, line = run(capsys, "--set", "rounds=ten", "--out", str(tmp_path / "out"))
    assert code == 2 and "rounds" in line and "'ten'" in line


def test_override_without_equals(capsys, tmp_path):
    code, line = run(capsys, "--set", "rounds", "--out", str(tmp_path / "out"))
    assert code == 2 and "key=value" in line


def test_missing_dataset_path(capsys, tmp_path):
    code, line = run(capsys, "--set", "dataset=mnist", "--set", "dataset-path=/nonexistent",
                     "--out", str(tmp_path / "out"))
    assert code == 2 and "/nonexistent" in line
    assert not (tmp_path / "out").exists()


def test_more_clients_than_images(capsys, tmp_path):
    code, line = run(capsys, "--set", "num-clients=5000", "--out", str(tmp_path / "out"))
    assert code == 2 and "5000" in line and "1437" in line  # digits train split: 1437 images


def test_missing_config_file(capsys, tmp_path):
    missing = tmp_path / "nope.toml"
    code, line = run(capsys, str(missing), "--out", str(tmp_path / "out"))
    assert code == 2 and str(missing) in line


def test_out_dir_with_existing_run_is_refused(capsys, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    metrics = out / "metrics.csv"
    metrics.write_text("round,eval_loss\n1,0.5\n")
    before = metrics.stat().st_mtime_ns
    code, line = run(capsys, "--out", str(out))
    assert code == 2 and "metrics.csv" in line and str(out) in line
    assert metrics.read_text() == "round,eval_loss\n1,0.5\n" and metrics.stat().st_mtime_ns == before
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv"]


def test_out_is_a_file(capsys, monkeypatch, tmp_path):
    from fedsim.records.run_folder import RunFolder

    monkeypatch.setattr(cli, "RunFolder", RunFolder)  # the real one; LocalFederation stays guarded
    out = tmp_path / "a-file"
    out.write_text("not a folder")
    code, line = run(capsys, "--set", "model=cnn", "--set", "num-clients=2", "--set", "clients-per-round=1",
                     "--out", str(out))
    assert code == 2 and str(out) in line
    assert out.read_text() == "not a folder"


def test_argparse_misuse_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--bogus"])
    assert exc.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert "--bogus" in line


def test_argparse_misuse_hint_names_a_real_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--bogus"])
    assert "fedsim fedsim" not in capsys.readouterr().err


def test_console_script_unknown_key_subprocess(tmp_path):
    """The installed entry point: exit 2, exactly one non-empty stderr line, no traceback."""
    exe = REPO / ".venv" / "bin" / "fedsim"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    res = subprocess.run([str(exe), "run", "--set", "num-client=5"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "num-clients" in lines[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert list(tmp_path.iterdir()) == []  # no run folder made


def test_app_writes_the_flower_app_and_refuses_to_overwrite(capsys, tmp_path):
    import tomllib

    out = tmp_path / "app"
    assert cli.main(["app", str(REPO / "experiments" / "deployment.toml"), "--set", "rounds=7", "--out", str(out)]) == 0
    capsys.readouterr()
    app = tomllib.loads((out / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fedsim.app.server_app:app", "clientapp": "fedsim.app.client_app:app"}
    assert app["config"]["rounds"] == 7 and app["config"]["dataset"] == "folder"
    assert cli.main(["app", "--out", str(out)]) == 2
    assert "--force" in one_line(capsys.readouterr().err)
    assert cli.main(["app", "--set", "rounds=ten", "--out", str(tmp_path / "b")]) == 2
    assert "rounds" in one_line(capsys.readouterr().err) and not (tmp_path / "b").exists()
