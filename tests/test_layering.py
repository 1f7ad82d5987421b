"""Imports point down the data flow: no lower layer imports the apps, the CLI or attacks/.

Every import is read from the source (function-level ones included), so a lazy
import cannot hide an upward edge. A layer may import itself and the layers it
lists in ALLOWED; anything else from fedsim, strategies or attacks is a violation.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer -> the layers it may import (besides itself), lowest first
ALLOWED: dict[str, set[str]] = {
    "fedsim.compression": set(),
    "fedsim.rng": set(),
    "fedsim.config_values": set(),
    "fedsim.config_checks": {"fedsim.compression", "fedsim.config_values"},
    "fedsim.config": {"fedsim.compression", "fedsim.config_values", "fedsim.config_checks"},
    "fedsim.records": {"fedsim.config", "fedsim.rng", "fedsim.compression"},
    "fedsim.data": {"fedsim.config", "fedsim.rng"},
    "fedsim.models": {"fedsim.config", "fedsim.rng", "fedsim.data"},
    "fedsim.evaluation": {"fedsim.config", "fedsim.rng", "fedsim.data", "fedsim.models", "fedsim.records"},
    "fedsim.unlearning": {"fedsim.config", "fedsim.rng", "fedsim.data", "fedsim.models", "fedsim.evaluation",
                          "fedsim.records", "fedsim.compression"},
}
CORE = set(ALLOWED)
ALLOWED["strategies"] = CORE  # server side: fedsim's core, never the apps, the CLI or attacks/
ALLOWED["attacks"] = CORE  # the adversary reads what the core records
ALLOWED["fedsim.app"] = CORE | {"strategies"}
ALLOWED["fedsim.cli"] = CORE | {"strategies", "attacks", "fedsim.app"}
ALLOWED["fedsim"] = set()  # fedsim/__init__.py


def layer_of(module: str) -> str | None:
    """The longest layer name that is ``module`` or a package above it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in ALLOWED:
            return name
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of fedsim, strategies or attacks in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            # "from fedsim import app" imports fedsim.app: the most specific real name counts
            found.append((node.lineno, max(names, key=lambda m: len(layer_of(m) or ""))))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
    return [(line, m) for line, m in found if m.split(".")[0] in ("fedsim", "strategies", "attacks")]


def violations(files: list[Path]) -> list[str]:
    out = []
    for path in files:
        src = layer_of(module_name(path))
        assert src is not None, f"{path.relative_to(ROOT)} is in no layer: add it to ALLOWED"
        for line, target in imports_of(path):
            dst = layer_of(target)
            if dst is None:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {target}, which is in no layer")
            elif dst != src and dst not in ALLOWED[src]:
                out.append(f"{path.relative_to(ROOT)}:{line} ({src}) imports {target} ({dst})")
    return out


def _sources() -> list[Path]:
    return sorted(p for pkg in ("fedsim", "strategies", "attacks") for p in (ROOT / pkg).rglob("*.py"))


def test_no_import_runs_upward():
    files = _sources()
    assert len(files) > 60
    assert violations(files) == []


def test_every_subpackage_is_a_layer():
    for pkg in (ROOT / "fedsim").iterdir():
        if pkg.is_dir() and (pkg / "__init__.py").exists():
            assert f"fedsim.{pkg.name}" in ALLOWED, f"fedsim/{pkg.name}/ has no place in the layering"


@pytest.mark.parametrize("importer, statement", [
    ("fedsim/data/x.py", "from fedsim.cli.main import main"),
    ("fedsim/models/x.py", "    from fedsim.app import client_app"),  # lazy and via the package
    ("strategies/x.py", "import attacks.runner"),
    ("fedsim/config.py", "from strategies import build_strategy"),
    ("attacks/x.py", "from fedsim.app.wire_x import y"),
    ("fedsim/app/x.py", "from attacks import build_attack"),
])
def test_an_upward_import_is_caught(tmp_path, monkeypatch, importer, statement):
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    path = tmp_path / importer
    path.parent.mkdir(parents=True, exist_ok=True)
    body = statement if not statement.startswith(" ") else f"def f():\n{statement}\n"
    path.write_text(body + "\n")
    assert len(violations([path])) == 1


def test_every_import_names_something_that_exists():
    """Lazy imports inside functions run only when their branch does: a moved module
    must not leave one behind that fails at run time."""
    import importlib

    missing = []
    for path in _sources() + sorted((ROOT / "experiments").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] in ("fedsim", "strategies", "attacks"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ModuleNotFoundError:
                            missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}")
    assert missing == []


def test_entry_points_in_pyproject_resolve():
    """`fedsim` (console script) and the Flower components `flwr run .` loads."""
    import importlib
    import tomllib

    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())

    def load(ref: str):
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)

    assert callable(load(project["project"]["scripts"]["fedsim"]))
    components = project["tool"]["flwr"]["app"]["components"]
    assert isinstance(load(components["serverapp"]), ServerApp)
    assert isinstance(load(components["clientapp"]), ClientApp)
