"""Constrained decoding: the tokens a row may emit next, so its answer follows a grammar
(`response_format` json_object / json_schema, or a tool call that `tool_choice` forces).

The grammar engine is llguidance (MIT, no dependencies): measured on the SmolLM2 tokenizer it built
a schema's matcher in ~2 ms (xgrammar 15 ms, outlines-core 110 ms) and computed a step's mask in
~0.1 ms (docs/serve.md has the numbers). The tokenizer's conversion (~1 s) is done once per
tokenizer, a schema's matcher once per distinct schema (a small LRU); each row gets a deep copy.
End-of-turn (the tokenizer's eos) is allowed exactly when the grammar may end.

Run as:
    make = constraint_factory(tokenizer, vocab_size, {"type": "json_object", "json_schema": None})
    c = make()                        # one per row
    logits = c.mask(logits)           # 1-D float32; disallowed tokens at -inf
    c.accept(token); c.done()         # done: the grammar has ended (after eos)
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from smolora.serve.openai import APIError

CACHE_SIZE = 32  # distinct schemas kept compiled
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
# Compact separators and no free whitespace: a model (a random one above all) could otherwise pad
# an answer with whitespace until max_tokens.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

_lock = threading.Lock()
_tokenizers: dict[tuple[int, int], Any] = {}  # (id(tokenizer), vocab) -> (tokenizer, LLTokenizer)
_matchers: OrderedDict[tuple[int, int, str], Any] = OrderedDict()  # (.., grammar) -> fresh LLMatcher


class Constraint:
    """One row's grammar state: a matcher that has seen every token the row emitted."""

    def __init__(self, matcher: Any, vocab_size: int):
        self.matcher, self.vocab_size = matcher, vocab_size
        self.bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        self.matcher.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)
        allowed = np.unpackbits(self.bits.view(np.uint8), bitorder="little")[: logits.shape[-1]]
        if not allowed.any():  # the matcher failed (a bug, not the client's): do not leave a row of -inf
            return logits
        keep = torch.from_numpy(allowed.astype(bool)).to(logits.device)
        return logits.masked_fill_(~keep, float("-inf"))

    def accept(self, token: int) -> None:
        self.matcher.consume_token(token)

    def done(self) -> bool:
        return self.matcher.is_stopped() or self.matcher.is_error()


def constraint_factory(
    tokenizer: Any, vocab_size: int, response_format: dict | None, tool_schema: dict | None = None
) -> Callable[[], Constraint] | None:
    """A maker of fresh per-row constraints for a request, or None when nothing constrains it;
    a forced tool call (tool_schema) wins over response_format. Raises APIError 400 on a bad schema."""
    if tool_schema is not None:
        grammar = tool_call_grammar(tool_schema)
        param = "tools"  # the schema is the tools' parameters
    elif response_format is not None and response_format.get("type") in ("json_object", "json_schema"):
        grammar = json_grammar(response_format)
        param = "response_format"
    else:
        return None
    template = compiled(tokenizer, vocab_size, grammar, param)
    return lambda: Constraint(template.deep_copy(), vocab_size)


def json_grammar(response_format: dict) -> str:
    import llguidance

    if response_format["type"] == "json_object":
        schema: Any = {"type": "object"}
    else:
        spec = response_format.get("json_schema")
        if not spec or spec.get("schema") is None:
            raise APIError(
                400,
                "response_format type json_schema needs json_schema.schema (a JSON Schema object)",
                "response_format",
            )
        schema = spec["schema"]
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_OPTIONS)
    except (TypeError, ValueError) as e:
        raise APIError(
            400, f"response_format: json_schema.schema is not usable: {e}", "response_format"
        ) from None


def tool_call_grammar(tool_schema: dict) -> str:
    """`<tool_call>{"name": NAME, "arguments": {...}}</tool_call>`, the body matching tool_schema
    (tools.tool_schema: one call's JSON schema, an anyOf when several functions may be called)."""
    import llguidance

    schema = {**tool_schema, "x-guidance": JSON_OPTIONS}
    lark = f'start: "{TOOL_OPEN}" call "{TOOL_CLOSE}"\ncall: %json {json.dumps(schema)}\n'
    return llguidance.LLMatcher.grammar_from_lark(lark)


def compiled(tokenizer: Any, vocab_size: int, grammar: str, param: str) -> Any:
    """A fresh matcher of this grammar (built once per distinct grammar), to deep-copy per row."""
    import llguidance

    key = (id(tokenizer), vocab_size, grammar)
    with _lock:
        ll_tokenizer = tokenizer_of(tokenizer, vocab_size)  # first: a new tokenizer drops old matchers
        if key in _matchers:
            _matchers.move_to_end(key)
            return _matchers[key]
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, ll_tokenizer)
    if is_error:  # one line: a regex error spans several ("regex parse error:\n (\n ^\nerror: ...")
        said = " ".join(" ".join(messages).split())[:300] if messages else "invalid"
        raise APIError(400, f"{param}: the JSON schema cannot be used: {said}", param)
    matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
    if matcher.is_error():
        raise APIError(400, f"{param}: the JSON schema cannot be used: {matcher.get_error()}", param)
    with _lock:
        _matchers[key] = matcher
        while len(_matchers) > CACHE_SIZE:
            _matchers.popitem(last=False)
    return matcher


def tokenizer_of(tokenizer: Any, vocab_size: int) -> Any:
    """llguidance's view of a tokenizer (about a second to build, so once; call with _lock held)."""
    import llguidance.hf

    key = (id(tokenizer), vocab_size)
    if key not in _tokenizers:
        # one server serves one tokenizer; tests make many. The matchers go too: they are keyed by
        # id(tokenizer), and a freed tokenizer's id can be reused by the next one.
        _tokenizers.clear()
        _matchers.clear()
        _tokenizers[key] = (tokenizer, llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size))
    return _tokenizers[key][1]
