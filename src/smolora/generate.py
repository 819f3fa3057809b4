"""Batched generation on a base, adapter or merged model.

Prompts are rendered with the model's chat template (and the domain tag, seed 002),
left-padded, and decoded in batches with the KV cache: one forward per new token for the
whole batch instead of one per prompt.

Run as:
    outputs = generate(model, tokenizer, ["Write a haiku about rivers"], max_new_tokens=64)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from smolora.data.render import render_prompt
from smolora.errors import ConfigError

Prompt = str | list[dict[str, str]]


def to_messages(prompt: Prompt, system_prompt: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[Prompt],
    max_new_tokens: int = 128,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    domain: str | None = None,
    system_prompt: str | None = None,
    stop: list[str] | None = None,
) -> list[str]:
    """One completion per prompt (a string or a list of chat messages), in input order."""
    decoding = generation_kwargs(tokenizer, max_new_tokens, do_sample, temperature, top_p)
    texts = [render_prompt(tokenizer, to_messages(p, system_prompt), domain=domain) for p in prompts]
    # Sorting by length keeps padding small inside each batch; results go back in input order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    results: list[str] = [""] * len(texts)
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # new tokens must follow every prompt directly
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            )
            enc = {k: v.to(device) for k, v in enc.items()}
            out = model.generate(**enc, **decoding)
            new = out[:, enc["input_ids"].shape[1] :]
            for i, row in zip(idx, new, strict=True):
                results[i] = truncate_at_stop(tokenizer.decode(row, skip_special_tokens=True).strip(), stop)
    finally:
        tokenizer.padding_side = old_side
    return results


# Below this a temperature only divides the logits into inf, softmax of inf gives NaN and sampling
# from NaN fails (in the server: every request decoded in that batch); greedy is what it tends to anyway.
MIN_TEMPERATURE = 1e-5


def greedy(temperature: Any, top_p: Any) -> Any:
    """Whether decoding at this temperature and top-p is greedy: too cold to divide by, or no mass kept.

    Floats, or one tensor entry per row (the server's batches): hence `|`, which means "or" for both.
    """
    return (temperature < MIN_TEMPERATURE) | (top_p == 0)


def sampling_kwargs(do_sample: bool, temperature: float = 1.0, top_p: float = 1.0) -> dict[str, Any]:
    """model.generate's sampling arguments: greedy unless sampling is asked for and `greedy` says no."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise ConfigError(f"temperature must be >= 0 and top_p in (0, 1]; got {temperature} and {top_p}")
    if not do_sample or greedy(temperature, top_p):
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p}


def generation_kwargs(
    tokenizer: Any, max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0
) -> dict[str, Any]:
    """model.generate's decoding arguments, the one place they are built (CLI, API, eval, UI chat).

    The server decodes each row of a batch with its own temperature and top-p (serve/batching.py),
    by the same `greedy` rule.
    """
    return {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": end_token_ids(tokenizer),
        **sampling_kwargs(do_sample, temperature, top_p),
    }


@contextlib.contextmanager
def plain_generation(model: Any) -> Iterator[None]:
    """Decode with exactly the settings passed to generate().

    generate() fills every setting left unset from the model's generation_config (a shipped
    repetition_penalty, top_k, eos, ...); models that differ only there would then decode
    differently, so the stored config is swapped for a blank one meanwhile.
    """
    from transformers import GenerationConfig

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = inner.generation_config
    inner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = saved


def end_token_ids(tokenizer: Any) -> list[int]:
    """EOS plus the chat template's end-of-turn token (<|im_end|>, <|eot_id|>, <end_of_turn>)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return sorted(ids)


def truncate_at_stop(text: str, stop: list[str] | None) -> str:
    for s in stop or []:
        if s and s in text:
            text = text[: text.index(s)]
    return text
