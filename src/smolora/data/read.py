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

Run as:
    records = read_records(["data/a.jsonl", "data/more/*.csv"], max_examples=1000)
    print(len(records), records[0])
"""

from __future__ import annotations

import codecs
import glob
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import IO, Any

from smolora.errors import DatasetError, excerpt

SUPPORTED = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".txt", ".md")
# Markers of a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`.
HF_DIR_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
# Keys that usually hold the rows of a JSON file shaped as {"data": [...]} (seed 002).
LIST_KEYS = ("data", "train", "examples", "rows", "records", "items", "instances", "samples")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# One record (a line, a row, a whole-file text) above this is not a training example, and
# tokenizing it at once would not fit: 16 MiB of text took 22 s and 2.7 GB (SmolLM2 tokenizer).
MAX_RECORD_CHARS = 16 << 20
# A line read in bytes: past this it holds more than MAX_RECORD_CHARS characters whatever they are.
MAX_LINE_BYTES = 4 * MAX_RECORD_CHARS + 1
# Text `read_records` may hold in memory; more wants data.streaming (or data.max_examples).
MAX_BYTES_ENV = "SMOLORA_MAX_DATA_BYTES"
DEFAULT_MAX_BYTES = 2 << 30
CSV_CHUNK_ROWS = 10_000  # rows pandas parses at a time
PARQUET_BATCH_ROWS = 1024  # rows decoded at a time (256: 4x slower to read, measured)
PARQUET_SLICE_BYTES = 16 << 20  # at most this much of a batch turned into Python objects at once
# A \ud800-\udfff escape: JSON can spell a lone UTF-16 surrogate, which no tokenizer accepts.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
SURROGATE_HINT = "holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair): not valid text"


def _supported() -> str:
    return ", ".join(SUPPORTED) + " or a saved Hugging Face dataset directory"


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in HF_DIR_MARKERS)


def is_hub_name(item: str) -> bool:
    """`user/name` that is not a local path: a dataset on the Hugging Face Hub."""
    return (
        _HUB_NAME.fullmatch(item) is not None
        and not Path(item).exists()
        and Path(item).suffix.lower() not in SUPPORTED
    )


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


def check_regular(path: Path) -> Path:
    """`path` if it is a regular file once links are followed; a DatasetError before anything opens it.

    A FIFO blocks the reader until someone writes, a device (/dev/zero, /dev/urandom) never
    ends: neither is data, whatever its name.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        broken = " (a broken symbolic link)" if path.is_symlink() else ""
        raise DatasetError(f"{path}: no such file{broken}") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read it ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a file"
        )
        raise DatasetError(
            f"{path}: {kind}, not a regular file; reading it could block or never end: give a data file"
        )
    return path


def open_data(path: Path) -> IO[bytes]:
    """Open a data file for reading, refusing anything but a regular file (checked on the open file)."""
    check_regular(path)
    # O_NONBLOCK: were it swapped for a FIFO since the check, open() must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DatasetError(f"{path}: not a regular file (it changed while being opened); give a data file")
    return os.fdopen(fd, "rb")


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _out_of_tree(path: Path, root: Path, what: str) -> DatasetError:
    return DatasetError(
        f"{path}: a link to {path.resolve()}, outside {what} {root}; data found there is read only from "
        "inside it (give the file itself if you mean it)"
    )


def _glob(pattern: str) -> list[Path]:
    """Matches of a glob pattern, sorted, never through a link out of the pattern's own directory.

    `**` does not descend into linked directories (pathlib), so a link to / or a link loop
    is not walked; a `*` that matches a link out of the tree is refused, not followed.
    """
    parts = Path(pattern).expanduser().parts
    n = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root, rest = Path(*parts[:n]) if n else Path("."), parts[n:]
    if not rest:
        return [root] if root.exists() else []
    hidden_ok = any(part.startswith(".") for part in rest)  # as glob.glob: `*` skips dot names
    out = []
    for m in sorted(root.glob(str(Path(*rest)))):
        below = m.relative_to(root).parts
        if not hidden_ok and any(part.startswith(".") for part in below):
            continue
        if not _inside(m, root):
            raise _out_of_tree(m, root, "the directory of the pattern")
        out.append(m)
    return out


def expand_paths(path: str | list[str]) -> list[Path]:
    """Files, lists, globs (sorted) and directories -> the data files, in order.

    Every file is checked to be a regular file here, before anything reads or hashes it.
    """
    out: list[Path] = []
    for item in [path] if isinstance(path, (str, Path)) else path:
        item = str(item)
        if any(c in item for c in "*?["):
            matches = _glob(item)
            files = [m if m.is_dir() else check_regular(m) for m in matches if not m.is_dir() or is_hf_dir(m)]
            if not files:
                raise DatasetError(f"{item}: the pattern matched no files")
            out += files
            continue
        p = Path(item).expanduser()
        if not p.exists():
            raise DatasetError(f"{item}: no such file")
        if p.is_dir() and not is_hf_dir(p):
            files = []
            # rglob does not descend into linked directories; a linked file must stay in the tree.
            for f in sorted(p.rglob("*")):
                below = f.relative_to(p).parts
                if f.is_dir() or f.suffix.lower() not in SUPPORTED or any(x.startswith(".") for x in below):
                    continue
                if not _inside(f, p):
                    raise _out_of_tree(f, p, "the directory")
                files.append(check_regular(f))
            if not files:
                raise DatasetError(f"{item}: directory holds no data files (supported: {_supported()})")
            out += files
        elif not p.is_dir():
            out.append(check_regular(p))
        else:
            out.append(p)
    return out


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
                f"{path}: unsupported file type '{suffix or '(none)'}'; supported: {_supported()}"
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
            yield from _jsonl_records(text_lines(f, path, max_bytes), path)
        elif suffix == ".json":
            text = _read_whole(f, path, max_bytes)
            records = _parse_json(text, path, split)
            if len(text) > MAX_RECORD_CHARS:
                check_record_sizes(records, path)
            yield from records
        elif suffix in (".csv", ".tsv"):
            yield from _csv_records(text_lines(f, path, max_bytes), path, "\t" if suffix == ".tsv" else ",")
        elif text_mode == "lines":
            yield from ({"text": line} for _, line in text_lines(f, path, max_bytes) if line.strip())
        else:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_LINE_BYTES:  # more characters than the limit, whatever they are
                raise DatasetError(too_long(str(path), size, "or set data.text_mode=lines"))
            text = _read_whole(f, path, MAX_LINE_BYTES)
            if len(text) > MAX_RECORD_CHARS:
                raise DatasetError(too_long(str(path), len(text), "or set data.text_mode=lines"))
            yield {"text": text}


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


def _decode(data: bytes, path: Path, line: int | None = None, offset: int = 0) -> str:
    """UTF-8 text (the BOM Excel writes dropped at the start of a file); bad bytes and NULs are named.

    `line`: the line `data` is (else counted in it); `offset`: where `data` starts in the file.
    """
    try:
        text = data.decode("utf-8-sig" if offset == 0 else "utf-8")
    except UnicodeDecodeError as e:
        where = line if line is not None else data.count(b"\n", 0, e.start) + 1
        raise DatasetError(
            f"{path}:{where}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {offset + e.start}); "
            "is it a binary file? Re-save text data as UTF-8"
        ) from None
    if "\x00" in text:
        where = line if line is not None else text.count("\n", 0, text.index("\x00")) + 1
        raise DatasetError(f"{path}:{where}: holds NUL bytes (a binary file, or UTF-16 without a BOM?)")
    return text


def _is_utf16(f: IO[bytes]) -> bool:
    head = f.read(2)
    f.seek(0)
    return head in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _read_whole(f: IO[bytes], path: Path, max_bytes: int | None) -> str:
    """A file read at once (a JSON document, a whole text), never more than `max_bytes` of it."""
    limit = max_bytes if max_bytes is not None else max_data_bytes()
    if os.fstat(f.fileno()).st_size > limit:
        raise DatasetError(too_big(path, limit))
    data = f.read(limit + 1)  # bounded even if the file grows meanwhile
    if len(data) > limit:
        raise DatasetError(too_big(path, limit))
    if not data.strip():
        raise DatasetError(f"{path}: empty file")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    return _decode(data, path)


def text_lines(f: IO[bytes], path: Path, max_bytes: int | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) of a text file, one line in memory at a time.

    Lines end at "\n" only (U+2028 and friends are legal inside JSON strings). A line above
    MAX_RECORD_CHARS is a DatasetError before it is decoded or parsed; a file of blank lines is
    an empty file. UTF-16 (with its BOM) is decoded whole, within `max_bytes`.
    """
    seen = False
    if _is_utf16(f):
        lines: Iterable[tuple[int, str]] = enumerate(_read_whole(f, path, max_bytes).split("\n"), 1)
    else:
        lines = _utf8_lines(f, path)
    for lineno, line in lines:
        if len(line) > MAX_RECORD_CHARS:
            raise DatasetError(too_long(f"{path}:{lineno}", len(line)))
        seen = seen or bool(line.strip())
        yield lineno, line
    if not seen:
        raise DatasetError(f"{path}: empty file")


def _utf8_lines(f: IO[bytes], path: Path) -> Iterator[tuple[int, str]]:
    offset, lineno = 0, 0
    while raw := f.readline(MAX_LINE_BYTES):
        lineno += 1
        if len(raw) == MAX_LINE_BYTES and not raw.endswith(b"\n"):
            # Far above the limit: count the rest a MiB at a time for the message, never holding it.
            size = len(raw)
            while rest := f.readline(1 << 20):
                size += len(rest)
                if rest.endswith(b"\n"):
                    break
            raise DatasetError(too_long(f"{path}:{lineno}", size))
        try:  # the common case inline; _decode says what is wrong with a bad line
            line = raw.decode("utf-8-sig" if offset == 0 else "utf-8")
        except UnicodeDecodeError:
            line = _decode(raw, path, lineno, offset)
        if "\x00" in line:
            _decode(raw, path, lineno, offset)
        yield lineno, line.removesuffix("\n")
        offset += len(raw)


def _jsonl_records(lines: Iterable[tuple[int, str]], path: Path) -> Iterator[dict]:
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{lineno}: not valid JSON ({json_problem(e)})") from None
        except (ValueError, RecursionError) as e:  # a 5,000-digit number, 10,000 nested lists
            raise DatasetError(f"{path}:{lineno}: cannot read this JSON ({excerpt(e, 120)})") from None
        if not isinstance(obj, dict):
            raise DatasetError(f"{path}:{lineno}: expected a JSON object per line, got {_kind(obj)}")
        if _SURROGATE_ESCAPE.search(line) is not None and lone_surrogate(obj):
            raise DatasetError(f"{path}:{lineno}: {SURROGATE_HINT}")
        yield obj


def _parse_json(text: str, path: Path, split: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # a .json file that is really JSON Lines: common enough to accept
            return list(_jsonl_records(enumerate(text.split("\n"), 1), path))
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


class _LinesFile:
    """A read()-able view of checked text lines, so pandas parses a file a chunk at a time."""

    def __init__(self, lines: Iterator[tuple[int, str]]):
        self.lines, self.buffer = lines, ""

    def read(self, size: int = -1) -> str:
        pieces, n = [self.buffer], len(self.buffer)
        while size < 0 or n < size:
            item = next(self.lines, None)
            if item is None:
                break
            pieces.append(item[1] + "\n")
            n += len(pieces[-1])
        text = "".join(pieces)
        cut = len(text) if size < 0 else size
        self.buffer = text[cut:]
        return text[:cut]

    def __iter__(self) -> Iterator[str]:
        while text := self.read(1 << 16):
            yield text


def _csv_records(lines: Iterator[tuple[int, str]], path: Path, sep: str) -> Iterator[dict]:
    import pandas as pd

    n, first = 0, 1
    try:
        # dtype=str, no NA parsing: "007" stays "007" and "NA" stays text.
        chunks = pd.read_csv(
            _LinesFile(lines),
            sep=sep,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            chunksize=CSV_CHUNK_ROWS,
        )
        for df in chunks:
            rows = df.to_dict("records")
            check_record_sizes(rows, path, first)  # a quoted field can span many lines
            first += len(rows)
            n += len(rows)
            yield from rows
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: empty file") from None
    except pd.errors.ParserError as e:
        msg = excerpt(str(e).replace("Error tokenizing data. C error: ", "").strip())
        m = re.search(r"line (\d+)", msg)
        where = f"{path}:{m.group(1)}" if m else str(path)
        raise DatasetError(f"{where}: not valid {'TSV' if sep == chr(9) else 'CSV'} ({msg})") from None
    if not n:
        raise DatasetError(f"{path}: no rows (only a header line?)")


def parquet_records(
    source: IO[bytes] | str,
    path: Path | str,
    row_groups: list[int] | None = None,
    max_bytes: int | None = None,
) -> Iterator[dict]:
    """Rows of a parquet file (or some of its row groups), a record batch at a time.

    A parquet file is compressed and dictionary-encoded: a few MB can hold the same 1 MB string
    in a million rows, GBs once decoded. Text columns are therefore read as dictionaries and
    each batch's decoded size is computed from them before any Python string is made: a row
    above the record limit, or more than `max_bytes` in all, is refused before it is expanded.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pq.ParquetFile(source).schema_arrow
    text = [f.name for f in schema if _is_text(pa, f.type)]
    if hasattr(source, "seek"):
        source.seek(0)
    reader = pq.ParquetFile(source, read_dictionary=text)
    decoded, first = 0, 1
    for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=row_groups):
        row_bytes = _row_bytes(batch, pa, pc)
        big, total = (
            (pc.max(row_bytes).as_py() or 0, pc.sum(row_bytes).as_py() or 0) if len(batch) else (0, 0)
        )
        if big >= MAX_LINE_BYTES:  # more characters than the limit, whatever they are
            raise DatasetError(too_long(f"{path}: record {first + row_bytes.index(big).as_py()}", big))
        for start, end, size in _slices(row_bytes, total):  # counted before it is made into Python
            decoded += size
            if max_bytes is not None and decoded > max_bytes:
                raise DatasetError(too_big(path, max_bytes))
            rows = _decoded(batch.slice(start, end - start), pa).to_pylist()
            if big > MAX_RECORD_CHARS:  # bytes >= characters: below it no row can be too long
                check_record_sizes(rows, path, first + start)
            yield from rows
        first += batch.num_rows


def _decoded(batch, pa):
    """The slice with its dictionaries expanded in Arrow (its size is known): to_pylist is much faster so."""
    columns = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _slices(row_bytes, total: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, bytes) of consecutive rows of at most PARQUET_SLICE_BYTES (or one row)."""
    if total <= PARQUET_SLICE_BYTES:  # the common case: the whole batch at once
        yield 0, len(row_bytes), total
        return
    sizes, start = row_bytes.to_pylist(), 0
    while start < len(sizes):
        end, acc = start, 0
        while end < len(sizes) and (end == start or acc + sizes[end] <= PARQUET_SLICE_BYTES):
            acc, end = acc + sizes[end], end + 1
        yield start, end, acc
        start = end


def _is_text(pa, t) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def _row_bytes(batch, pa, pc):
    """Decoded bytes of each row of a record batch (an int64 array), from the dictionaries: nothing is expanded."""
    n = batch.num_rows
    sizes = pa.array([0] * n, pa.int64())
    for column in batch.columns:
        if pa.types.is_dictionary(column.type) and _is_text(pa, column.type.value_type):
            lengths = pc.take(pc.binary_length(column.dictionary), column.indices)
        elif _is_text(pa, column.type):
            lengths = pc.binary_length(column)
        else:  # numbers, lists, structs: as decoded by Arrow, spread over the rows
            lengths = pa.array([column.nbytes // max(1, n)] * n, pa.int64())
        sizes = pc.add(sizes, pc.cast(lengths.fill_null(0), pa.int64()))
    return sizes


def check_hf_dir(path: Path) -> Path:
    """A saved dataset directory whose files are all regular files (datasets opens them by name)."""
    for f in path.rglob("*"):
        if not f.is_dir():
            check_regular(f)
    return path


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


def _kind(obj: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}
    names |= {type(None): "null", bool: "a boolean"}
    return names.get(type(obj), f"a {type(obj).__name__}")
