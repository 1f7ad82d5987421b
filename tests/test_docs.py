"""The README and docs/ stay true: short README, every page linked, links and anchors
resolve, included result tables are current, and every command shown still runs in
its dry form (the real argument parser and the configuration it names)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCS = [ROOT / "README.md", *PAGES, ROOT / "docker" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _tables():
    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "experiments" / "docs_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def commands(path: Path) -> list[str]:
    """Shell lines of the page's fenced bash blocks, continuation lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        out += [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return out


def test_readme_is_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    linked = {m for m in LINK.findall(readme)}
    for page in PAGES:
        assert any(link.split("#")[0] == f"docs/{page.name}" for link in linked), f"README does not link {page.name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_anchors_resolve(doc):
    for link in LINK.findall(doc.read_text()):
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: broken link {link}"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{doc.name}: no heading for #{anchor} in {path.name}"


def test_slug_matches_github():
    assert slug("Experiment: R@99 with Mavericks, offline") == "experiment-r99-with-mavericks-offline"
    assert slug("Benchmark: simulation overhead") == "benchmark-simulation-overhead"


def test_included_tables_are_current():
    tables = _tables()
    stale = [p.name for p in tables.pages() if tables.refresh(p.read_text()) != p.read_text()]
    assert stale == [], f"run `make docs`: stale {stale}"
    assert sum(p.read_text().count("<!-- include:") for p in PAGES) >= 6


def test_refresh_replaces_a_stale_table(tmp_path):
    tables = _tables()
    (tmp_path / "r.csv").write_text("a,b\n1,2\n")
    page = "x\n<!-- include: r.csv -->\n| old |\n<!-- end include -->\ny\n"
    assert tables.refresh(page, tmp_path) == "x\n<!-- include: r.csv -->\n| a | b |\n|---|---|\n| 1 | 2 |\n" \
                                             "<!-- end include -->\ny\n"
    with pytest.raises(FileNotFoundError):
        tables.refresh(page.replace("r.csv", "gone.csv"), tmp_path)


def test_a_missing_include_is_one_line_and_exit_1(tmp_path, capsys):
    tables = _tables()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "p.md").write_text("<!-- include: gone.csv -->\n<!-- end include -->\n")
    assert tables.main([], docs=tmp_path) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gone.csv" in err and "p.md" in err


def _fedsim_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for line in commands(doc):
            argv = shlex.split(line, comments=True)
            if argv and argv[0] in ("fedsim", ".venv/bin/fedsim"):
                found.append((f"{doc.relative_to(ROOT)}: {line}", argv[1:]))
    return found


FEDSIM = _fedsim_commands()


def test_the_docs_show_every_command():
    shown = {argv[0] for _, argv in FEDSIM}
    assert {"run", "attack", "unlearn", "split-data", "app", "keys"} <= shown


@pytest.mark.parametrize("where, argv", FEDSIM, ids=[w for w, _ in FEDSIM])
def test_fedsim_command_parses_and_its_config_resolves(where, argv, monkeypatch, capsys):
    from fedsim.cli import main as cli
    from fedsim.config import resolve

    monkeypatch.chdir(ROOT)
    args = build_parser().parse_args(argv)
    if args.command in ("run", "split-data", "app"):
        resolve(args.config, args.set)
    elif args.command == "attack":
        from attacks.config import resolve_attack

        resolve_attack(args.config, args.set)
    elif args.command == "unlearn":
        from fedsim.cli.unlearn import METHODS

        assert args.method in METHODS
    elif args.command == "keys":
        assert cli.main(argv) == 0
        assert capsys.readouterr().out.strip()


def _scripts() -> list[str]:
    found = set()
    for doc in DOCS:
        for line in commands(doc):
            argv = shlex.split(line, comments=True)
            if len(argv) > 1 and argv[0].endswith("python") and argv[1].startswith("experiments/"):
                found.add(argv[1])
    return sorted(found)


@pytest.mark.parametrize("script", _scripts())
def test_experiment_script_shown_in_the_docs_runs(script):
    res = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-500:]
    assert "usage" in res.stdout


def test_make_targets_shown_exist():
    makefile = (ROOT / "Makefile").read_text()
    for doc in DOCS:
        for line in commands(doc):
            argv = shlex.split(line, comments=True)
            if argv and argv[0] == "make":
                for target in argv[1:]:
                    assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"{doc.name}: make {target}"
