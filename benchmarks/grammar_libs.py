"""Which grammar library the server's `response_format` uses: xgrammar, llguidance and
outlines-core on the same tokenizer and JSON schema, timed for compiling the schema and for one
decoding step's token mask (the cost every constrained row pays per token).

Run as:
    python benchmarks/grammar_libs.py ~/.cache/smolora/models/smollm2-135m --steps 50
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "product": {"type": "string"},
        "qty": {"type": "integer"},
        "city": {"type": "string", "enum": ["Lisbon", "Porto", "Paris"]},
    },
    "required": ["product", "qty", "city"],
}
ANSWER = '{"product": "oak lamp", "qty": 12, "city": "Lisbon"}'


def xgrammar_steps(tokenizer: Any, vocab: int, ids: list[int]) -> tuple[float, float, float]:
    import xgrammar as xgr

    start = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    setup_s, start = time.perf_counter() - start, time.perf_counter()
    compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA))
    compile_s = time.perf_counter() - start
    matcher = xgr.GrammarMatcher(compiled)
    mask = xgr.allocate_token_bitmask(1, vocab)
    logits = torch.zeros(vocab)
    start = time.perf_counter()
    for token in ids:
        matcher.fill_next_token_bitmask(mask)
        xgr.apply_token_bitmask_inplace(logits, mask[0])
        assert matcher.accept_token(token)
    return setup_s, compile_s, (time.perf_counter() - start) / len(ids)


def llguidance_steps(tokenizer: Any, vocab: int, ids: list[int]) -> tuple[float, float, float]:
    """The server's own path (smolora.serve.grammar): its mask unpacks the bitmask with numpy, not
    llguidance.torch's torch.compile kernel (seconds of warm-up and a C compiler on first use)."""
    import llguidance
    import llguidance.hf

    from smolora.serve.grammar import JSON_OPTIONS, Constraint

    start = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    setup_s, start = time.perf_counter() - start, time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA), overrides=JSON_OPTIONS)
    constraint = Constraint(llguidance.LLMatcher(lltok, grammar), vocab)
    compile_s = time.perf_counter() - start
    logits = torch.zeros(vocab)
    start = time.perf_counter()
    for token in ids:
        constraint.mask(logits)
        constraint.accept(token)
        assert not constraint.matcher.is_error()
    return setup_s, compile_s, (time.perf_counter() - start) / len(ids)


def outlines_steps(tokenizer: Any, vocab: int, ids: list[int]) -> tuple[float, float, float]:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    start = time.perf_counter()
    eos = tokenizer.eos_token_id
    tokens: dict[str, list[int]] = {}
    for token, i in tokenizer.get_vocab().items():
        if i != eos:
            tokens.setdefault(tokenizer.convert_tokens_to_string([token]), []).append(i)
    setup_s, start = time.perf_counter() - start, time.perf_counter()
    index = Index(build_regex_from_schema(json.dumps(SCHEMA)), Vocabulary(eos, tokens))
    compile_s = time.perf_counter() - start
    guide = Guide(index)
    logits = torch.zeros(vocab)
    start = time.perf_counter()
    for token in ids:
        allowed = torch.tensor(guide.get_tokens())
        logits.index_fill_(0, allowed, 0.0)
        guide.advance(token)
    return setup_s, compile_s, (time.perf_counter() - start) / len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tokenizer", help="A local model or tokenizer directory.")
    args = parser.parse_args()
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    vocab = AutoConfig.from_pretrained(args.tokenizer).vocab_size
    ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    result: dict[str, Any] = {"tokenizer": args.tokenizer, "vocab": vocab, "answer_tokens": len(ids)}
    for name, fn in (
        ("xgrammar", xgrammar_steps),
        ("llguidance", llguidance_steps),
        ("outlines-core", outlines_steps),
    ):
        try:
            setup_s, compile_s, step_s = fn(tokenizer, vocab, ids)
            result[name] = {
                "tokenizer_setup_ms": round(setup_s * 1000, 1),
                "compile_ms": round(compile_s * 1000, 1),
                "mask_ms_per_token": round(step_s * 1000, 3),
            }
        except Exception as e:  # a library that fails here is reported, not hidden
            result[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
