"""Lint a dataset before spending compute: what the model will see, and what it will learn.

Returns a plain dict; the CLI and the UI decide how to show it (trained-on segments
highlighted, warnings in colour).

Run as:
    report = inspect_data("data.jsonl", cfg, tokenizer, n_examples=3)
    for text, trained in report["examples"][0]:
        print(f"[{'TRAIN' if trained else 'ctx'}] {text!r}")
"""

from __future__ import annotations

from smolora.config import RunConfig
from smolora.data.encode import encode_rows, load_examples
from smolora.data.files import expand_paths
from smolora.data.pipeline import length_stats
from smolora.data.read import is_hub_name
from smolora.data.render import IGNORE, encode_examples
from smolora.errors import DatasetError


def segments(tokenizer, row: dict) -> list[tuple[str, bool]]:
    """(text, trained) pieces of one encoded row, consecutive tokens of one kind joined."""
    pieces: list[tuple[list[int], bool]] = []
    for tok, label in zip(row["input_ids"], row["labels"], strict=True):
        trained = label != IGNORE
        if pieces and pieces[-1][1] == trained:
            pieces[-1][0].append(tok)
        else:
            pieces.append(([tok], trained))
    return [(tokenizer.decode(ids, skip_special_tokens=False), trained) for ids, trained in pieces]


def _files(path: str | list[str]) -> list[str]:
    items = [path] if isinstance(path, str) else path
    return [
        i if is_hub_name(i) else str(p) for i in items for p in ([i] if is_hub_name(i) else expand_paths(i))
    ]


def inspect_data(paths: str | list[str] | None, cfg: RunConfig, tokenizer, n_examples: int = 3) -> dict:
    """Shape, mapping, counts, token lengths vs max_length, warnings and rendered examples."""
    d = cfg.data
    path = paths or d.path
    if not path:
        raise DatasetError("nothing to inspect: pass a data file or set data.path")
    examples, fmt, mapping, counts = load_examples(path, d)
    rows, info = encode_rows(examples, tokenizer, d)
    tokens = length_stats(info["lengths"])
    n_labels = sum(r["n_labels"] for r in rows)
    share = round(n_labels / max(1, sum(r["length"] for r in rows)), 4)

    warnings = []
    if info["truncated"]:
        warnings.append(
            f"{info['truncated']} of {len(examples)} examples are longer than data.max_length={d.max_length} "
            f"and will be cut (p95 is {tokens['p95']} tokens; --set data.max_length={tokens['p95']} keeps 95%)"
        )
    if info["zero_label_rows"]:
        warnings.append(
            f"{info['zero_label_rows']} rows have no trainable token after masking/truncation and will be "
            "dropped; raise data.max_length or set data.train_on=all"
        )
    if counts["duplicates"]:
        warnings.append(f"{counts['duplicates']} duplicate examples dropped")
    if counts["empty"]:
        warnings.append(f"{counts['empty']} empty examples dropped (no text, or no user/assistant turn)")
    if info["mask_fallback"]:
        warnings.append(
            f"{info['mask_fallback']} conversations: the chat template does not render prefixes "
            "consistently; answer tokens were found by search or the whole text is trained on"
        )
    if info["chunked"]:
        warnings.append(f"{info['chunked']} texts are longer than data.max_length and are cut into windows")
    if len(examples) < 20:
        warnings.append(f"only {len(examples)} examples: expect the model to learn little (or to memorise)")

    # The first rows as encoded, kept even when nothing in them is trained: that is worth seeing.
    shown, _ = encode_examples(examples[:n_examples], tokenizer, d.max_length, d.train_on, d.chunk_overlap)
    return {
        "files": _files(path),
        "format": fmt,
        "mapping": mapping,
        "counts": counts,
        "n_rows": info["n_rows"],
        "lengths": tokens,
        "max_length": d.max_length,
        "truncated": info["truncated"],
        "chunked": info["chunked"],
        "zero_label_rows": info["zero_label_rows"],
        "trainable_tokens": n_labels,
        "trainable_share": share,
        "warnings": warnings,
        # Each shown example: [(text, trained_on), ...] for highlighting.
        "examples": [segments(tokenizer, rows[0]) for rows in shown],
    }
