"""The evaluator's validation table and a picture of what it accepts and rejects.

Builds (or loads from the cache) the evaluator of a dataset, copies its validation table
(written at build time by fedsim/evaluation/references.py) to OUT/validation-<dataset>.csv
and .md, and draws OUT/validation-<dataset>.png: a row of each reference set, each image
framed green when recognised (with its class) and red when rejected.

    python experiments/evaluator_validation.py --dataset mnist5k --out docs/evaluation
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fedsim.data.datasets import DataError, load_dataset  # noqa: E402
from fedsim.evaluation.evaluator import evaluator_path, get_evaluator  # noqa: E402
from fedsim.evaluation.references import negatives  # noqa: E402

PER_ROW = 12


def markdown(table: pd.DataFrame) -> str:
    lines = ["| reference set | n | recognised | recognised and correct | target | met |", "|---|---|---|---|---|---|"]
    for r in table.itertuples():
        correct = "" if pd.isna(r.recognised_correct) else f"{r.recognised_correct:.1%}"
        lines.append(f"| {r.kind} | {r.n} | {r.recognised:.1%} | {correct} | {r.target} | {'yes' if r.pass_ else 'no'} |")
    return "\n".join(lines) + "\n"


def picture(ev, test, path: Path) -> None:
    pick = np.linspace(0, len(test) - 1, PER_ROW).round().astype(int)  # spread over the classes
    sets = {"real test images": test.images[pick], **{k: v[:PER_ROW] for k, v in negatives(test).items()}}
    fig, axes = plt.subplots(len(sets), PER_ROW, figsize=(PER_ROW * 0.8, len(sets) * 0.95))
    for row, (kind, images) in zip(axes, sets.items()):
        pred = ev.predict(images)
        for ax, img, p in zip(row, images, pred):
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy() if img.shape[0] == 1 else
                      (img.permute(1, 2, 0).numpy() + 1) / 2, cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if p >= 0 else "tab:red")
                spine.set_linewidth(2.5)
            ax.set_title(str(p) if p >= 0 else "–", fontsize=7, pad=1)
        row[0].set_ylabel(kind.split(" (")[0], rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle("evaluator: green = recognised (class above), red = rejected", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist5k", help="a bundled dataset (default mnist5k)")
    ap.add_argument("--out", required=True, help="output folder")
    args = ap.parse_args(argv)
    try:
        train, test = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    except DataError as err:
        print(f"evaluator_validation: error: {err}", file=sys.stderr)
        return 2
    ev = get_evaluator(train, test)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = ev.validation.rename(columns={"pass": "pass_"})
    table.rename(columns={"pass_": "pass"}).to_csv(out / f"validation-{args.dataset}.csv", index=False)
    (out / f"validation-{args.dataset}.md").write_text(markdown(table))
    picture(ev, test, out / f"validation-{args.dataset}.png")
    print(markdown(table), end="")
    print(f"evaluator {evaluator_path(train)}; test accuracy (argmax, every image) {ev.test_accuracy:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
