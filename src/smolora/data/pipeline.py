"""From `cfg.data` to tokenized train/val datasets, cached by fingerprint.

read -> detect shape -> examples -> clean -> seeded split -> encode (batched) -> drop rows
with no trainable token -> save. The cache lives in `$SMOLORA_HOME/data/<fingerprint>/`
(default `~/.cache/smolora`); the fingerprint covers the input bytes, the `data` section,
the seed and the tokenizer, so a second run with the same inputs skips all of it.

Run as:
    data = prepare_data(cfg, tokenizer)
    print(data.stats["n_train"], data.train[0]["input_ids"][:10])
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

from smolora.config import RunConfig
from smolora.data.arrow import encode_to_arrow
from smolora.data.encode import PreparedData, load_examples
from smolora.data.files import expand_paths, open_data
from smolora.data.preference import encode_preference, load_preference
from smolora.data.read import is_hub_name
from smolora.data.render import ensure_chat_template
from smolora.data.stream import prepare_stream
from smolora.errors import DatasetError
from smolora.runs import smolora_home

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the encoding changes, so old caches are not reused


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


def _load_cache(cache: Path) -> PreparedData | None:
    if not (cache / "meta.json").exists():
        return None
    try:
        meta = json.loads((cache / "meta.json").read_text())
        train = datasets.load_from_disk(str(cache / "train"))
        val = datasets.load_from_disk(str(cache / "val")) if (cache / "val").exists() else None
        return PreparedData(train=train, val=val, **meta)  # meta.json: stats, fingerprint, format, mapping
    except Exception as e:  # a damaged cache is only a cache: rebuild it
        log.warning("ignoring damaged data cache %s (%s)", cache, e)
        shutil.rmtree(cache, ignore_errors=True)
        return None


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


def prepare_data(cfg: RunConfig, tokenizer) -> PreparedData:
    """Tokenized train/val datasets with columns input_ids, labels, length, n_labels."""
    t0 = time.perf_counter()
    d = cfg.data
    if d.streaming:  # larger than memory: tokenized on the fly, see stream.py
        return prepare_stream(cfg, tokenizer)
    if not d.path:
        raise DatasetError(
            "no training data: set data.path (a file, glob or directory), e.g. --set data.path=train.jsonl"
        )
    ensure_chat_template(tokenizer)  # before fingerprinting: the template is part of the identity
    fp = fingerprint(cfg, tokenizer)
    if cfg.train.objective != "sft":  # pairs, labelled rows or prompts (preference.py); not cached
        return prepare_preference(cfg, tokenizer, fp, t0)
    cache = smolora_home() / "data" / fp
    cached = _load_cache(cache)
    if cached is not None:
        cached.stats = {**cached.stats, "cached": True, "seconds": round(time.perf_counter() - t0, 3)}
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
        train, val = saved.train, saved.val
    shutil.rmtree(build, ignore_errors=True)  # an open memory map outlives its deleted file
    return PreparedData(train=train, val=val, **meta)


def _build_dir(cache: Path) -> Path:
    """Scratch space for the Arrow files, next to the cache (same disk), else the system temp dir."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".build-", dir=cache.parent))
    except OSError:
        return Path(tempfile.mkdtemp(prefix="smolora-build-"))


def prepare_preference(cfg: RunConfig, tokenizer, fp: str, t0: float) -> PreparedData:
    """The preference / reward objectives' rows (data/preference.py), split like SFT data."""
    d, objective = cfg.data, cfg.train.objective
    examples, shape, mapping = load_preference(d.path, d, objective)
    if d.val_path:
        train_ex, val_ex = examples, load_preference(d.val_path, d, objective)[0]
    else:
        train_ex, val_ex = split_examples(examples, d.val_ratio, cfg.train.seed)
    train_rows, info = encode_preference(train_ex, shape, tokenizer, d)
    val_rows, val_info = (
        encode_preference(val_ex, shape, tokenizer, d)
        if val_ex
        else ([], {"lengths": [], "zero_label_rows": 0})
    )
    if not train_rows:
        raise DatasetError(
            f"all {len(train_ex)} {shape} rows lose their answer to truncation at data.max_length={d.max_length}; "
            "raise data.max_length"
        )
    tokens = length_stats(info["lengths"] + val_info["lengths"])
    stats = {
        "format": shape,
        "mapping": mapping,
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        **{f"tokens_{k}": v for k, v in tokens.items()},
        "max_length": d.max_length,
        "zero_label_rows": info["zero_label_rows"] + val_info["zero_label_rows"],
        "seconds": round(time.perf_counter() - t0, 3),
        "cached": False,
    }
    train = datasets.Dataset.from_list(train_rows)
    val = datasets.Dataset.from_list(val_rows) if val_rows else None
    return PreparedData(train=train, val=val, stats=stats, fingerprint=fp, format=shape, mapping=mapping)
