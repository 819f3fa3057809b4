"""Clean example text, drop empty and duplicate examples, cut long token runs into windows.

Run as:
    examples, counts = clean_examples(examples, dedupe=True)
    print(counts)   # {"input": 1000, "empty": 3, "duplicates": 12, "kept": 985}
"""

from __future__ import annotations

import json
import re

# C0/C1 control characters except \t and \n (\r is normalised first); DEL too.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Runs of spaces/tabs *after* a visible character: leading indentation is meaning in code and verse.
_INNER_SPACE = re.compile(r"(?<=\S)[ \t]{2,}")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def clean_text(s: str) -> str:
    """Normalise newlines, drop control characters, collapse inner space runs, strip."""
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = _CONTROL.sub("", s)
    s = _INNER_SPACE.sub(" ", s)
    s = _TRAILING_SPACE.sub("\n", s)
    s = _MANY_NEWLINES.sub("\n\n", s)
    return s.strip()


def _clean_example(example: dict) -> dict:
    out = dict(example)
    if "text" in example:
        out["text"] = clean_text(example["text"])
    if "messages" in example:
        out["messages"] = [{**m, "content": clean_text(m["content"])} for m in example["messages"]]
    if "domain" in example:
        out["domain"] = clean_text(example["domain"])
        if not out["domain"]:
            del out["domain"]
    return out


def is_empty(example: dict) -> bool:
    """Nothing to learn: empty text, or a conversation without a user and an assistant turn."""
    if "messages" in example:
        has = {m["role"] for m in example["messages"] if m["content"].strip()}
        return not {"user", "assistant"} <= has
    return not example.get("text", "").strip()


def clean_examples(
    examples: list[dict], dedupe: bool = True, normalize: bool = True
) -> tuple[list[dict], dict[str, int]]:
    """Clean every string (unless `normalize` is False), drop empty and duplicate examples."""
    kept, seen = [], set()
    counts = {"input": len(examples), "empty": 0, "duplicates": 0, "kept": 0}
    for example in examples:
        example = _clean_example(example) if normalize else dict(example)
        if "messages" in example:
            # An empty system turn is a formatting accident, not an instruction.
            example["messages"] = [
                m for m in example["messages"] if m["role"] != "system" or m["content"].strip()
            ]
        if is_empty(example):
            counts["empty"] += 1
            continue
        if dedupe:
            key = json.dumps(example, sort_keys=True, ensure_ascii=False)
            if key in seen:
                counts["duplicates"] += 1
                continue
            seen.add(key)
        kept.append(example)
    counts["kept"] = len(kept)
    return kept, counts


def chunk_ids(ids: list[int], max_length: int, overlap: int) -> list[list[int]]:
    """Windows of `max_length` tokens, each sharing `overlap` tokens with the one before."""
    if len(ids) <= max_length:
        return [ids]
    overlap = min(overlap, max_length // 2)  # a window must move forward by a useful amount
    step = max_length - overlap
    return [ids[start : start + max_length] for start in range(0, len(ids) - overlap, step)]
