"""JSON Lines and JSON documents -> records: every guard with its why, errors that name the file and line.

A JSON file may be a list of objects, an object holding one (`{"data": [...]}`, seed 002), or
JSON Lines under a .json name.

Run as:
    with open_data(path) as f:
        records = list(jsonl_records(text_lines(f, path), path))
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from smolora.errors import DatasetError, excerpt

# Keys that usually hold the rows of a JSON file shaped as {"data": [...]} (seed 002).
LIST_KEYS = ("data", "train", "examples", "rows", "records", "items", "instances", "samples")
# A \ud800-\udfff escape: JSON can spell a lone UTF-16 surrogate, which no tokenizer accepts.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
SURROGATE_HINT = "holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair): not valid text"


def lone_surrogate(obj: Any) -> bool:
    """True when a parsed JSON value holds half of a UTF-16 surrogate pair (not valid Unicode)."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def json_problem(e: json.JSONDecodeError) -> str:
    # "Unterminated string starting at" already ends in "at".
    return f"{e.msg.removesuffix(' at')} at column {e.colno}"


def jsonl_records(lines: Iterable[tuple[int, str]], path: Path) -> Iterator[dict]:
    for lineno, line in lines:
        if line.strip():
            yield parse_object(line, f"{path}:{lineno}")


def parse_object(line: str, where: str) -> dict:
    """One JSON Lines row, or a DatasetError that starts with `where` (file:line, or file (byte N))."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where}: not valid JSON ({json_problem(e)})") from None
    except (ValueError, RecursionError) as e:  # a 5,000-digit number, 10,000 nested lists
        raise DatasetError(f"{where}: cannot read this JSON ({excerpt(e, 120)})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object per line, got {_kind(obj)}")
    if _SURROGATE_ESCAPE.search(line) is not None and lone_surrogate(obj):
        raise DatasetError(f"{where}: {SURROGATE_HINT}")
    return obj


def parse_json(text: str, path: Path, split: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # a .json file that is really JSON Lines: common enough to accept
            return list(jsonl_records(enumerate(text.split("\n"), 1), path))
        raise DatasetError(f"{path}:{e.lineno}: not valid JSON ({json_problem(e)})") from None
    rows = data if isinstance(data, list) else _list_in_dict(data, path, split)
    escapes = _SURROGATE_ESCAPE.search(text) is not None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DatasetError(f"{path}: item {i} is {_kind(row)}; expected a list of JSON objects")
        if escapes and lone_surrogate(row):
            raise DatasetError(f"{path}: item {i} {SURROGATE_HINT}")
    return rows


def _list_in_dict(data: Any, path: Path, split: str) -> list:
    """Seed 002's list-or-dict JSON: {"data": [...]}, {"train": [...], "test": [...]}, ..."""
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path}: expected a list of objects, or an object holding one; found {_kind(data)}"
        )
    lists = {k: v for k, v in data.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
    for key in (split, *LIST_KEYS):
        if key in lists:
            return lists[key]
    if len(lists) == 1:
        return next(iter(lists.values()))
    if lists:
        raise DatasetError(
            f"{path}: several lists of records ({excerpt(sorted(lists))}); set data.split to pick one"
        )
    raise DatasetError(
        f"{path}: expected a list of objects, or an object holding one under a key such as 'data'; "
        f"found an object with keys {excerpt(list(data)[:10])}"
    )


def _kind(obj: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}
    names |= {type(None): "null", bool: "a boolean"}
    return names.get(type(obj), f"a {type(obj).__name__}")
