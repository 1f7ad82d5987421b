"""Tests for experiments/showcase_report.py on a synthetic run folder."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("showcase_report", REPO / "experiments" / "showcase_report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "config.toml").write_text("num-samples = 1000\n")
    nan = float("nan")
    rows = []
    for rnd in range(1, 5):
        quality = rnd % 2 == 0
        rec = 0.5 if rnd == 2 else 0.85
        shares = [rec / 10] * 10 if quality else [nan] * 10
        if rnd == 4:
            shares = [0.0] + [rec / 9] * 9  # class 0 missing
        rows.append({"round": rnd, "wall_s": 30.0, "recognised": rec if quality else nan,
                     "label_match": (rec - 0.1) if quality else nan,
                     **{k: (1.0 if quality else nan) for k in
                        ("fd", "fd_floor", "kid", "kid_floor", "precision", "precision_floor", "recall", "recall_floor")},
                     **{f"gen_class_{c}": s for c, s in enumerate(shares)}})
        if quality:
            Image.new("L", (8, 8)).save(run / "samples" / f"round_{rnd:03d}.png")
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    return run


def test_summary_rows_intervals_and_class_coverage(tmp_path):
    run = _run(tmp_path)
    assert report.main([str(run), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "summary.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("| 2 ") or line.startswith("| 4 ")]
    assert len(lines) == 2
    # round 2: 500 of 1000 -> Wilson [46.9 %, 53.1 %]; all 10 classes at 10 % of the recognised
    assert "50.0% [46.9%, 53.1%]" in lines[0] and "10 of 10" in lines[0] and "| 10.0% |" in lines[0]
    # round 4: class 0 missing, the others at 1/9 of the recognised
    assert "9 of 10" in lines[1] and "11.1%" in lines[1] and "| 2.0 |" in lines[1]  # 4 rounds x 30 s
    assert "4 rounds, 1000 samples" in md and "run time 2.0 min" in md
    assert (tmp_path / "out" / "samples.png").is_file() and (tmp_path / "out" / "recognised.png").is_file()


def test_a_folder_without_metrics_is_one_clear_error(tmp_path, capsys):
    assert report.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "has no metrics.csv" in capsys.readouterr().err
