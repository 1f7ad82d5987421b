"""docs/configuration.md is generated from RunConfig and stays in step with it; `fedsim keys`."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.cli import keys
from fedsim.cli.main import main
from fedsim.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def test_reference_page_is_up_to_date():
    page = (ROOT / keys.PAGE).read_text()
    assert page == keys.markdown(), "docs/configuration.md is stale: run `fedsim keys --markdown > " \
                                    "docs/configuration.md`"


def test_every_key_is_documented_once_with_its_default():
    found = keys.keys()
    assert [k.name for k in found] == list(RunConfig().to_flwr())
    assert all(k.meaning and k.section for k in found)
    page = keys.markdown()
    for k in found:
        assert page.count(f"| `{k.name}` |") == 1
    by_name = {k.name: k for k in found}
    assert by_name["lr"].default == 1e-3 and by_name["lr"].type == "float"
    assert by_name["model"].choices == ("ddpm-tiny", "ddpm-small", "ddpm-large", "cnn")
    assert by_name["conditional"].type == "bool"


def test_a_field_without_docstring_is_refused(monkeypatch, tmp_path):
    source = Path(keys.inspect.getsourcefile(keys.config)).read_text()
    broken = source.replace('    """Local learning rate."""\n', "", 1)
    assert broken != source
    fake = tmp_path / "config.py"
    fake.write_text(broken)
    monkeypatch.setattr(keys.inspect, "getsourcefile", lambda _: str(fake))
    with pytest.raises(ValueError, match="RunConfig.lr has no docstring"):
        keys.keys()


def test_fedsim_keys_prints_matching_keys(capsys):
    assert main(["keys", "lr"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in lines) == ["lr", "server-lr", "unlearn-lr"]
    lr = next(line for line in lines if line.startswith("lr "))
    assert lr.split()[1:4] == ["float", "0.001", "Local"]
    assert main(["keys", "msgm-*"]) == 0
    assert all(line.startswith("msgm-") for line in capsys.readouterr().out.splitlines())


def test_fedsim_keys_without_match_is_one_line(capsys):
    assert main(["keys", "no-such-key"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no config key matches" in err[0]


def test_run_help_points_to_the_reference(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "docs/configuration.md" in out and "fedsim keys" in out


def test_keys_pyproject_outside_the_repository_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["keys", "--pyproject"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pyproject.toml" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_keys_pyproject_rewrites_a_stale_table(tmp_path, monkeypatch, capsys):
    text = (ROOT / "pyproject.toml").read_text()
    stale = text.replace('\nrounds = 10\n', '\nrounds = 99\n')
    assert stale != text
    (tmp_path / "pyproject.toml").write_text(stale)
    monkeypatch.chdir(tmp_path)
    assert main(["keys", "--pyproject"]) == 0
    assert (tmp_path / "pyproject.toml").read_text() == text
