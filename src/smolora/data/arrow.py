"""Encode examples slice by slice straight into an Arrow file, then memory-map it.

Tokenized rows as Python lists cost ~6 KB an example (an int object per token); a million
examples would not fit next to everything else. Here each slice of examples is encoded
(`encode_rows`, or `encode_rows_parallel` with `data.num_proc`), appended to an Arrow file and
dropped, and the finished file is opened memory-mapped: the heap holds one slice at a time and
the OS pages the rows in as training reads them.

Run as:
    train, info = encode_to_arrow(train_examples, tokenizer, cfg.data, Path("build/train.arrow"))
    print(len(train), info["labels"] / info["tokens"])
"""

from __future__ import annotations

from pathlib import Path

import datasets
from datasets.arrow_writer import ArrowWriter

from smolora.config import DataSection
from smolora.data.encode import FEATURES, encode_rows
from smolora.data.parallel import encode_rows_parallel

SLICE = 20_000  # examples encoded and written at a time


def encode_to_arrow(
    examples: list[dict], tokenizer, data: DataSection, path: Path
) -> tuple[datasets.Dataset | None, dict]:
    """(memory-mapped dataset or None when no row has a label, encode_rows-style info + sums)."""
    # num_proc > 1: render + tokenize in num_proc worker processes (datasets.map)
    encode = encode_rows_parallel if (data.num_proc or 1) > 1 else encode_rows
    info: dict = {"lengths": [], "labels": 0, "tokens": 0}
    counts = ("truncated", "chunked", "mask_fallback", "zero_label_rows", "n_rows")
    info.update(dict.fromkeys(counts, 0))
    written = 0
    with ArrowWriter(features=FEATURES, path=str(path)) as writer:
        for start in range(0, len(examples), SLICE):
            rows, part = encode(examples[start : start + SLICE], tokenizer, data)
            info["lengths"] += part["lengths"]
            for key in counts:
                info[key] += part[key]
            info["labels"] += sum(r["n_labels"] for r in rows)
            info["tokens"] += sum(r["length"] for r in rows)
            if rows:
                writer.write_batch({k: [r[k] for r in rows] for k in FEATURES})
                written += len(rows)
        writer.finalize()
    return (datasets.Dataset.from_file(str(path)) if written else None), info
