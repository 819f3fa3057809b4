"""How much a reader may hold: one record, one line, all the text `read_records` keeps.

Past a limit a reader stops with a DatasetError that says what to change (split the record,
stream the data, raise SMOLORA_MAX_DATA_BYTES) instead of tokenizing or holding it.

Run as:
    limit = max_data_bytes()                  # SMOLORA_MAX_DATA_BYTES, default 2 GiB
    check_record_sizes(rows, "data.csv")      # DatasetError naming the first record too long
"""

from __future__ import annotations

import os
from pathlib import Path

from smolora.errors import DatasetError

# One record (a line, a row, a whole-file text) above this is not a training example, and
# tokenizing it at once would not fit: 16 MiB of text took 22 s and 2.7 GB (SmolLM2 tokenizer).
MAX_RECORD_CHARS = 16 << 20
# A line read in bytes: past this it holds more than MAX_RECORD_CHARS characters whatever they are.
MAX_LINE_BYTES = 4 * MAX_RECORD_CHARS + 1
# Text `read_records` may hold in memory; more wants data.streaming (or data.max_examples).
MAX_BYTES_ENV = "SMOLORA_MAX_DATA_BYTES"
DEFAULT_MAX_BYTES = 2 << 30


def max_data_bytes() -> int:
    """The cap on text `read_records` holds: SMOLORA_MAX_DATA_BYTES, default 2 GiB."""
    value = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_BYTES
    try:
        return max(1, int(float(value)))
    except ValueError:
        raise DatasetError(
            f"{MAX_BYTES_ENV}={value!r}: expected a number of bytes, e.g. 8000000000"
        ) from None


def too_big(where: Path | str, limit: int) -> str:
    if limit >= 1 << 30:
        size = f"{limit / 2**30:.1f} GiB"
    else:
        size = f"{limit / 2**20:.0f} MiB" if limit >= 1 << 20 else f"{limit:,} bytes"
    return (
        f"{where}: more than {size} of data to hold in memory; stream it "
        "(--set data.streaming=true with train.max_steps), read fewer rows (data.max_examples), "
        f"or raise the limit: {MAX_BYTES_ENV}=<bytes>"
    )


def too_long(where: str, chars: int | None = None, fix: str = "") -> str:
    size = f"a record of {chars / 2**20:.0f} MiB" if chars else "a record"
    return (
        f"{where}: {size} above the limit of {MAX_RECORD_CHARS >> 20} MiB per record (tokenizing that much "
        f"text at once takes many GB); split it into smaller records{' ' + fix if fix else ''}"
    )


def check_record_sizes(records: list[dict], path: Path | str, first: int = 1) -> None:
    """DatasetError naming the first record whose text is above MAX_RECORD_CHARS."""
    for i, record in enumerate(records, first):
        size = sum(len(v) for v in record.values() if isinstance(v, str))
        if size > MAX_RECORD_CHARS:
            raise DatasetError(too_long(f"{path}: record {i}", size))


def record_size(record: dict) -> int:
    """Characters of text in a record, nested values included (iterative: no recursion limit)."""
    total, stack = 0, []
    for value in record.values():  # most records are flat: strings, numbers
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, (dict, list, tuple)):
            stack.append(value)
        else:
            total += 8
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, dict):
            stack += value.values()
        elif isinstance(value, (list, tuple)):
            stack += value
        else:
            total += 8
    return total
