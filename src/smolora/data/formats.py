"""Recognise the shape of the records and turn each one into an *example*.

An example is `{"messages": [{"role": ..., "content": ...}, ...]}` for anything with a
prompt and an answer, or `{"text": ...}` for plain text; either may carry `"domain"`.
`FORMATS` is the one extension point: a shape is its candidate column names per role and
a `to_example(record, mapping, cfg)` function. The mapping says which column plays which
role (our role -> their column) and is what `data.fields` overrides.

Run as:
    fmt, mapping = detect_format(records, cfg.data)       # ("qa", {"prompt": "question", ...})
    examples = to_examples(records, fmt, mapping, cfg.data)
"""

from __future__ import annotations

import json
import string
from typing import Any

from smolora.config import DataSection
from smolora.errors import DatasetError, excerpt

ROLES = ("prompt", "input", "response", "text", "messages", "system", "domain")
# Roles any shape may carry next to its own: a per-row system prompt and seed 002's domain/hash.
META = {"system": ["system", "system_prompt"], "domain": ["domain", "hash"]}
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
}
CONTENT_ROLES = ("prompt", "input", "response", "text", "messages")
CONVERSATION_KEYS = ["messages", "conversations", "conversation", "chat", "dialog", "dialogue"]
TEXT_KEYS = ["text", "content", "body", "document", "passage", "article", "story", "sentence", "code"]


def domain_tag(domain: str) -> str:
    """What a domain turns into at the start of the first user turn (and at inference)."""
    return f"[domain: {domain}]\n"


def as_text(value: Any) -> str:
    """Column value -> string: None is empty, numbers are printed, nested data becomes JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value != value:  # NaN from a sparse parquet/CSV column
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _prompt_text(record: dict, mapping: dict[str, str], cfg: DataSection) -> str:
    if "template" in mapping:
        return mapping["template"].format_map({k: as_text(v) for k, v in record.items()})
    prompt = as_text(record.get(mapping.get("prompt", "")))
    extra = as_text(record.get(mapping["input"])) if "input" in mapping else ""
    # Alpaca's optional input is context for the instruction: it follows it.
    return f"{prompt}\n\n{extra}" if prompt.strip() and extra.strip() else prompt or extra


def _with_meta(example: dict, record: dict, mapping: dict[str, str], cfg: DataSection) -> dict:
    if cfg.domain and "domain" in mapping and as_text(record.get(mapping["domain"])).strip():
        example["domain"] = as_text(record[mapping["domain"]]).strip()
    messages = example.get("messages")
    if messages is not None and not any(m["role"] == "system" for m in messages):
        system = as_text(record.get(mapping["system"])) if "system" in mapping else ""
        system = system or cfg.system_prompt or ""
        if system.strip():
            messages.insert(0, {"role": "system", "content": system})
    return example


def text_example(record: dict, mapping: dict[str, str], cfg: DataSection) -> dict:
    if "template" in mapping:
        return {"text": _prompt_text(record, mapping, cfg)}
    return {"text": as_text(record.get(mapping["text"]))}


def prompt_response_example(record: dict, mapping: dict[str, str], cfg: DataSection) -> dict:
    user = _prompt_text(record, mapping, cfg)
    answer = as_text(record.get(mapping["response"]))
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def _conversation(value: Any, role_key: str, content_key: str) -> list[dict]:
    if value is None or value == "":  # a missing conversation is an empty example, dropped by cleaning
        return []
    if isinstance(value, str):  # a conversation stored as a JSON string (CSV, parquet exports)
        value = json.loads(value)
    if not isinstance(value, list):
        raise ValueError(f"expected a list of turns, got {type(value).__name__}")
    messages = []
    for turn in value:
        if not isinstance(turn, dict) or role_key not in turn:
            raise ValueError(f"each turn needs '{role_key}' and '{content_key}', got {str(turn)[:80]}")
        role = ROLE_ALIASES.get(str(turn[role_key]).lower())
        if role is None:
            raise ValueError(
                f"unknown role {excerpt(repr(turn[role_key]), 80)}; expected one of {sorted(ROLE_ALIASES)}"
            )
        content = turn.get(content_key)
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        messages.append({"role": role, "content": as_text(content)})
    return messages


def messages_example(record: dict, mapping: dict[str, str], cfg: DataSection) -> dict:
    return {"messages": _conversation(record.get(mapping["messages"]), "role", "content")}


def sharegpt_example(record: dict, mapping: dict[str, str], cfg: DataSection) -> dict:
    return {"messages": _conversation(record.get(mapping["messages"]), "from", "value")}


# Detection tries the shapes in this order; "required" roles must all be found.
FORMATS: dict[str, dict] = {
    "messages": {
        "required": {"messages": CONVERSATION_KEYS},
        "optional": {},
        "turn_keys": ("role", "content"),
        "to_example": messages_example,
    },
    "sharegpt": {
        "required": {"messages": ["conversations", *CONVERSATION_KEYS]},
        "optional": {},
        "turn_keys": ("from", "value"),
        "to_example": sharegpt_example,
    },
    "alpaca": {
        "required": {"prompt": ["instruction"], "response": ["output"]},
        "optional": {"input": ["input"]},
        "to_example": prompt_response_example,
    },
    "qa": {
        "required": {
            "prompt": ["question", "prompt", "query", "instruction", "input"],
            "response": ["answer", "response", "output", "completion", "target", "answers"],
        },
        "optional": {"input": ["context"]},
        "to_example": prompt_response_example,
    },
    "text": {"required": {"text": TEXT_KEYS}, "optional": {}, "to_example": text_example},
}


def _columns(records: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        seen.update(dict.fromkeys(r))
    return list(seen)


def _find(candidates: list[str], columns: list[str], taken: set[str]) -> str | None:
    lower = {c.lower(): c for c in reversed(columns)}
    for name in candidates:
        col = lower.get(name)
        if col is not None and col not in taken:
            return col
    return None


def _turn_style(records: list[dict], column: str) -> tuple[str, str] | None:
    """The (role, content) keys the turns of a conversation column use, from the first row."""
    for r in records[:20]:
        value = r.get(column)
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):  # not JSON, or nested past the recursion limit
                return None
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for keys in (("role", "content"), ("from", "value")):
                if all(k in value[0] for k in keys):
                    return keys
            return None
    return None


def _mapping_for(
    fmt: str, records: list[dict], columns: list[str], cfg: DataSection
) -> dict[str, str] | None:
    """The full mapping for one shape, or None when a required role has no column."""
    spec = FORMATS[fmt]
    mapping = {k: v for k, v in cfg.fields.items()}
    # An explicit mapping switches off guessing of optional roles: the user said what they meant.
    explicit = {r for r in mapping if r in CONTENT_ROLES}
    if not explicit <= {*spec["required"], *spec["optional"]}:
        return None  # the user mapped roles this shape does not have
    roles = {**spec["required"], **({} if explicit else spec["optional"]), **META}
    for role, candidates in roles.items():
        if role not in mapping:
            col = _find(candidates, columns, set(mapping.values()))
            if col is not None:
                mapping[role] = col
    if not cfg.domain:
        mapping.pop("domain", None)
    if any(role not in mapping for role in spec["required"]):
        return None
    if "turn_keys" in spec and _turn_style(records, mapping["messages"]) != spec["turn_keys"]:
        return None
    return {role: mapping[role] for role in ROLES if role in mapping}


def _source(cfg: DataSection) -> str:
    path = cfg.path if isinstance(cfg.path, (str, type(None))) else ", ".join(cfg.path)
    return path or "the data"


def _no_fields(cfg: DataSection, columns: list[str], what: str) -> DatasetError:
    a, b = columns[:2] if len(columns) >= 2 and len(columns[0] + columns[1]) < 60 else ["question", "answer"]
    return DatasetError(
        f"{what} in {_source(cfg)}; found fields: {excerpt(columns, 150)}; map them with data.fields, "
        f"e.g. --set data.fields.prompt={a} --set data.fields.response={b}"
    )


def detect_format(records: list[dict], cfg: DataSection) -> tuple[str, dict[str, str]]:
    """(shape name, mapping actually used). Forced format and explicit fields win over guesses."""
    columns = _columns(records)
    bad_roles = sorted(set(cfg.fields) - set(ROLES))
    if bad_roles:
        raise DatasetError(f"data.fields: unknown role(s) {bad_roles}; roles are {list(ROLES)}")
    missing = {role: col for role, col in cfg.fields.items() if col not in columns}
    if missing:
        raise DatasetError(f"data.fields maps {missing} but {_source(cfg)} has fields: {excerpt(columns)}")
    if cfg.template:
        return _template_format(records, columns, cfg)
    candidates = list(FORMATS) if cfg.format == "auto" else [cfg.format]
    for fmt in candidates:
        mapping = _mapping_for(fmt, records, columns, cfg)
        if mapping is not None:
            return fmt, mapping
    if cfg.format == "auto" and not cfg.fields:
        # One text-like column and nothing else that could be a prompt: treat it as plain text.
        meta = {name for names in META.values() for name in names}
        texts = [c for c in columns if isinstance(records[0].get(c), str) and c.lower() not in meta]
        if len(texts) == 1:
            return "text", {"text": texts[0], **_meta_mapping(columns, cfg)}
    if cfg.format != "auto":
        need = ", ".join(FORMATS[cfg.format]["required"])
        raise _no_fields(cfg, columns, f"data.format={cfg.format} needs fields for: {need}; none found")
    raise _no_fields(cfg, columns, "no usable text fields")


def _meta_mapping(columns: list[str], cfg: DataSection) -> dict[str, str]:
    out = {}
    for role, candidates in META.items():
        col = cfg.fields.get(role) or _find(candidates, columns, set())
        if col and (role != "domain" or cfg.domain):
            out[role] = col
    return out


def _template_format(records: list[dict], columns: list[str], cfg: DataSection) -> tuple[str, dict[str, str]]:
    """Seed 001's multi-column strategy: the template builds the prompt (or the whole text)."""
    assert cfg.template is not None
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(cfg.template) if name}
    except ValueError as e:
        raise DatasetError(f"data.template {cfg.template!r}: {e}") from None
    unknown = sorted(used - set(columns))
    if unknown:
        raise DatasetError(f"data.template uses {unknown}, not fields of {_source(cfg)}: {excerpt(columns)}")
    mapping = {"template": cfg.template, **_meta_mapping(columns, cfg)}
    if "response" in cfg.fields:
        return "qa", {**mapping, "response": cfg.fields["response"]}
    return "text", mapping


def to_examples(records: list[dict], fmt: str, mapping: dict[str, str], cfg: DataSection) -> list[dict]:
    """Records -> examples with the shape's converter; a malformed row names its index."""
    convert = FORMATS[fmt]["to_example"]
    examples = []
    for i, record in enumerate(records):
        try:
            example = convert(record, mapping, cfg)
        except (ValueError, KeyError, TypeError, IndexError, RecursionError) as e:
            raise DatasetError(
                f"{_source(cfg)}: record {i + 1}: cannot read it as {fmt} ({excerpt(e)})"
            ) from None
        examples.append(_with_meta(example, record, mapping, cfg))
    return examples
