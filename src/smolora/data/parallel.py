"""Render and tokenize examples in `data.num_proc` worker processes (datasets.map).

Rendering a conversation with a chat template is Python (jinja), so one process uses one
core however fast the Rust tokenizer is. With `data.num_proc: N` the examples go into an
Arrow table and `datasets.map(num_proc=N)` encodes N slices at once. Same rows, same order,
same statistics as `encode.encode_rows`; only faster on a machine with cores to spare.

Run as:
    rows, info = encode_rows_parallel(examples, tokenizer, cfg.data)   # cfg.data.num_proc = 8
"""

from __future__ import annotations

import json
import uuid

import datasets

from smolora.config import DataSection
from smolora.data.encode import encode_rows

BATCH = 1_000  # examples per map call: big enough to amortise, small enough to spread over workers


def _encode_batch(batch: dict, tokenizer, data: DataSection) -> dict:
    keys = list(batch)
    # Arrow fills a column an example lacks (e.g. "domain") with None: drop those again.
    examples = [
        {k: v for k, v in zip(keys, values, strict=True) if v is not None}
        for values in zip(*batch.values(), strict=True)
    ]
    rows, info = encode_rows(examples, tokenizer, data)
    if not rows:  # a placeholder that carries the statistics; dropped afterwards (n_labels == 0)
        rows = [{"input_ids": [], "labels": [], "length": 0, "n_labels": 0}]
    out = {k: [r[k] for r in rows] for k in ("input_ids", "labels", "length", "n_labels")}
    out["info"] = [json.dumps(info)] + [""] * (len(rows) - 1)
    return out


def encode_rows_parallel(examples: list[dict], tokenizer, data: DataSection) -> tuple[list[dict], dict]:
    """`encode.encode_rows` spread over `data.num_proc` processes."""
    if not examples:
        return encode_rows(examples, tokenizer, data)
    table = datasets.Dataset.from_list(examples)
    out = table.map(
        _encode_batch,
        batched=True,
        batch_size=BATCH,
        num_proc=min(data.num_proc or 1, max(1, len(examples) // BATCH)),
        remove_columns=table.column_names,
        fn_kwargs={"tokenizer": tokenizer, "data": data},
        new_fingerprint=uuid.uuid4().hex,  # nothing to reuse: skip hashing the tokenizer
        desc="encoding",
    )
    info: dict = {
        "lengths": [],
        "truncated": 0,
        "chunked": 0,
        "mask_fallback": 0,
        "zero_label_rows": 0,
        "n_rows": 0,
    }
    for part in (json.loads(s) for s in out["info"] if s):
        info["lengths"] += part["lengths"]
        for key in ("truncated", "chunked", "mask_fallback", "zero_label_rows", "n_rows"):
            info[key] += part[key]
    rows = [r for r in out.remove_columns("info").to_list() if r["n_labels"] > 0]
    return rows, info
