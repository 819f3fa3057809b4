"""The server's continuous-batching engine against transformers' own (`generate_batch`, a paged KV
cache with its own scheduler) and against one static `generate()` call, in one process, on the same
greedy prompts: generated tokens per second, and whether the texts agree.

The issue asked to measure the two continuous schedulers and keep the faster; this is that
measurement (docs/benchmarks.md has the numbers and the command).

Run as:
    python benchmarks/engine_compare.py runs/quickstart --requests 32 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import PROMPTS  # noqa: E402


class NoLoop:
    """Stands in for the event loop the engine streams to: this benchmark reads the jobs directly."""

    def call_soon_threadsafe(self, *args: Any) -> None:
        pass


def prompts_of(served: Any, n: int) -> list[list[int]]:
    from smolora.serve.jobs import chat_prompt_ids
    from smolora.serve.schema import ChatRequest

    return [
        chat_prompt_ids(
            served,
            served.default,
            ChatRequest(messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]),
        )
        for i in range(n)
    ]


def ours(served: Any, prompts: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
    from smolora.serve.batching import Job
    from smolora.serve.engine import Engine

    served.max_batch = len(prompts)
    engine = Engine(served)
    jobs = [
        Job(served.default, ids, max_tokens, 0.0, 1.0, [], False, loop=NoLoop(), events=asyncio.Queue())  # type: ignore[arg-type]
        for ids in prompts
    ]
    start = time.perf_counter()
    engine.iterate(jobs)
    while engine.lanes:
        engine.iterate([])
    return time.perf_counter() - start, [j.out_ids for j in jobs]


def static(served: Any, prompts: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
    from smolora.serve.batching import Job, run_batch

    jobs = [
        Job(served.default, ids, max_tokens, 0.0, 1.0, [], False, loop=NoLoop(), events=asyncio.Queue())  # type: ignore[arg-type]
        for ids in prompts
    ]
    start = time.perf_counter()
    run_batch(served, jobs)
    return time.perf_counter() - start, [j.out_ids for j in jobs]


def transformers_cb(served: Any, prompts: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
    from transformers import GenerationConfig

    from smolora.generate import end_token_ids

    model = served.model
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = GenerationConfig(
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=end_token_ids(served.tokenizer),
        pad_token_id=served.tokenizer.pad_token_id,
    )
    start = time.perf_counter()
    out = inner.generate_batch(inputs=prompts, generation_config=config, max_new_tokens=max_tokens)
    wall = time.perf_counter() - start
    by_id = sorted(out.values(), key=lambda r: int(str(r.request_id).rsplit("_", 1)[-1]))
    eos = set(end_token_ids(served.tokenizer))
    return wall, [[t for t in r.generated_tokens if t not in eos] for r in by_id]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "model", help="Model name or directory (the base model: transformers' engine takes no adapter)."
    )
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    from smolora.model.load import physical_cores
    from smolora.serve.load import load_served

    torch.set_num_threads(args.threads or physical_cores())
    served = load_served(args.model, device="cpu")
    prompts = prompts_of(served, args.requests)
    result: dict[str, Any] = {"model": args.model, "requests": args.requests, "max_tokens": args.max_tokens}
    texts = {}
    for name, fn in (
        ("static_generate", static),
        ("smolora_continuous", ours),
        ("transformers_generate_batch", transformers_cb),
    ):
        try:
            fn(served, prompts[:2], 4)  # warm-up
            wall, out = fn(served, prompts, args.max_tokens)
        except Exception as e:  # report what failed instead of losing the other rows
            result[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        tokens = sum(len(o) for o in out)
        texts[name] = out
        result[name] = {"wall_s": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 1)}
    base = texts.get("static_generate")
    for name, out in texts.items():
        result[name]["same_tokens_as_static"] = sum(a == b for a, b in zip(out, base or [], strict=False))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
