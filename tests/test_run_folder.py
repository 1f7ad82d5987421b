"""RunFolder.nothing_aggregated: a run whose every round lost all its clients is told apart from
one where some round aggregated at least one update (the server then refuses to call it done)."""

from pathlib import Path

import pytest

from fedsim.records.run_folder import RunFolder


def folder_with(tmp_path: Path, rows: list[tuple[int, int, int]]) -> RunFolder:
    folder = RunFolder(tmp_path / "run")
    folder.start_metrics([])
    for rnd, (sampled, failed, rejected) in enumerate(rows, 1):
        folder.append_row({"round": rnd, "clients_sampled": sampled, "clients_failed": failed,
                           "clients_rejected": rejected})
    return folder


@pytest.mark.parametrize("rows, expected", [
    ([(5, 5, 0), (5, 5, 0)], True),
    ([(5, 3, 2), (4, 0, 4)], True),  # rejected replies are lost too
    ([(5, 5, 0), (5, 4, 0)], False),  # one update in round 2
    ([(5, 0, 0)], False),
    ([], False),  # no round yet: nothing to judge
])
def test_nothing_aggregated(tmp_path, rows, expected):
    assert folder_with(tmp_path, rows).nothing_aggregated() is expected


def test_no_metrics_file_is_not_a_failure(tmp_path):
    assert RunFolder(tmp_path / "empty").nothing_aggregated() is False
