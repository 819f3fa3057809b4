"""Render examples with the model's chat template, tokenize, and mask the labels.

Chat examples train on the assistant turns only (`train_on="completion"`): each turn's
character span is where the render of the conversation up to it (with the generation
prompt) ends and the render including it ends. Characters map to tokens through the fast
tokenizer's offsets, so the labels match what the model sees at inference, token for
token. Plain text trains on everything and is cut into overlapping windows.

Run as:
    ensure_chat_template(tokenizer)
    rows = encode_example({"messages": [...]}, tokenizer, max_length=512)
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Hi"}], domain="medicine")
"""

from __future__ import annotations

import bisect
import logging

from smolora.data.clean import chunk_ids
from smolora.data.formats import domain_tag
from smolora.errors import DatasetError

log = logging.getLogger(__name__)

IGNORE = -100  # the label PyTorch's cross-entropy skips

# For base models without a chat template: Alpaca-style headers, eos closing each answer so
# the fine-tuned model learns to stop.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '### System:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer) -> None:
    """Give a tokenizer without a chat template the fallback one, so everything renders alike."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_TEMPLATE


def _apply(tokenizer, messages: list[dict], generation: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def tagged(text: str, domain: str | None) -> str:
    return domain_tag(domain) + text if domain else text


def with_domain(messages: list[dict], domain: str | None) -> list[dict]:
    """A copy of `messages` with the domain tag at the start of the first user turn."""
    messages = [dict(m) for m in messages]
    if domain:
        for m in messages:
            if m["role"] == "user":
                m["content"] = tagged(m["content"], domain)
                break
    return messages


def render_prompt(tokenizer, messages: list[dict] | str, domain: str | None = None) -> str:
    """The text a model continues at inference: the conversation plus the generation prompt."""
    ensure_chat_template(tokenizer)
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return _apply(tokenizer, with_domain(messages, domain), generation=True)


def _merge_system(messages: list[dict]) -> list[dict]:
    # Some templates (Gemma's) reject a system turn: fold it into the first user turn instead.
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            break
    return rest


def render_chat(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]] | None, str]:
    """(full text, char spans of the assistant turns or None for "train on all", how found)."""
    try:
        full = _apply(tokenizer, messages)
    except Exception as e:  # jinja raises whatever the template author chose
        if messages and messages[0]["role"] == "system":
            return render_chat(tokenizer, _merge_system(messages))
        raise DatasetError(f"the chat template cannot render this conversation ({e})") from None
    spans = []
    try:
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = _apply(tokenizer, messages[:i], generation=True)
            after = full if i == len(messages) - 1 else _apply(tokenizer, messages[: i + 1])
            if not (full.startswith(before) and full.startswith(after) and len(after) > len(before)):
                raise ValueError("prefix property does not hold")
            # Trailing newlines after the end-of-turn token are layout, not something to learn.
            spans.append((len(before), len(after.rstrip())))
        return full, spans, "prefix"
    except Exception:  # e.g. templates that drop reasoning from earlier turns
        spans = _search_spans(tokenizer, messages, full)
        return (full, spans, "search") if spans is not None else (full, None, "all")


def _search_spans(tokenizer, messages: list[dict], full: str) -> list[tuple[int, int]] | None:
    """Fallback: find each answer's text in order, plus the eos right after it."""
    spans, cursor = [], 0
    eos = tokenizer.eos_token or ""
    for m in messages:
        if m["role"] != "assistant" or not m["content"]:
            continue
        start = full.find(m["content"], cursor)
        if start < 0:
            return None
        end = start + len(m["content"])
        if eos and full[end:].lstrip(" \n").startswith(eos):
            end = full.index(eos, end) + len(eos)
        spans.append((start, end))
        cursor = end
    return spans


def _mask(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Labels: the token where it starts inside a span, IGNORE elsewhere.

    A token straddling the prompt/answer border belongs to the prompt, which is what the model
    sees at inference. Offsets only grow along the text, so each span is one bisected slice.
    """
    starts = [a for a, _ in offsets]
    labels = [IGNORE] * len(ids)
    for s, e in spans:
        lo, hi = bisect.bisect_left(starts, s), bisect.bisect_left(starts, e)
        labels[lo:hi] = ids[lo:hi]
    return labels


def _offsets(tokenizer, texts: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    if getattr(tokenizer, "is_fast", False):
        # One batched call: the Rust tokenizer spreads it over the cores.
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return enc["input_ids"], enc["offset_mapping"]
    # Slow tokenizers have no offsets: give each token the char position of its prefix's end.
    ids_all, offs_all = [], []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        offs = [(len(tokenizer.decode(ids[:j])), 0) for j in range(len(ids))]
        ids_all.append(ids)
        offs_all.append(offs)
    return ids_all, offs_all


def encode_examples(
    examples: list[dict], tokenizer, max_length: int, train_on: str = "completion", chunk_overlap: int = 32
) -> tuple[list[list[dict]], dict]:
    """Every example's rows (in order), with one batched tokenizer call per kind of example.

    Returns `(rows_per_example, info)`; info holds "lengths" (tokens before truncation),
    "truncated" (chat rows cut at max_length), "chunked" (texts cut into several windows)
    and "mask_fallback" (conversations whose answer spans were found by search or not at all).
    """
    ensure_chat_template(tokenizer)
    out: list[list[dict]] = [[] for _ in examples]
    info = {"lengths": [0] * len(examples), "truncated": 0, "chunked": 0, "mask_fallback": 0}

    chat = [i for i, ex in enumerate(examples) if "messages" in ex]
    rendered = [
        render_chat(tokenizer, with_domain(examples[i]["messages"], examples[i].get("domain"))) for i in chat
    ]
    ids_all, offs_all = _offsets(tokenizer, [r[0] for r in rendered]) if chat else ([], [])
    for i, (_, spans, how), ids, offs in zip(chat, rendered, ids_all, offs_all, strict=True):
        info["mask_fallback"] += how != "prefix"
        labels = list(ids) if train_on == "all" or spans is None else _mask(ids, offs, spans)
        info["lengths"][i] = len(ids)
        if len(ids) > max_length:
            info["truncated"] += 1
        out[i] = [{"input_ids": list(ids[:max_length]), "labels": labels[:max_length]}]

    plain = [i for i, ex in enumerate(examples) if "messages" not in ex]
    texts = [tagged(examples[i]["text"], examples[i].get("domain")) for i in plain]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for i, ids in zip(plain, tokenizer(texts, verbose=False)["input_ids"] if plain else [], strict=True):
        ids = list(ids) + eos  # so the model learns where a document ends
        info["lengths"][i] = len(ids)
        windows = chunk_ids(ids, max_length, chunk_overlap)
        info["chunked"] += len(windows) > 1
        out[i] = [{"input_ids": w, "labels": list(w)} for w in windows]
    if info["mask_fallback"]:
        log.warning(
            "%d conversation(s): the chat template does not render prefixes consistently; answers were "
            "located by search (or trained on whole)",
            info["mask_fallback"],
        )
    return out, info


def encode_example(
    example: dict, tokenizer, max_length: int, train_on: str = "completion", chunk_overlap: int = 32
) -> list[dict]:
    """One example -> its rows `{"input_ids", "labels"}` (several windows for long plain text)."""
    return encode_examples([example], tokenizer, max_length, train_on, chunk_overlap)[0][0]
