"""Data for the preference and reward objectives: pairs (dpo, orpo, simpo), labelled rows (kto), prompts (grpo).

Shapes, detected from the columns like the SFT ones (formats.py) and mapped with `data.fields`:

- pairs: `prompt` / `chosen` / `rejected`, strings; or `chosen` / `rejected` as message lists
  (the shape of the common public preference sets), the prompt then being their shared turns.
- kto: `prompt` / `completion` / `label` (true: a good answer). Pairs work too: each gives a
  good and a bad row.
- prompts: `prompt` (or a `messages` list); every other column is handed to the rewards.

Each answer is rendered with the chat template after its prompt and masked like an SFT answer
(render.encode_examples), so the tokens a pair compares are the ones SFT would train on.

Run as:
    examples, shape, mapping = load_preference("pairs.jsonl", cfg.data, "dpo")
    rows, info = encode_preference(examples, shape, tokenizer, cfg.data)
"""

from __future__ import annotations

import json
from typing import Any

from smolora.config import DataSection
from smolora.data.clean import clean_text
from smolora.data.formats import _columns, _conversation, _find, _source, as_text
from smolora.data.read import read_records
from smolora.data.render import IGNORE, encode_examples, ensure_chat_template, render_prompt
from smolora.errors import DatasetError, excerpt

SHAPES = {"dpo": "pairs", "orpo": "pairs", "simpo": "pairs", "kto": "kto", "grpo": "prompts"}
PROMPT_KEYS = ["prompt", "question", "instruction", "query", "input"]
COLUMNS = {
    "prompt": PROMPT_KEYS,
    "messages": ["messages", "conversations", "conversation"],
    "chosen": ["chosen"],
    "rejected": ["rejected"],
    "completion": ["completion", "response", "answer", "output"],
    "label": ["label"],
    "system": ["system", "system_prompt"],
}
NEEDS = {"pairs": ("chosen", "rejected"), "kto": ("completion", "label"), "prompts": ()}


def find_columns(records: list[dict], shape: str, data: DataSection) -> dict[str, str]:
    """Our role -> their column; `data.fields` wins. A missing role is a one-line error."""
    columns = _columns(records)
    mapping = {k: v for k, v in data.fields.items() if k in COLUMNS}
    for role, names in COLUMNS.items():
        if role not in mapping:
            col = _find(names, columns, set(mapping.values()))
            if col is not None:
                mapping[role] = col
    needs = NEEDS[shape]
    missing = [r for r in needs if r not in mapping]
    if shape == "kto" and "label" in missing and {"chosen", "rejected"} <= set(mapping):
        missing = []  # pairs, read as one good and one bad row each
    if "prompt" not in mapping and "messages" not in mapping and not {"chosen", "rejected"} <= set(mapping):
        missing = ["prompt", *missing]
    if missing:
        want = {"pairs": "prompt, chosen, rejected", "kto": "prompt, completion, label", "prompts": "prompt"}
        raise DatasetError(
            f"{_source(data)}: {shape} data needs fields {want[shape]}; missing {', '.join(missing)} "
            f"(found {excerpt(columns, 150)}); map yours with data.fields, e.g. --set data.fields.prompt=question"
        )
    return mapping


def _turns(value: Any) -> list[dict] | None:
    """A message list (role/content or from/value), or None for a plain string."""
    if isinstance(value, str) and not value.lstrip().startswith("[{"):
        return None
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list):
        raise ValueError(f"expected text or a list of messages, got {type(value).__name__}")
    keys = (
        ("from", "value")
        if value and isinstance(value[0], dict) and "from" in value[0]
        else ("role", "content")
    )
    return _conversation(value, *keys)


def _prompt(record: dict, mapping: dict[str, str], data: DataSection) -> list[dict]:
    if "messages" in mapping and record.get(mapping["messages"]) not in (None, ""):
        turns = _turns(record[mapping["messages"]]) or []
        while turns and turns[-1]["role"] == "assistant":  # an answer in a prompt column: not the prompt
            turns.pop()
    elif "prompt" in mapping:
        value = record.get(mapping["prompt"])
        turns = _turns(value) if value is not None else None
        turns = turns if turns is not None else [{"role": "user", "content": as_text(value)}]
    else:
        turns = []
    system = as_text(record.get(mapping["system"])) if "system" in mapping else ""
    system = system or data.system_prompt or ""
    if system.strip() and not any(m["role"] == "system" for m in turns):
        turns.insert(0, {"role": "system", "content": system})
    return [{**m, "content": clean_text(m["content"])} if data.clean else m for m in turns]


def _answer(value: Any, prompt: list[dict]) -> tuple[str, list[dict]]:
    """(the answer text, the prompt) of a chosen/rejected/completion cell."""
    turns = _turns(value)
    if turns is None:
        return as_text(value), prompt
    if not turns or turns[-1]["role"] != "assistant":
        raise ValueError("a message list answer must end with an assistant turn")
    if any(m["role"] == "user" and m["content"].strip() for m in prompt):
        return turns[-1]["content"], prompt
    # No prompt column (or none in this row): the conversation before the answer is the prompt. A
    # system prompt (data.system_prompt, a system column) is all `prompt` then holds: keep it, first.
    earlier = turns[:-1]
    own_system = any(m["role"] == "system" for m in earlier)
    system = [] if own_system else [m for m in prompt if m["role"] == "system"]
    return turns[-1]["content"], system + earlier


def _label(value: Any) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    text = as_text(value).strip().lower()
    if text in ("true", "1", "yes", "good", "desirable"):
        return True
    if text in ("false", "0", "no", "bad", "undesirable"):
        return False
    raise ValueError(f"label must be true or false, got {excerpt(repr(value), 40)}")


def to_preference(record: dict, shape: str, mapping: dict[str, str], data: DataSection) -> list[dict]:
    """One record -> its examples (a kto row read from a pair gives two)."""
    prompt = _prompt(record, mapping, data)
    clean = clean_text if data.clean else (lambda s: s)
    if shape == "prompts":
        others = {
            k: v for k, v in record.items() if k not in {mapping.get("prompt"), mapping.get("messages")}
        }
        return [{"prompt": prompt, "columns": others}]
    if shape == "kto" and "completion" in mapping and "label" in mapping:
        text, prompt = _answer(record.get(mapping["completion"]), prompt)
        return [{"prompt": prompt, "completion": clean(text), "label": _label(record.get(mapping["label"]))}]
    chosen, prompt = _answer(record.get(mapping["chosen"]), prompt)
    rejected, prompt = _answer(record.get(mapping["rejected"]), prompt)
    if shape == "kto":
        return [
            {"prompt": prompt, "completion": clean(chosen), "label": True},
            {"prompt": prompt, "completion": clean(rejected), "label": False},
        ]
    return [{"prompt": prompt, "chosen": clean(chosen), "rejected": clean(rejected)}]


def problems(example: dict) -> list[str]:
    """Why an example teaches nothing: an empty prompt or answer, or chosen == rejected."""
    out = []
    if not any(m["role"] == "user" and m["content"].strip() for m in example["prompt"]):
        out.append("empty prompt")
    for key in ("chosen", "rejected", "completion"):
        if key in example and not example[key].strip():
            out.append(f"empty {key}")
    if "chosen" in example and example["chosen"].strip() == example["rejected"].strip():
        out.append("chosen == rejected")
    return out


def load_preference(path: str | list[str], data: DataSection, objective: str) -> tuple[list[dict], str, dict]:
    """(examples, shape, mapping) of one input; rows that teach nothing are dropped and counted."""
    shape = SHAPES[objective]
    data = data.model_copy(update={"path": path})  # error messages name this input
    records = read_records(path, data.text_mode, data.split, data.max_examples)
    mapping = find_columns(records, shape, data)
    examples, dropped = [], 0
    for i, record in enumerate(records):
        try:
            rows = to_preference(record, shape, mapping, data)
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise DatasetError(
                f"{_source(data)}: record {i + 1}: cannot read it as {shape} ({excerpt(e)})"
            ) from None
        kept = [r for r in rows if not problems(r)]
        dropped += len(rows) - len(kept)
        examples += kept
    if not examples:
        raise DatasetError(
            f"{_source(data)}: no usable {shape} rows: {len(records)} read, {dropped} dropped "
            "(empty prompt or answer, or chosen == rejected); `smolora data inspect` lists them"
        )
    return examples, shape, {**mapping, "dropped": str(dropped)}


def _encode(prompts: list[list[dict]], answers: list[str], tokenizer, data: DataSection) -> tuple[list, list]:
    sft = [
        {"messages": [*p, {"role": "assistant", "content": a}]} for p, a in zip(prompts, answers, strict=True)
    ]
    rows, info = encode_examples(sft, tokenizer, data.max_length, "completion")
    return [r[0] for r in rows], info["lengths"]


def _trained(row: dict) -> int:
    return len(row["labels"]) - row["labels"].count(IGNORE)


def encode_preference(
    examples: list[dict], shape: str, tokenizer, data: DataSection
) -> tuple[list[dict], dict]:
    """Token rows of the objective's shape, and info (lengths, rows dropped for lack of answer tokens)."""
    ensure_chat_template(tokenizer)
    prompts = [ex["prompt"] for ex in examples]
    if shape == "prompts":
        texts = [render_prompt(tokenizer, p) for p in prompts]
        ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        rows = [
            {
                "prompt_ids": list(
                    i[-data.max_length :]
                ),  # keep the end: the question and the generation prompt
                "prompt": p[-1]["content"] if p else "",
                "columns": json.dumps(ex["columns"], ensure_ascii=False, default=str),
                "length": min(len(i), data.max_length),
            }
            for i, p, ex in zip(ids, prompts, examples, strict=True)
        ]
        return rows, {"lengths": [len(i) for i in ids], "zero_label_rows": 0}
    if shape == "pairs":
        chosen, lengths = _encode(prompts, [ex["chosen"] for ex in examples], tokenizer, data)
        rejected, lengths_r = _encode(prompts, [ex["rejected"] for ex in examples], tokenizer, data)
        rows = [
            {
                "chosen_input_ids": c["input_ids"],
                "chosen_labels": c["labels"],
                "rejected_input_ids": r["input_ids"],
                "rejected_labels": r["labels"],
                "length": max(len(c["input_ids"]), len(r["input_ids"])),
            }
            for c, r in zip(chosen, rejected, strict=True)
            if _trained(c) and _trained(r)
        ]
        return rows, {"lengths": lengths + lengths_r, "zero_label_rows": len(examples) - len(rows)}
    # kto: each row also carries a mismatched one (this prompt, the next row's answer), whose
    # log-ratio estimates the KL term the KTO loss compares against.
    answers = [ex["completion"] for ex in examples]
    own, lengths = _encode(prompts, answers, tokenizer, data)
    mismatched, _ = _encode(prompts, answers[1:] + answers[:1], tokenizer, data)
    rows = [
        {
            "input_ids": o["input_ids"],
            "labels": o["labels"],
            "kl_input_ids": m["input_ids"],
            "kl_labels": m["labels"],
            "label": int(ex["label"]),
            "length": max(len(o["input_ids"]), len(m["input_ids"])),
        }
        for o, m, ex in zip(own, mismatched, examples, strict=True)
        if _trained(o) and _trained(m)
    ]
    return rows, {"lengths": lengths, "zero_label_rows": len(examples) - len(rows)}
