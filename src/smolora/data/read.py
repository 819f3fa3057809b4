"""Read training records from files, globs, directories, saved HF datasets and hub names.

A record is one plain dict (a JSON object, a CSV row, a line of text). Several files are
merged in order. Every problem with a file becomes a `DatasetError` that names the file
and, where there is one, the 1-based line.

Reading is bounded: only regular files are opened (a FIFO, a device or a link to /dev/zero
named `x.jsonl` would block or never end); JSON Lines, CSV and text are read a line at a
time and parquet a record batch at a time, so `max_examples` stops the reading itself;
no record above MAX_RECORD_CHARS; and what `read_records` holds in memory is capped
(SMOLORA_MAX_DATA_BYTES, default 2 GiB of text), with the way out in the message.
Directories and globs stay inside their tree: links out of it are refused.

This file opens and dispatches; each format has its own: jsonl.py (JSON, JSON Lines),
tabular.py (CSV, TSV), parquet.py, text.py (decoding, lines); files.py picks the files,
limits.py holds the bounds.

Run as:
    records = read_records(["data/a.jsonl", "data/more/*.csv"], max_examples=1000)
    print(len(records), records[0])
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import IO

from smolora.data.files import SUPPORTED, check_hf_dir, expand_paths, is_hf_dir, open_data, supported_kinds
from smolora.data.jsonl import jsonl_records, parse_json
from smolora.data.limits import (
    MAX_LINE_BYTES,
    MAX_RECORD_CHARS,
    check_record_sizes,
    max_data_bytes,
    record_size,
    too_big,
    too_long,
)
from smolora.data.parquet import PARQUET_BATCH_ROWS, parquet_records
from smolora.data.tabular import csv_records
from smolora.data.text import read_whole, text_lines
from smolora.errors import DatasetError, excerpt

_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_name(item: str) -> bool:
    """`user/name` that is not a local path: a dataset on the Hugging Face Hub."""
    return (
        _HUB_NAME.fullmatch(item) is not None
        and not Path(item).exists()
        and Path(item).suffix.lower() not in SUPPORTED
    )


def read_records(
    path: str | list[str],
    text_mode: str = "whole",
    split: str = "train",
    max_examples: int | None = None,
    max_bytes: int | None = None,
) -> list[dict]:
    """All records of all inputs, merged in order; reading stops once `max_examples` are in.

    At most `max_bytes` (default SMOLORA_MAX_DATA_BYTES, 2 GiB) of text is held: past it a
    DatasetError says how to stream the data instead.
    """
    limit = max_bytes or max_data_bytes()
    records: list[dict] = []
    used = 0

    def full() -> bool:
        return max_examples is not None and len(records) >= max_examples

    for item in [path] if isinstance(path, (str, Path)) else path:
        if full():
            break
        if isinstance(item, str) and not any(c in item for c in "*?[") and is_hub_name(item):
            left = max_examples - len(records) if max_examples is not None else None
            records += _read_hub(item, split, left)
            continue
        for file in expand_paths(item):
            if full():
                break
            with closing(iter_records(file, text_mode, split, limit - used)) as rows:
                for record in rows:
                    used += record_size(record)
                    if used > limit:
                        raise DatasetError(too_big(file, limit))
                    records.append(record)
                    if full():
                        break
    return records


def read_file(
    path: Path, text_mode: str = "whole", split: str = "train", max_bytes: int | None = None
) -> list[dict]:
    """One file (or saved dataset dir) -> records; any failure becomes a DatasetError."""
    return list(iter_records(path, text_mode, split, max_bytes))


def iter_records(
    path: Path, text_mode: str = "whole", split: str = "train", max_bytes: int | None = None
) -> Iterator[dict]:
    """The records of one file (or saved dataset dir) as they are read; stop early by closing it.

    `max_bytes`: what a file read whole (a JSON document, UTF-16 text) or a parquet file may
    decode to. Any failure becomes a DatasetError naming the file.
    """
    n = 0
    try:
        suffix = path.suffix.lower()
        if is_hf_dir(path):
            rows: Iterable[dict] = _read_hf_dir(path, split)
        elif suffix not in SUPPORTED:
            raise DatasetError(
                f"{path}: unsupported file type '{suffix or '(none)'}'; supported: {supported_kinds()}"
            )
        else:
            f = open_data(path)
            rows = _read_opened(f, path, suffix, text_mode, split, max_bytes)
        for record in rows:
            n += 1
            yield record
    except DatasetError:
        raise
    except Exception as e:  # a bad file must never surface as a raw traceback
        raise DatasetError(f"{path}: could not read ({type(e).__name__}: {excerpt(e)})") from None
    if not n:
        raise DatasetError(f"{path}: no records")


def _read_opened(
    f: IO[bytes], path: Path, suffix: str, text_mode: str, split: str, max_bytes: int | None
) -> Iterator[dict]:
    with f:
        if suffix == ".parquet":
            if os.fstat(f.fileno()).st_size == 0:
                raise DatasetError(f"{path}: empty file")
            yield from parquet_records(f, path, max_bytes=max_bytes)
        elif suffix in (".jsonl", ".ndjson"):
            yield from jsonl_records(text_lines(f, path, max_bytes), path)
        elif suffix == ".json":
            text = read_whole(f, path, max_bytes)
            records = parse_json(text, path, split)
            if len(text) > MAX_RECORD_CHARS:
                check_record_sizes(records, path)
            yield from records
        elif suffix in (".csv", ".tsv"):
            yield from csv_records(text_lines(f, path, max_bytes), path, "\t" if suffix == ".tsv" else ",")
        elif text_mode == "lines":
            yield from ({"text": line} for _, line in text_lines(f, path, max_bytes) if line.strip())
        else:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_LINE_BYTES:  # more characters than the limit, whatever they are
                raise DatasetError(too_long(str(path), size, "or set data.text_mode=lines"))
            text = read_whole(f, path, MAX_LINE_BYTES)
            if len(text) > MAX_RECORD_CHARS:
                raise DatasetError(too_long(str(path), len(text), "or set data.text_mode=lines"))
            yield {"text": text}


def _read_hf_dir(path: Path, split: str) -> Iterator[dict]:
    import datasets

    ds = datasets.load_from_disk(str(check_hf_dir(path)))  # memory-mapped: rows read when asked for
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DatasetError(f"{path}: no split '{split}' (found {list(ds)}); set data.split")
        ds = ds[split]
    first = 1
    for batch in ds.iter(batch_size=PARQUET_BATCH_ROWS):
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        check_record_sizes(rows, path, first)
        first += len(rows)
        yield from rows


def _read_hub(name: str, split: str, max_examples: int | None) -> list[dict]:
    import datasets

    # "train[:1000]" downloads and converts only what is needed.
    spec = f"{split}[:{max_examples}]" if max_examples and "[" not in split else split
    try:
        ds = datasets.load_dataset(name, split=spec)
    except Exception as e:  # offline, missing, gated: the user's fix is the same
        raise DatasetError(
            f"{name}: could not load it from the Hugging Face Hub ({type(e).__name__}: {str(e)[:200]}); "
            "no local file has that name either. If you are offline, pass a local file"
        ) from None
    return ds.to_list()
