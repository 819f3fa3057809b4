"""Soak test for `smolora serve`: N requests at a fixed concurrency, a share of them malformed.

Every request must get its answer: 200 for the well-formed ones, a 4xx OpenAI-style error for
the malformed ones (broken JSON, binary junk, an oversized body, an unknown model, max_tokens
over the cap, out-of-range parameters, wrong types), 429 when the per-client rate limit bites,
and never a 5xx, a dropped connection or a dead server. Reports the status-code counts and
the latency of the well-formed requests.

Run as:
    python benchmarks/serve_soak.py runs/quickstart --n 1000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import PROMPTS, start_server  # noqa: E402


def bodies(model: str, n: int, bad_share: float, max_tokens: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """(kind, body) pairs: 'ok' or the name of the mistake."""
    rng = random.Random(seed)

    def ok(**extra: Any) -> dict[str, Any]:
        prompt = rng.choice(PROMPTS)
        return {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            **extra,
        }

    bad = {
        "broken_json": lambda: b'{"model": "x", "messages": [',
        "binary_junk": lambda: bytes(rng.randrange(256) for _ in range(64)),
        "oversized_body": lambda: json.dumps(ok(padding="z" * 2_000_000)).encode(),
        "unknown_model": lambda: json.dumps({**ok(), "model": "no-such-model"}).encode(),
        "max_tokens_over_cap": lambda: json.dumps(ok(max_tokens=100_000)).encode(),
        "temperature_out_of_range": lambda: json.dumps(ok(temperature=9)).encode(),
        "messages_not_a_list": lambda: json.dumps({"model": model, "messages": "hi"}).encode(),
        "empty_messages": lambda: json.dumps({"model": model, "messages": []}).encode(),
        "wrong_role": lambda: json.dumps(
            {"model": model, "messages": [{"role": "robot", "content": "x"}]}
        ).encode(),
        "array_body": lambda: b"[1, 2, 3]",
    }
    out = []
    for _ in range(n):
        if rng.random() < bad_share:
            kind = rng.choice(sorted(bad))
            out.append((kind, bad[kind]()))
        else:
            out.append(("ok", json.dumps(ok(stream=rng.random() < 0.3)).encode()))
    return out


async def soak(url: str, work: list[tuple[str, bytes]], concurrency: int) -> dict[str, Any]:
    codes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    latencies: list[float] = []
    queue = iter(work)

    async def client(http: httpx.AsyncClient) -> None:
        for kind, body in queue:
            start = time.perf_counter()
            try:
                r = await http.post(
                    f"{url}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
                )
                code: int | str = r.status_code
            except httpx.HTTPError as e:  # a dropped connection counts as a failure
                code = type(e).__name__
            codes[kind][code] += 1
            if kind == "ok" and code == 200:
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    latencies.sort()
    flat = collections.Counter()
    for c in codes.values():
        flat.update(c)
    return {
        "requests": len(work),
        "wall_s": round(wall, 1),
        "by_kind": {k: dict(v) for k, v in sorted(codes.items())},
        "status_counts": {str(k): v for k, v in sorted(flat.items(), key=str)},
        "server_errors_5xx": sum(v for k, v in flat.items() if isinstance(k, int) and k >= 500),
        "dropped": sum(v for k, v in flat.items() if not isinstance(k, int)),
        "ok_p50_latency_s": round(statistics.median(latencies), 3) if latencies else None,
        "ok_p99_latency_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3)
        if latencies
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_path", help="Run directory or model name to serve.")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bad-share", type=float, default=0.3, help="Share of malformed requests.")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--rate-limit", type=float, default=600, help="Server --rate-limit (per minute).")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        extra = ["--rate-limit", str(args.rate_limit), "--max-tokens-cap", "256"]
        proc, url = start_server(args.model_path, args.concurrency, args.threads, log, extra)
        try:
            model = httpx.get(f"{url}/health", timeout=10).json()["models"][-1]
            result = asyncio.run(
                soak(url, bodies(model, args.n, args.bad_share, args.max_tokens), args.concurrency)
            )
            alive = proc.poll() is None and httpx.get(f"{url}/health", timeout=10).status_code == 200
            result.update(model=model, concurrency=args.concurrency, server_alive_after=alive)
            result["server_log_tracebacks"] = log.read_text().count("Traceback")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    sys.exit(0 if result["server_errors_5xx"] == 0 and result["dropped"] == 0 and alive else 1)


if __name__ == "__main__":
    main()
