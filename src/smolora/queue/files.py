"""Uploaded training files: OpenAI's JSONL shapes, checked line by line on upload, written out for training.

Two shapes, one per file (OpenAI's fine-tuning formats):
- chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`, with at
  least one user and one assistant turn (the assistant turns are what training learns);
- preference (method dpo): `{"input": {"messages": [...]}, "preferred_output": [{"role":
  "assistant", "content": "..."}], "non_preferred_output": [...]}`.

Each line goes through the data loaders' own readers (data/jsonl.py's `parse_object`,
data/formats.py's turn reader), so an upload is refused for what training would refuse, with
the line number. For training a file is rewritten into the shapes the recipe reads: chat rows
as `messages`, preference rows as `chosen` / `rejected` conversations (data/preference.py).

Run as:
    kind, lines = check_upload(data)                     # DatasetError("line 3: ...") when malformed
    write_training(Path("file-1.jsonl"), Path("train.jsonl"), kind)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smolora.data.formats import _conversation
from smolora.data.jsonl import parse_object
from smolora.durable import write_atomic
from smolora.errors import DatasetError, excerpt

CHAT_EXAMPLE = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}'
KIND_OF_METHOD = {"supervised": "chat", "dpo": "preference"}


def turns(value: Any, where: str) -> list[dict[str, str]]:
    """A message list in our roles, or a DatasetError naming the line."""
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: 'messages' must be a non-empty list of {{role, content}} turns")
    try:
        return _conversation(value, "role", "content")
    except (ValueError, TypeError) as e:
        raise DatasetError(f"{where}: {excerpt(e, 200)}") from None


def chat_row(obj: dict[str, Any], where: str) -> list[dict[str, str]]:
    if "messages" not in obj:
        raise DatasetError(f"{where}: no 'messages' key; each line is one conversation, e.g. {CHAT_EXAMPLE}")
    messages = turns(obj["messages"], where)
    roles = {m["role"] for m in messages}
    if "user" not in roles or "assistant" not in roles:
        raise DatasetError(
            f"{where}: a conversation needs a user turn and an assistant turn to learn from (roles here: "
            f"{', '.join(m['role'] for m in messages)})"
        )
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise DatasetError(f"{where}: every assistant turn is empty; there is nothing to learn")
    return messages


def answer(value: Any, key: str, where: str) -> dict[str, str]:
    messages = turns(value, f"{where}: {key}")
    if messages[0]["role"] != "assistant" or not messages[0]["content"].strip():
        raise DatasetError(f"{where}: {key} must hold one assistant message with content")
    return messages[0]


def preference_row(obj: dict[str, Any], where: str) -> dict[str, list[dict[str, str]]]:
    prompt = obj.get("input")
    if not isinstance(prompt, dict) or "messages" not in prompt:
        raise DatasetError(f"{where}: 'input' must be an object with 'messages' (OpenAI's preference format)")
    messages = turns(prompt["messages"], f"{where}: input")
    chosen = answer(obj.get("preferred_output"), "preferred_output", where)
    rejected = answer(obj.get("non_preferred_output"), "non_preferred_output", where)
    if chosen["content"].strip() == rejected["content"].strip():
        raise DatasetError(f"{where}: preferred_output and non_preferred_output are the same answer")
    return {"chosen": [*messages, chosen], "rejected": [*messages, rejected]}


def rows_of(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(where, object) for every non-blank line; a line that is not UTF-8 or not a JSON object is refused."""
    rows = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        where = f"line {n}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DatasetError(f"{where}: not UTF-8 text (byte {e.start + 1})") from None
        if line.strip():
            rows.append((where, parse_object(line, where)))
    return rows


def check_upload(data: bytes) -> tuple[str, int]:
    """(kind, number of examples) of an upload: "chat" or "preference", decided by its first line."""
    rows = rows_of(data.removeprefix(b"\xef\xbb\xbf"))  # a byte-order mark from Windows editors
    if not rows:
        raise DatasetError(f"the file is empty: expected one JSON object per line, e.g. {CHAT_EXAMPLE}")
    kind = "preference" if "preferred_output" in rows[0][1] else "chat"
    for where, obj in rows:
        if kind == "chat":
            chat_row(obj, where)
        else:
            preference_row(obj, where)
    return kind, len(rows)


def write_training(src: Path, dst: Path, kind: str) -> int:
    """Rewrite an upload into the shape the recipe reads (messages, or chosen/rejected); rows written."""
    rows = rows_of(src.read_bytes().removeprefix(b"\xef\xbb\xbf"))
    out = []
    for where, obj in rows:
        row = {"messages": chat_row(obj, where)} if kind == "chat" else preference_row(obj, where)
        out.append(json.dumps(row, ensure_ascii=False))
    write_atomic(dst, "\n".join(out) + "\n", best_effort=True)
    return len(out)
