"""Parsing what a user types into a config: ids, counts, ``key=value`` overrides and TOML
files, and the error they raise (one line naming the key). No knowledge of the keys
themselves: RunConfig (fedsim/config.py) validates those.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad configuration; the message is one line meant for the user."""


def parse_ids(text: str, key: str = "ids") -> set[int] | None:
    """"all" -> None (everything); "" -> empty set; "0 7 12" or "0,7" -> {0, 7, 12}."""
    text = text.strip()
    if text == "all":
        return None
    try:
        return {int(tok) for tok in text.replace(",", " ").split()}
    except ValueError:
        raise ConfigError(f"{key} must be 'all' or whole numbers separated by spaces; got {text!r}") from None


def parse_counts(text: str, key: str = "counts") -> list[float] | None:
    """"" -> None; "1 50 1" or "1,50,1" -> [1.0, 50.0, 1.0] (non-negative numbers)."""
    if not text.strip():
        return None
    try:
        values = [float(tok) for tok in text.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"{key} must be numbers separated by spaces; got {text!r}") from None
    if any(v < 0 for v in values):
        raise ConfigError(f"{key} must be non-negative; got {text!r}")
    return values


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with a TOML value; bare words are taken as strings."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def read_toml(path: str | Path) -> dict[str, Any]:
    """A fedsim TOML file: flat keys, or a pyproject with [tool.flwr.app.config]."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None
    if "tool" not in data:
        return data
    try:
        return dict(data["tool"]["flwr"]["app"]["config"])
    except (KeyError, TypeError):
        raise ConfigError(f"{path} has a [tool] table but no [tool.flwr.app.config]") from None
