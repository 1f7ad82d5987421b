"""Per-round facts gathered by the strategy layers for metrics.csv.

Each layer (selection, validation, byte metering, evaluation) records what it
alone knows; the server app writes one row per round from it. Plain dicts, no
Flower types.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


class RoundLog:
    def __init__(self) -> None:
        self._rows: dict[int, dict[str, Any]] = defaultdict(dict)

    def record(self, server_round: int, **values: Any) -> None:
        self._rows[server_round].update(values)

    def add(self, server_round: int, key: str, value: float) -> None:
        self._rows[server_round][key] = self._rows[server_round].get(key, 0) + value

    def get(self, server_round: int) -> dict[str, Any]:
        return dict(self._rows.get(server_round, {}))
