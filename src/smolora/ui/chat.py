"""The Chat view's server side: load a base model or a run once, stream its answers token by token.

Models load through `load_for_inference` (the same loader as `smolora chat`), at most two
at a time (base and fine-tuned, for the side-by-side mode). Generation runs in a thread
with transformers' TextIteratorStreamer; the HTTP handler yields the pieces as
server-sent events. One lock: two CPU generations at once would only both be slower.

Run as:
    for piece in stream_answer("runs/quickstart", [{"role": "user", "content": "Hi"}], 32):
        print(piece, end="")
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

_models: OrderedDict[str, tuple[Any, Any, dict]] = OrderedDict()
_load_lock = threading.Lock()
_generate_lock = threading.Lock()
MAX_LOADED = 2


def get_model(key: str) -> tuple[Any, Any, dict]:
    """(model, tokenizer, meta) for a run dir, adapter dir or model name; the least recent is dropped."""
    from smolora.model.load import load_for_inference

    with _load_lock:
        if key in _models:
            _models.move_to_end(key)
            return _models[key]
        while len(_models) >= MAX_LOADED:
            _models.popitem(last=False)
        _models[key] = load_for_inference(key)
        return _models[key]


def loaded() -> list[str]:
    return list(_models)


def lineage_warning(key: str) -> str | None:
    """The loader's warning when the run's base is not the one it was trained on (model/lineage.py)."""
    return _models[key][2].get("lineage_warning") if key in _models else None


def stream_answer(
    key: str,
    messages: list[dict[str, str]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    system_prompt: str | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[str]:
    """Text pieces of the model's answer to the conversation, as they are generated.

    Setting `cancel` (the browser went away) stops generation at the next token, so the
    model lock is free for the next question rather than held until max_new_tokens.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    cancel = cancel or threading.Event()

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full(
                (input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device
            )

    from smolora.data.render import render_prompt
    from smolora.generate import generation_kwargs, to_messages

    model, tokenizer, meta = get_model(key)
    text = render_prompt(tokenizer, to_messages(messages, system_prompt or meta.get("system_prompt")))
    device = next(model.parameters()).device
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    # The chat samples whenever the temperature slider is above 0, with a fixed top-p of 0.95.
    decoding = generation_kwargs(tokenizer, max_new_tokens, temperature > 0, temperature, top_p=0.95)
    kwargs = dict(**enc, streamer=streamer, stopping_criteria=StoppingCriteriaList([Cancelled()]), **decoding)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with _generate_lock, torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as e:  # surfaced to the browser below, not lost in a thread
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:  # also when the caller stops reading (closed generator): stop generating too
        cancel.set()
        thread.join()
    if errors:
        raise errors[0]
