"""Datasets larger than memory: read, render and tokenize on the fly (`data.streaming: true`).

The input is cut into *shards*: byte ranges of JSONL / line-per-record text files (a line
belongs to the range it starts in), row groups of parquet files, row ranges of saved HF
dataset directories (memory-mapped Arrow), whole files for CSV and JSON. A
`datasets.IterableDataset` runs over the shards with a shuffle buffer and tokenizes batches
as training asks for them; nothing is held but the buffer. Under several processes accelerate
hands each rank its own shards (`IterableDataset.shard`, what `split_dataset_by_node` does),
so every rank reads and tokenizes only its part of even a single big file. The stream
starts over when it ends, so `train.max_steps` sets the length of training.

What streaming gives up: duplicates are only dropped inside a batch, there is no val_ratio
split (give `data.val_path`), and no token-length statistics up front.

Run as:
    data = prepare_stream(cfg, tokenizer)      # cfg.data.streaming and cfg.train.max_steps set
    row = next(iter(data.train))               # {"input_ids": [...], "labels": [...], ...}
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import datasets

from smolora.config import DataSection, RunConfig
from smolora.data.clean import clean_examples
from smolora.data.encode import FEATURES, PreparedData, encode_rows, load_examples
from smolora.data.files import check_hf_dir, expand_paths, is_hf_dir, open_data
from smolora.data.formats import detect_format, to_examples
from smolora.data.jsonl import parse_object
from smolora.data.limits import MAX_RECORD_CHARS, check_record_sizes, too_long
from smolora.data.parquet import parquet_records
from smolora.data.read import is_hub_name, iter_records
from smolora.data.render import ensure_chat_template
from smolora.errors import DatasetError, excerpt

log = logging.getLogger(__name__)

SHARD_BYTES = 64 << 20  # byte range per shard of a line-per-record file
SHARD_ROWS = 100_000  # rows per shard of a saved dataset directory
SHUFFLE_BUFFER = 1_000  # examples held for shuffling
ENCODE_BATCH = 256  # records rendered and tokenized per tokenizer call
DETECT_ROWS = 200  # records read up front to recognise the shape
LINE_SUFFIXES = (".jsonl", ".ndjson")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _splittable(path: Path, text_mode: str) -> bool:
    suffix = path.suffix.lower()
    return suffix in LINE_SUFFIXES or (suffix in (".txt", ".md") and text_mode == "lines")


def make_shards(paths: list[Path], text_mode: str, ranks: int = 1, split: str = "train") -> list[tuple]:
    """Shards of all inputs; a line-per-record file gives a multiple of `ranks` byte ranges."""
    shards: list[tuple] = []
    for path in paths:
        if is_hf_dir(path):
            n = len(_unless_broken(path, _load_dir, path, split))
            shards += [("rows", str(path), a, min(a + SHARD_ROWS, n)) for a in range(0, n, SHARD_ROWS)]
        elif path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            groups = _unless_broken(path, lambda p: pq.ParquetFile(p).num_row_groups, path)
            shards += [("rowgroup", str(path), g, 0) for g in range(groups)]
        elif _splittable(path, text_mode):
            size = path.stat().st_size
            # A multiple of the rank count, so every rank gets an equal number of ranges.
            pieces = ranks * max(1, math.ceil(size / (SHARD_BYTES * ranks)))
            bounds = [size * i // pieces for i in range(pieces + 1)]
            shards += [("bytes", str(path), bounds[i], bounds[i + 1]) for i in range(pieces)]
        else:
            shards.append(("file", str(path), 0, 0))
    return shards


def _unless_broken(path: Path | str, fn, *args):
    """fn(*args); a damaged file (corrupt parquet footer, broken state.json) becomes a DatasetError."""
    try:
        return fn(*args)
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path}: could not read ({type(e).__name__}: {excerpt(e)})") from None


def _guarded(path: str, rows: Iterator[dict]) -> Iterator[dict]:
    """`rows`, a damaged file's errors (ArrowInvalid, ...) turned into DatasetErrors naming it."""
    end = object()
    while (row := _unless_broken(path, next, rows, end)) is not end:
        yield row


def _load_dir(path: Path, split: str = "train") -> datasets.Dataset:
    ds = datasets.load_from_disk(str(check_hf_dir(path)))  # memory-mapped: nothing read until asked for
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DatasetError(f"{path}: no split '{split}' (found {list(ds)}); set data.split")
        ds = ds[split]
    return ds


def _lines(path: str, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for the lines that start inside [start, end).

    A line longer than MAX_RECORD_CHARS bytes comes cut at one byte past the limit (no newline),
    so a 100 MB line is never held whole.
    """
    with open_data(Path(path)) as f:  # a regular file: a FIFO or a device would never end
        if start > 0:
            f.seek(start - 1)
            # Finish the line that began before our range (it belongs to the previous shard), a MiB at a time.
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
        pos = f.tell()
        while pos < end:
            line = f.readline(MAX_RECORD_CHARS + 1)
            if not line:
                break
            yield pos, line
            pos += len(line)


def read_shard(shard: tuple, text_mode: str = "whole", split: str = "train") -> Iterator[dict]:
    """The records of one shard, as plain dicts (the same records `read_records` gives)."""
    kind, path, a, b = shard
    if kind == "rows":
        rows = _unless_broken(path, lambda: _load_dir(Path(path), split).select(range(a, b)))
        for i, row in enumerate(rows, a + 1):
            check_record_sizes([row], path, first=i)
            yield row
    elif kind == "rowgroup":  # a batch at a time, its decoded size checked before it is expanded
        with open_data(Path(path)) as f:
            yield from _guarded(path, parquet_records(f, f"{path} (row group {a})", [a]))
    elif kind == "bytes":
        yield from _line_records(path, a, b)
    else:  # CSV a chunk at a time; JSON and whole-text files whole: use JSONL or parquet beyond RAM
        yield from iter_records(Path(path), text_mode, split)


def _line_records(path: str, start: int, end: int) -> Iterator[dict]:
    """The records of a byte range of a JSONL (one object a line) or line-per-record text file."""
    is_json = Path(path).suffix.lower() in LINE_SUFFIXES
    for pos, raw in _lines(path, start, end):
        where = f"{path} (byte {pos})"
        if pos == 0 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise DatasetError(f"{path}: UTF-16 text; streaming reads UTF-8 only: re-save the file as UTF-8")
        if len(raw) > MAX_RECORD_CHARS:
            raise DatasetError(too_long(where))  # cut at the limit: its real size is unknown
        # errors="replace": one stray byte in a terabyte must not stop a long streamed run.
        line = raw.decode("utf-8-sig" if pos == 0 else "utf-8", errors="replace").rstrip("\r\n")
        if not line.strip():
            continue
        if not is_json:
            yield {"text": line}
            continue
        yield parse_object(line, where)


def _records(shards: list[tuple], text_mode: str, split: str, repeat: bool = True) -> Iterator[dict]:
    """Generator behind the IterableDataset: this worker's shards, over and over (max_steps ends it)."""
    while True:
        n = 0
        for shard in shards:
            for record in read_shard(tuple(shard), text_mode, split):
                n += 1
                yield {"record": record}
        if not repeat or n == 0:
            return


def _encode_batch(batch: dict, tokenizer, data: DataSection, fmt: str, mapping: dict) -> dict:
    examples = to_examples(batch["record"], fmt, mapping, data)
    examples, _ = clean_examples(examples, dedupe=data.dedupe, normalize=data.clean)
    rows, _ = encode_rows(examples, tokenizer, data) if examples else ([], {})
    return {k: [r[k] for r in rows] for k in ("input_ids", "labels", "length", "n_labels")}


def stream_fingerprint(cfg: RunConfig, paths: list[Path] | list[str]) -> str:
    """Cheap identity of streamed inputs (name, size, mtime): hashing terabytes is not an option."""
    h = hashlib.sha256(json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True).encode())
    for p in paths:
        st = Path(p).stat() if Path(p).exists() else None
        h.update(f"{p}|{st.st_size if st else ''}|{st.st_mtime_ns if st else ''}".encode())
    return h.hexdigest()


def _hub_stream(name: str, split: str) -> datasets.IterableDataset:
    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:
        raise DatasetError(
            f"{name}: cannot stream it from the Hugging Face Hub ({type(e).__name__}: {e})"
        ) from None
    return ds.map(lambda r: {"record": r}, remove_columns=list(ds.column_names or []))


def prepare_stream(cfg: RunConfig, tokenizer, repeat: bool = True) -> PreparedData:
    """Like `prepare_data`, with an endless tokenizing IterableDataset as `train`.

    `repeat=False` makes one pass (benchmarks, inspection); training needs the endless stream.
    """
    d = cfg.data
    if not d.path:
        raise DatasetError("no training data: set data.path, e.g. --set data.path=train.jsonl")
    if cfg.train.max_steps is None:
        raise DatasetError(
            "data.streaming: true needs train.max_steps (a stream has no length to count epochs in); "
            "e.g. --set train.max_steps=1000"
        )
    ensure_chat_template(tokenizer)
    items = [d.path] if isinstance(d.path, str) else list(d.path)
    if len(items) == 1 and is_hub_name(items[0]):
        raw = _hub_stream(items[0], d.split)
        head = [r["record"] for r in itertools.islice(raw, DETECT_ROWS)]
        n_shards, fp = raw.n_shards, stream_fingerprint(cfg, items)
    else:
        paths = expand_paths(d.path)
        shards = make_shards(paths, d.text_mode, world_size(), d.split)
        head = [
            r["record"] for r in itertools.islice(_records(shards, d.text_mode, d.split, False), DETECT_ROWS)
        ]
        raw = datasets.IterableDataset.from_generator(
            _records,
            gen_kwargs={"shards": shards, "text_mode": d.text_mode, "split": d.split, "repeat": repeat},
        )
        n_shards, fp = len(shards), stream_fingerprint(cfg, paths)
    if not head:
        raise DatasetError(f"{d.path}: no records")
    fmt, mapping = detect_format(head, d)
    # Records that all clean away (or keep no trainable token) would make the endless stream loop
    # without ever giving training a batch: a hang. The head tells before training waits on it.
    if not _encode_batch({"record": head}, tokenizer, d, fmt, mapping)["input_ids"]:
        raise DatasetError(
            f"{d.path}: the first {len(head)} records give no trainable example (empty after cleaning, or "
            "nothing left to learn after masking and truncation); check the fields with `smolora data inspect`"
        )
    train = raw.shuffle(seed=cfg.train.seed, buffer_size=SHUFFLE_BUFFER).map(
        _encode_batch,
        batched=True,
        batch_size=ENCODE_BATCH,
        remove_columns=["record"],
        fn_kwargs={"tokenizer": tokenizer, "data": d, "fmt": fmt, "mapping": mapping},
    )
    val = None
    if d.val_path:  # held-out data is small: the in-memory path
        val_ex, *_ = load_examples(d.val_path, d)
        val_rows, _ = encode_rows(val_ex, tokenizer, d)
        val = datasets.Dataset.from_list(val_rows, features=FEATURES) if val_rows else None
    else:
        log.info(
            "streaming: no held-out split (val_ratio needs a known length); set data.val_path for eval loss"
        )
    stats = {
        "format": fmt,
        "mapping": mapping,
        "n_train": "streamed",
        "n_val": len(val) if val is not None else 0,
        "shards": n_shards,
        "streaming": True,
        "cached": False,
    }
    return PreparedData(train=train, val=val, stats=stats, fingerprint=fp, format=fmt, mapping=mapping)
