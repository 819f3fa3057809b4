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
from smolora.data.formats import _columns, _source
from smolora.data.pipeline import length_stats
from smolora.data.preference import SHAPES, encode_preference, find_columns, problems, to_preference
from smolora.data.read import is_hub_name, read_records
from smolora.data.render import IGNORE, encode_examples, render_prompt
from smolora.errors import DatasetError, excerpt

PEEK_RECORDS = 50  # rows read to tell a pairs file from an SFT one
SHOWN_FLAGGED = 20  # dropped rows named in a warning


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
    """Shape, mapping, counts, token lengths vs max_length, warnings and rendered examples.

    Preference data (train.objective other than sft, or a file with chosen and rejected columns,
    read as dpo) is inspected as its objective reads it: see inspect_preference."""
    d = cfg.data
    path = paths or d.path
    if not path:
        raise DatasetError("nothing to inspect: pass a data file or set data.path")
    objective, source = preference_objective(path, cfg)
    if objective:
        return inspect_preference(path, cfg, tokenizer, objective, source, n_examples)
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


# --- preference data: pairs (dpo, orpo, simpo), labelled rows (kto), prompts (grpo) ----------------


def preference_objective(path: str | list[str], cfg: RunConfig) -> tuple[str | None, str]:
    """(the objective whose data this is, why): train.objective when it is not sft; else dpo when the
    file has chosen and rejected columns (no SFT shape reads those); else (None, "")."""
    if cfg.train.objective != "sft":
        return cfg.train.objective, "train.objective"
    d = cfg.data
    columns = {c.lower() for c in _columns(read_records(path, d.text_mode, d.split, PEEK_RECORDS))}
    if {"chosen", "rejected"} <= columns | set(d.fields):
        return "dpo", "auto: the file has chosen and rejected columns"
    return None, ""


def read_preference_rows(path: str | list[str], cfg: RunConfig, shape: str) -> tuple[list, list, dict, int]:
    """(kept (record number, example) pairs, flagged rows, mapping, records read): what load_preference
    keeps, and the rows it drops with their 1-based record numbers and why."""
    d = cfg.data.model_copy(update={"path": path})  # error messages name this input
    records = read_records(path, d.text_mode, d.split, d.max_examples)
    mapping = find_columns(records, shape, d)
    kept, flagged = [], []
    for i, record in enumerate(records):
        try:
            rows = to_preference(record, shape, mapping, d)
        except (ValueError, KeyError, TypeError, RecursionError) as e:  # as load_preference says it
            raise DatasetError(
                f"{_source(d)}: record {i + 1}: cannot read it as {shape} ({excerpt(e)})"
            ) from None
        why = sorted({p for row in rows for p in problems(row)})
        if why:
            flagged.append({"record": i + 1, "problems": why})
        kept += [(i + 1, row) for row in rows if not problems(row)]
    return kept, flagged, mapping, len(records)


def _token_counts(tokenizer, texts: list[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]


def _shown(tokenizer, kept: list, shape: str, d, n: int) -> tuple[list, list[str]]:
    """The first n kept rows as encoded, one entry per answer, with a label naming record and answer."""
    examples, labels = [], []
    for record, ex in kept[:n]:
        if shape == "prompts":
            examples.append([(render_prompt(tokenizer, ex["prompt"]), False)])
            labels.append(f"record {record}: prompt")
            continue
        answers = [("chosen", ex["chosen"]), ("rejected", ex["rejected"])] if shape == "pairs" else []
        answers = answers or [("good" if ex["label"] else "bad", ex["completion"])]
        for name, answer in answers:
            sft = {"messages": [*ex["prompt"], {"role": "assistant", "content": answer}]}
            rows, _ = encode_examples([sft], tokenizer, d.max_length, "completion")
            examples.append(segments(tokenizer, rows[0][0]))
            labels.append(f"record {record}: {name}")
    return examples, labels


def inspect_preference(
    path, cfg: RunConfig, tokenizer, objective: str, source: str, n_examples: int = 3
) -> dict:
    """inspect_data for preference data: shape, mapping, counts, token lengths of prompt and answers,
    the rows load_preference drops (1-based record numbers), warnings and rendered examples."""
    d = cfg.data
    shape = SHAPES[objective]
    kept, flagged, mapping, n_records = read_preference_rows(path, cfg, shape)
    examples = [ex for _, ex in kept]
    prompts = [render_prompt(tokenizer, ex["prompt"]) for ex in examples]
    parts = {"prompt": length_stats(_token_counts(tokenizer, prompts))}
    for key in ("chosen", "rejected", "completion"):
        if examples and key in examples[0]:
            parts[key] = length_stats(_token_counts(tokenizer, [ex[key] for ex in examples]))
    _, info = encode_preference(examples, shape, tokenizer, d) if examples else ([], {"lengths": []})
    sequences = length_stats(info["lengths"])
    truncated = sum(n > d.max_length for n in info["lengths"])
    counts = {"records": n_records, "rows": len(examples) + len(flagged), "kept": len(examples)}
    counts["dropped"] = len(flagged)
    if shape == "kto":
        counts["good"] = sum(ex["label"] for ex in examples)
        counts["bad"] = len(examples) - counts["good"]
    warnings = _preference_warnings(shape, counts, flagged, truncated, info, sequences, d.max_length)
    shown, labels = _shown(tokenizer, kept, shape, d, n_examples)
    return {
        "files": _files(path),
        "format": shape,
        "objective": f"{objective} ({source})",
        "mapping": mapping,
        "counts": counts,
        "lengths": sequences,  # whole sequences (prompt + answer), as the SFT report's
        "part_lengths": parts,  # prompt and answers alone
        "max_length": d.max_length,
        "truncated": truncated,
        "zero_label_rows": info.get("zero_label_rows", 0),
        "flagged": flagged,
        "warnings": warnings,
        "examples": shown,
        "example_labels": labels,
    }


def _preference_warnings(shape, counts, flagged, truncated, info, sequences, max_length) -> list[str]:
    warnings = []
    if flagged:
        named = ", ".join(str(f["record"]) for f in flagged[:SHOWN_FLAGGED])
        more = f" and {len(flagged) - SHOWN_FLAGGED} more" if len(flagged) > SHOWN_FLAGGED else ""
        warnings.append(
            f"{len(flagged)} rows teach nothing and are dropped (empty prompt or answer, or chosen == "
            f"rejected): records {named}{more}"
        )
    if truncated:
        cut = "cut at the start (the end of the prompt is kept)" if shape == "prompts" else "cut"
        warnings.append(
            f"{truncated} of {len(info['lengths'])} sequences are longer than data.max_length={max_length} "
            f"and will be {cut} (p95 is {sequences['p95']} tokens; --set data.max_length={sequences['p95']} "
            "keeps 95%)"
        )
    if info.get("zero_label_rows"):
        warnings.append(
            f"{info['zero_label_rows']} rows have no answer token left after truncation and will be "
            "dropped; raise data.max_length"
        )
    if shape == "kto" and counts["kept"] and not (counts["good"] and counts["bad"]):
        warnings.append("every row has the same label: KTO learns from good and bad answers both")
    if not counts["kept"]:
        warnings.append("no usable rows: training on this file fails")
    elif counts["kept"] < 20:
        warnings.append(f"only {counts['kept']} rows: expect the model to learn little (or to memorise)")
    return warnings
