"""Examples in, encoded rows out: the steps every way of preparing data shares.

`load_examples` reads one input and cleans it; `encode_rows` renders, masks and tokenizes
examples into rows with the `FEATURES` columns; `PreparedData` is what `prepare_data`
(pipeline.py, in memory) and `prepare_stream` (stream.py, on the fly) hand the recipe.
Here, not in pipeline.py, so that pipeline, arrow, parallel and stream all import it and
none of them imports another back.

Run as:
    examples, fmt, mapping, counts = load_examples("data.jsonl", cfg.data)
    rows, info = encode_rows(examples, tokenizer, cfg.data)
    print(rows[0]["length"], rows[0]["n_labels"], info["truncated"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets

from smolora.config import DataSection
from smolora.data.clean import clean_examples
from smolora.data.formats import detect_format, to_examples
from smolora.data.read import read_records
from smolora.data.render import IGNORE, encode_examples
from smolora.errors import DatasetError

ENCODE_SLICE = 2_048  # examples per tokenizer call (memory, see encode_rows)
FEATURES = datasets.Features(
    {
        # int64: cross-entropy wants long targets, whatever collator reads these.
        "input_ids": datasets.List(datasets.Value("int64")),
        "labels": datasets.List(datasets.Value("int64")),
        "length": datasets.Value("int64"),
        "n_labels": datasets.Value("int64"),
    }
)


@dataclass
class PreparedData:
    """Tokenized train/val datasets (columns: FEATURES) and what was learnt on the way."""

    train: datasets.Dataset | datasets.IterableDataset  # an endless IterableDataset when streaming
    val: datasets.Dataset | None
    stats: dict[str, Any]  # n_train, n_val, token lengths, truncated, cached, ... (`smolora data inspect`)
    fingerprint: str  # the cache key, recorded in adapter/smolora.json
    format: str  # the detected shape, a key of formats.FORMATS (alpaca, messages, qa, text, ...)
    mapping: dict[str, str]  # which input field fed which role


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
