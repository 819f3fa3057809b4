"""Read training records from files, globs, directories, saved HF datasets and hub names.

A record is one plain dict (a JSON object, a CSV row, a line of text). Several files are
merged in order. Every problem with a file becomes a `DatasetError` that names the file
and, where there is one, the 1-based line.

Run as:
    records = read_records(["data/a.jsonl", "data/more/*.csv"], max_examples=1000)
    print(len(records), records[0])
"""

from __future__ import annotations

import codecs
import glob
import io
import json
import re
from pathlib import Path
from typing import Any

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


def expand_paths(path: str | list[str]) -> list[Path]:
    """Files, lists, globs (sorted) and directories -> the data files, in order."""
    out: list[Path] = []
    for item in [path] if isinstance(path, (str, Path)) else path:
        item = str(item)
        if any(c in item for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(Path(item).expanduser()), recursive=True))
            files = [m for m in matches if m.is_file() or is_hf_dir(m)]
            if not files:
                raise DatasetError(f"{item}: the pattern matched no files")
            out += files
            continue
        p = Path(item).expanduser()
        if not p.exists():
            raise DatasetError(f"{item}: no such file")
        if p.is_dir() and not is_hf_dir(p):
            files = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in SUPPORTED
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not files:
                raise DatasetError(f"{item}: directory holds no data files (supported: {_supported()})")
            out += files
        else:
            out.append(p)
    return out


def read_records(
    path: str | list[str],
    text_mode: str = "whole",
    split: str = "train",
    max_examples: int | None = None,
) -> list[dict]:
    """All records of all inputs, merged in order, at most `max_examples` of them."""
    records: list[dict] = []
    for item in [path] if isinstance(path, (str, Path)) else path:
        if max_examples is not None and len(records) >= max_examples:
            break
        if isinstance(item, str) and not any(c in item for c in "*?[") and is_hub_name(item):
            records += _read_hub(item, split, max_examples)
            continue
        for file in expand_paths(item):
            records += read_file(file, text_mode, split)
            if max_examples is not None and len(records) >= max_examples:
                break
    return records[:max_examples] if max_examples is not None else records


def read_file(path: Path, text_mode: str = "whole", split: str = "train") -> list[dict]:
    """One file (or saved dataset dir) -> records; any failure becomes a DatasetError."""
    try:
        suffix = path.suffix.lower()
        if is_hf_dir(path):
            records = _read_hf_dir(path, split)
        elif suffix not in SUPPORTED:
            raise DatasetError(
                f"{path}: unsupported file type '{suffix or '(none)'}'; supported: {_supported()}"
            )
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            if path.stat().st_size == 0:
                raise DatasetError(f"{path}: empty file")
            records = pq.read_table(path).to_pylist()
            check_record_sizes(records, path)  # compressed: a small file can hold a huge string
        else:
            text = _decode(path)
            if suffix in (".jsonl", ".ndjson"):
                records = _parse_jsonl(text, path)
            elif suffix == ".json":
                records = _parse_json(text, path, split)
            elif suffix in (".csv", ".tsv"):
                _check_line_lengths(text, path)  # before pandas, which holds several copies of a long line
                records = _parse_csv(text, path, "\t" if suffix == ".tsv" else ",")
            elif text_mode == "lines":
                _check_line_lengths(text, path)
                records = [{"text": line} for line in text.split("\n") if line.strip()]
            else:
                if len(text) > MAX_RECORD_CHARS:
                    raise DatasetError(too_long(str(path), len(text), "or set data.text_mode=lines"))
                records = [{"text": text}]
            if suffix in (".json", ".csv", ".tsv") and len(text) > MAX_RECORD_CHARS:
                check_record_sizes(records, path)
    except DatasetError:
        raise
    except Exception as e:  # a bad file must never surface as a raw traceback
        raise DatasetError(f"{path}: could not read ({type(e).__name__}: {excerpt(e)})") from None
    if not records:
        raise DatasetError(f"{path}: no records")
    return records


def too_long(where: str, chars: int | None = None, fix: str = "") -> str:
    size = f"a record of {chars / 2**20:.0f} MiB" if chars else "a record"
    return (
        f"{where}: {size} above the limit of {MAX_RECORD_CHARS >> 20} MiB per record (tokenizing that much "
        f"text at once takes many GB); split it into smaller records{' ' + fix if fix else ''}"
    )


def _check_line_lengths(text: str, path: Path) -> None:
    """DatasetError at the first line above MAX_RECORD_CHARS (only a text that long can hold one)."""
    if len(text) <= MAX_RECORD_CHARS:
        return
    lines = text.split("\n")
    if max(map(len, lines)) > MAX_RECORD_CHARS:
        lineno, line = next((i, x) for i, x in enumerate(lines, 1) if len(x) > MAX_RECORD_CHARS)
        raise DatasetError(too_long(f"{path}:{lineno}", len(line)))


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


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if not data.strip():
        raise DatasetError(f"{path}: empty file")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        text = data.decode("utf-8-sig")  # plain UTF-8, and UTF-8 with the BOM Excel writes
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DatasetError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "is it a binary file? Re-save text data as UTF-8"
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DatasetError(f"{path}:{line}: holds NUL bytes (a binary file, or UTF-16 without a BOM?)")
    return text


def _parse_jsonl(text: str, path: Path) -> list[dict]:
    records = []
    # split("\n"), not splitlines(): U+2028 and friends are legal inside JSON strings.
    escapes = _SURROGATE_ESCAPE.search(text) is not None
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if len(line) > MAX_RECORD_CHARS:  # before parsing: no time spent on a 100 MB line
            raise DatasetError(too_long(f"{path}:{lineno}", len(line)))
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{lineno}: not valid JSON ({json_problem(e)})") from None
        except (ValueError, RecursionError) as e:  # a 5,000-digit number, 10,000 nested lists
            raise DatasetError(f"{path}:{lineno}: cannot read this JSON ({excerpt(e, 120)})") from None
        if not isinstance(obj, dict):
            raise DatasetError(f"{path}:{lineno}: expected a JSON object per line, got {_kind(obj)}")
        if escapes and lone_surrogate(obj):
            raise DatasetError(f"{path}:{lineno}: {SURROGATE_HINT}")
        records.append(obj)
    return records


def _parse_json(text: str, path: Path, split: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # a .json file that is really JSON Lines: common enough to accept
            return _parse_jsonl(text, path)
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


def _parse_csv(text: str, path: Path, sep: str) -> list[dict]:
    import pandas as pd

    try:
        # dtype=str, no NA parsing: "007" stays "007" and "NA" stays text.
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: empty file") from None
    except pd.errors.ParserError as e:
        msg = excerpt(str(e).replace("Error tokenizing data. C error: ", "").strip())
        m = re.search(r"line (\d+)", msg)
        where = f"{path}:{m.group(1)}" if m else str(path)
        raise DatasetError(f"{where}: not valid {'TSV' if sep == chr(9) else 'CSV'} ({msg})") from None
    if df.empty:
        raise DatasetError(f"{path}: no rows (only a header line?)")
    return df.to_dict("records")


def _read_hf_dir(path: Path, split: str) -> list[dict]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DatasetError(f"{path}: no split '{split}' (found {list(ds)}); set data.split")
        ds = ds[split]
    records = ds.to_list()
    check_record_sizes(records, path)
    return records


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
