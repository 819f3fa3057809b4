"""From `cfg.data` to tokenized train/val datasets, cached by fingerprint.

read -> detect shape -> examples -> clean -> seeded split -> encode (batched) -> drop rows
with no trainable token -> save. The cache lives in `$SMOLORA_HOME/data/<fingerprint>/`
(default `~/.cache/smolora`); the fingerprint covers the input bytes, the `data` section,
the seed and the tokenizer, so a second run with the same inputs skips all of it.

Run as:
    data = prepare_data(cfg, tokenizer)
    print(data["stats"]["n_train"], data["train"][0]["input_ids"][:10])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import datasets

from smolora.config import DataSection, RunConfig
from smolora.data.arrow import encode_to_arrow
from smolora.data.clean import clean_examples
from smolora.data.formats import detect_format, to_examples
from smolora.data.read import expand_paths, is_hub_name, open_data, read_records
from smolora.data.render import IGNORE, encode_examples, ensure_chat_template
from smolora.errors import DatasetError

log = logging.getLogger(__name__)

ENCODE_SLICE = 2_048  # examples per tokenizer call (memory, see encode_rows)
CACHE_VERSION = 1  # bump when the encoding changes, so old caches are not reused
FEATURES = datasets.Features(
    {
        # int64: cross-entropy wants long targets, whatever collator reads these.
        "input_ids": datasets.List(datasets.Value("int64")),
        "labels": datasets.List(datasets.Value("int64")),
        "length": datasets.Value("int64"),
        "n_labels": datasets.Value("int64"),
    }
)


def smolora_home() -> Path:
    return Path(os.environ.get("SMOLORA_HOME") or "~/.cache/smolora").expanduser()


def load_examples(path: str | list[str], data: DataSection) -> tuple[list[dict], str, dict, dict]:
    """(clean examples, shape, mapping, cleaning counts) for one input: train or val.

    `data.max_examples` stops the reading itself: a 50 GB file with max_examples=1000 reads 1000 rows.
    """
    data = data.model_copy(update={"path": path})  # error messages name this input
    records = read_records(path, data.text_mode, data.split, data.max_examples)
    fmt, mapping = detect_format(records, data)
    examples = to_examples(records, fmt, mapping, data)
    examples, counts = clean_examples(examples, dedupe=data.dedupe, normalize=data.clean)
    if not examples:
        raise DatasetError(
            f"{path}: no examples left after cleaning: {counts['input']} read, {counts['empty']} empty "
            f"(no text, or no user/assistant turn), {counts['duplicates']} duplicates"
        )
    return examples, fmt, mapping, counts


def split_examples(examples: list[dict], val_ratio: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded train/val split at the example level (windows of one text stay together)."""
    if val_ratio <= 0 or len(examples) < 2:
        return examples, []
    n_val = min(max(1, round(len(examples) * val_ratio)), len(examples) - 1)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [ex for i, ex in enumerate(examples) if i not in val_idx]
    return train, [ex for i, ex in enumerate(examples) if i in val_idx]


def length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {"mean": 0.0, "p50": 0, "p95": 0, "max": 0}
    s = sorted(lengths)
    return {
        "mean": round(sum(s) / len(s), 1),
        "p50": s[len(s) // 2],
        "p95": s[min(len(s) - 1, int(0.95 * len(s)))],
        "max": s[-1],
    }


def _hash_source(path: str | list[str] | None, h) -> None:
    for item in [path] if isinstance(path, str) else path or []:
        if is_hub_name(item):
            h.update(f"hub:{item}".encode())
            continue
        for p in expand_paths(item):
            for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
                if f.is_file():
                    h.update(_file_sha256(f))


def _file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with open_data(path) as fh:  # a regular file: hashing a FIFO or /dev/zero would never end
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.digest()


def fingerprint(cfg: RunConfig, tokenizer) -> str:
    """sha256 of the input bytes, the data section, the seed and the tokenizer's identity."""
    h = hashlib.sha256()
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    identity = {
        "version": CACHE_VERSION,
        "data": cfg.data.model_dump(mode="json", exclude={"num_proc", "streaming"}),
        "seed": cfg.train.seed,
        "tokenizer": [tokenizer.name_or_path, len(tokenizer), tokenizer.chat_template, tokenizer.eos_token],
        "vocab": hashlib.sha256(vocab.encode()).hexdigest(),
    }
    h.update(json.dumps(identity, sort_keys=True).encode())
    _hash_source(cfg.data.path, h)
    h.update(b"|val|")
    _hash_source(cfg.data.val_path, h)
    return h.hexdigest()


def encode_rows(examples: list[dict], tokenizer, data: DataSection) -> tuple[list[dict], dict]:
    """Encoded rows with length and n_labels; rows with nothing to learn are dropped and counted."""
    rows, zero = [], 0
    info: dict = {"lengths": [], "truncated": 0, "chunked": 0, "mask_fallback": 0}
    # In slices: one tokenizer call over a whole dataset holds ~30 KB of per-token objects per
    # example at its peak (4 GB at 100k rows, measured), and the heap keeps that size afterwards.
    for start in range(0, len(examples), ENCODE_SLICE):
        per_example, part = encode_examples(
            examples[start : start + ENCODE_SLICE],
            tokenizer,
            data.max_length,
            data.train_on,
            data.chunk_overlap,
        )
        info["lengths"] += part["lengths"]
        for key in ("truncated", "chunked", "mask_fallback"):
            info[key] += part[key]
        for row in (r for rs in per_example for r in rs):
            n_labels = len(row["labels"]) - row["labels"].count(IGNORE)
            if n_labels == 0:
                zero += 1  # the answer was cut by truncation (or was empty): nothing to learn
                continue
            rows.append({**row, "length": len(row["input_ids"]), "n_labels": n_labels})
    info["zero_label_rows"], info["n_rows"] = zero, zero + len(rows)
    return rows, info


def _dataset(rows: list[dict]) -> datasets.Dataset:
    columns = {k: [r[k] for r in rows] for k in FEATURES}
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def _load_cache(cache: Path) -> dict | None:
    if not (cache / "meta.json").exists():
        return None
    try:
        meta = json.loads((cache / "meta.json").read_text())
        train = datasets.load_from_disk(str(cache / "train"))
        val = datasets.load_from_disk(str(cache / "val")) if (cache / "val").exists() else None
    except Exception as e:  # a damaged cache is only a cache: rebuild it
        log.warning("ignoring damaged data cache %s (%s)", cache, e)
        shutil.rmtree(cache, ignore_errors=True)
        return None
    return {"train": train, "val": val, **meta}


def _save_cache(cache: Path, train, val, meta: dict) -> None:
    """Write to a temp dir, then rename: a crash never leaves a half-written cache behind."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        if cache.exists() and not (cache / "meta.json").exists():
            shutil.rmtree(cache, ignore_errors=True)  # a leftover without meta.json was never complete
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name[:16]}-", dir=cache.parent))
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # a bar per split for a sub-second save is noise
        try:
            train.save_to_disk(str(tmp / "train"))
            if val is not None:
                val.save_to_disk(str(tmp / "val"))
        finally:
            if bars:
                datasets.enable_progress_bars()
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, cache)
        except OSError:  # another process cached the same data first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        log.warning("could not cache prepared data in %s (%s); continuing without", cache.parent, e)


def prepare_data(cfg: RunConfig, tokenizer) -> dict:
    """Tokenized train/val datasets with columns input_ids, labels, length, n_labels."""
    t0 = time.perf_counter()
    d = cfg.data
    if d.streaming:  # larger than memory: tokenized on the fly, see stream.py
        from smolora.data.stream import prepare_stream

        return prepare_stream(cfg, tokenizer)
    if not d.path:
        raise DatasetError(
            "no training data: set data.path (a file, glob or directory), e.g. --set data.path=train.jsonl"
        )
    ensure_chat_template(tokenizer)  # before fingerprinting: the template is part of the identity
    fp = fingerprint(cfg, tokenizer)
    cache = smolora_home() / "data" / fp
    cached = _load_cache(cache)
    if cached is not None:
        cached["stats"] = {**cached["stats"], "cached": True, "seconds": round(time.perf_counter() - t0, 3)}
        return cached

    examples, fmt, mapping, counts = load_examples(d.path, d)
    if d.val_path:
        train_ex, (val_ex, *_) = examples, load_examples(d.val_path, d)
    else:
        train_ex, val_ex = split_examples(examples, d.val_ratio, cfg.train.seed)
    # Rows go to Arrow files slice by slice and come back memory-mapped (data/arrow.py).
    build = _build_dir(cache)
    train, info = encode_to_arrow(train_ex, tokenizer, d, build / "train.arrow")
    val, val_info = encode_to_arrow(val_ex, tokenizer, d, build / "val.arrow")
    if train is None:
        raise DatasetError(
            f"all {info['n_rows']} rows have zero trainable tokens after masking/truncation; "
            "raise data.max_length or set data.train_on=all"
        )
    tokens = length_stats(info["lengths"] + val_info["lengths"])
    stats = {
        "format": fmt,
        "mapping": mapping,
        "counts": counts,
        "n_train": len(train),
        "n_val": len(val) if val is not None else 0,
        **{f"tokens_{k}": v for k, v in tokens.items()},
        "max_length": d.max_length,
        "truncated": info["truncated"] + val_info["truncated"],
        "chunked": info["chunked"] + val_info["chunked"],
        "zero_label_rows": info["zero_label_rows"] + val_info["zero_label_rows"],
        "trainable_share": round(
            (info["labels"] + val_info["labels"]) / max(1, info["tokens"] + val_info["tokens"]), 4
        ),
        "seconds": round(time.perf_counter() - t0, 3),
        "cached": False,
    }
    meta = {"stats": stats, "fingerprint": fp, "format": fmt, "mapping": mapping}
    _save_cache(cache, train, val, meta)
    saved = _load_cache(cache)  # train from the cache's own (memory-mapped) files when it was written
    if saved is not None:
        train, val = saved["train"], saved["val"]
    shutil.rmtree(build, ignore_errors=True)  # an open memory map outlives its deleted file
    return {"train": train, "val": val, **meta}


def _build_dir(cache: Path) -> Path:
    """Scratch space for the Arrow files, next to the cache (same disk), else the system temp dir."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".build-", dir=cache.parent))
    except OSError:
        return Path(tempfile.mkdtemp(prefix="smolora-build-"))
