"""Reading one config file: size limits, encodings, YAML or JSON, and YAML aliases kept finite.

config.py builds the typed RunConfig from what this returns (inheritance, overrides, validation).

Run as:
    data = read_file(Path("examples/quickstart.yaml"))    # {"model": {...}, "data": {...}, ...}
"""

from __future__ import annotations

import codecs
import datetime
import json
from pathlib import Path
from typing import Any

import yaml

from smolora.errors import ConfigError, excerpt

MAX_CONFIG_BYTES = 1 << 20  # a run config is a few KB: more is the wrong file (or /dev/zero)
MAX_CONFIG_VALUES = 100_000  # with YAML aliases expanded: a "billion laughs" file stops here


def read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file; pass a YAML or JSON run config")
    with open(path, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, so not a run config")
    # UTF-16 with a BOM is what some Windows editors save; anything else is read as UTF-8.
    utf16 = raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    text = raw.decode("utf-16" if utf16 else "utf-8-sig", errors="replace")
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        data = plain(data, path)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not valid {kind}: {e}") from None
    except (ValueError, RecursionError) as e:  # a 5,000-digit number; nesting past the recursion limit
        raise ConfigError(f"{path}: cannot read this {kind} ({excerpt(e, 120)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (model:, data:, ...), got {type(data).__name__}"
        )
    return data


def plain(data: Any, source: Path | str) -> Any:
    """A fresh copy of parsed YAML as JSON-like data: string keys, dates as text, sets as lists.

    YAML aliases let one object appear in many places: nine levels of nine expand to 387 million
    values (a "billion laughs"), and an alias inside its own anchor never ends. Both stop here.
    """
    count = 0

    def copy(node: Any, parents: tuple[int, ...]) -> Any:
        nonlocal count
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{source}: more than {MAX_CONFIG_VALUES:,} values once YAML aliases are expanded "
                "(an alias bomb?); a run config has a few dozen"
            )
        if node is None or isinstance(node, (str, bool, int, float)):
            return node
        if isinstance(node, (datetime.date, datetime.datetime)):
            return node.isoformat()  # `name: 2024-01-01` means the text, not a date object
        if not isinstance(node, (dict, list, tuple, set)):
            raise ConfigError(
                f"{source}: a {type(node).__name__} value ({excerpt(repr(node), 60)}); a config holds text, "
                "numbers, booleans, lists and mappings"
            )
        if id(node) in parents:
            raise ConfigError(
                f"{source}: a YAML alias refers to itself (like `&a [*a]`); a config cannot be recursive"
            )
        inner = (*parents, id(node))
        if isinstance(node, dict):
            return {k if isinstance(k, str) else str(k): copy(v, inner) for k, v in node.items()}
        items = sorted(node, key=str) if isinstance(node, set) else node
        return [copy(v, inner) for v in items]

    return copy(data, ())
