"""Refresh the result tables that docs pages include from the files experiment runners write.

A page marks an included file with two comments; what lies between them is
replaced by the file (relative to docs/): a ``.md`` file as it is, a ``.csv``
file as a Markdown table. So numbers on a page are never copied by hand::

    <!-- include: fedemd/r99.md -->
    ...
    <!-- end include -->

    python experiments/docs_tables.py           # rewrite the pages (make docs)
    python experiments/docs_tables.py --check   # exit 1 if a page is stale
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"(<!-- include: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.S)


def render(path: Path) -> str:
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(lines) + "\n"
    text = path.read_text()
    return text if text.endswith("\n") else text + "\n"


def refresh(page: str, docs: Path = DOCS) -> str:
    """The page with every include block holding its file's current content."""
    def fill(m: re.Match) -> str:
        target = docs / m["path"]
        if not target.is_file():
            raise FileNotFoundError(f"include of a missing file: docs/{m['path']}")
        return m.group(1) + render(target) + m.group(4)
    return BLOCK.sub(fill, page)


def pages(docs: Path = DOCS) -> list[Path]:
    return sorted(docs.rglob("*.md"))  # includes name paths relative to docs/, from any page


def main(argv: list[str] | None = None, docs: Path = DOCS) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale pages (exit 1)")
    args = parser.parse_args(argv)
    stale = []
    for page in pages(docs):
        text = page.read_text()
        try:
            new = refresh(text, docs)
        except FileNotFoundError as err:
            print(f"error: {page.relative_to(docs)}: {err}", file=sys.stderr)
            return 1
        if new != text:
            stale.append(page.name)
            if not args.check:
                page.write_text(new)
    verb = "stale" if args.check else "refreshed"
    print(f"{verb}: {', '.join(stale) or 'none'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
