"""Load test for `smolora serve`: static vs continuous batching at several concurrencies.

For each concurrency (default 1, 8 and 32) and each mode (`--batching static`, `--batching
continuous`, both with `--max-batch` = the concurrency) it starts the server as a subprocess,
sends the same streamed greedy chat requests from that many closed-loop clients, and reports
throughput (requests/s, generated tokens/s), p50/p99 latency and p50/p99 time to first token.
Answers end at end-of-turn or max_tokens, so their lengths vary as real traffic does; with
`--fixed-length` every answer is max_tokens long (vLLM's `ignore_eos`), so p99/p50 measures
the scheduling alone (a short answer is not "faster" than a long one).

Run as:
    python benchmarks/serve_load.py runs/quickstart --concurrency 1,8,32 --max-tokens 32
    # or from Python: run_serve_bench("runs/quickstart", concurrency=[8])
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

PROMPTS = [
    "Extract the product and the city: order 3 lamps to Lisbon.",
    "What is the capital of France?",
    "Write a haiku about rivers.",
    "Summarize in one sentence: the meeting moved from Monday to Tuesday because the room was booked.",
    "List three fruits that are red.",
    "Translate to French: good morning.",
    "What is 12 times 7?",
    "Name a famous painting by Leonardo da Vinci.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model_path: str, max_batch: int, threads: int | None, log_path: Path, extra: list[str] | None = None
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "smolora.cli.main", "-q", "serve", str(model_path), "--port", str(port)]
    cmd += ["--max-batch", str(max_batch)] + (["--threads", str(threads)] if threads else [])
    cmd += extra or []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    while True:  # loading the model takes a few seconds; a dead process ends the wait
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)


async def fire(
    url: str, model: str, n: int, concurrency: int, max_tokens: int, fixed: bool = False
) -> dict[str, Any]:
    """n streamed requests from `concurrency` clients that each send the next one when the last
    returns; time to first token is when the first text arrives."""
    latencies: list[float] = []
    first_tokens: list[float] = []
    tokens = 0
    counter = iter(range(n))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for i in counter:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
                "ignore_eos": fixed,
            }
            start = time.perf_counter()
            first = None
            async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                        first = time.perf_counter() - start
                    if chunk.get("usage"):
                        tokens += chunk["usage"]["completion_tokens"]
            latencies.append(time.perf_counter() - start)
            first_tokens.append(first if first is not None else latencies[-1])

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "requests": n,
        "wall_s": round(wall, 2),
        "requests_per_s": round(n / wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "completion_tokens": tokens,
        "p50_latency_s": round(percentile(latencies, 0.5), 3),
        "p99_latency_s": round(percentile(latencies, 0.99), 3),
        "p50_ttft_s": round(percentile(first_tokens, 0.5), 3),
        "p99_ttft_s": round(percentile(first_tokens, 0.99), 3),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return statistics.median(ordered) if q == 0.5 else ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_serve_bench(
    model_path: str | Path,
    n: int | None = None,
    concurrency: int | list[int] = (1, 8, 32),
    max_tokens: int = 32,
    threads: int | None = None,
    modes: tuple[str, ...] = ("static", "continuous"),
    fixed: bool = False,
    server_args: list[str] | None = None,
) -> dict[str, Any]:
    """Serve `model_path` with each batching mode (`--max-batch` = the concurrency, so static
    batching gets its best case) and measure every concurrency: {"c8": {"static": {...}, ...}}.
    n defaults to 4 requests per client (at least 12); `server_args` go to every server started."""
    levels = [concurrency] if isinstance(concurrency, int) else list(concurrency)
    result: dict[str, Any] = {"model": str(model_path), "max_tokens": max_tokens, "levels": levels}
    result["fixed_length"] = fixed
    result["server_args"] = server_args or []
    with tempfile.TemporaryDirectory() as tmp:
        for c in levels:
            count = n or max(12, 4 * c)
            row: dict[str, Any] = {"n": count}
            for mode in modes:
                extra = ["--batching", mode, "--rate-limit", "0", *(server_args or [])]
                proc, url = start_server(str(model_path), c, threads, Path(tmp) / f"{mode}-{c}.log", extra)
                try:
                    served = httpx.get(f"{url}/health", timeout=10).json()
                    model = served["models"][-1]  # the run's adapter (the base when serving a plain model)
                    asyncio.run(fire(url, model, c, c, max_tokens, fixed))  # warm-up
                    before = httpx.get(f"{url}/health", timeout=10).json()["batches"]
                    row[mode] = asyncio.run(fire(url, model, count, c, max_tokens, fixed))
                    row[mode]["weight_layout"] = served.get("weight_layout")  # each server measures its own
                    # static: generate() calls; continuous: prefills (requests joining the batch)
                    row[mode]["batches"] = httpx.get(f"{url}/health", timeout=10).json()["batches"] - before
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
            if "static" in row and "continuous" in row:
                s, k = row["static"], row["continuous"]
                row["throughput_x"] = round(k["tokens_per_s"] / s["tokens_per_s"], 2)
                row["p99_over_p50"] = {
                    m: round(row[m]["p99_latency_s"] / row[m]["p50_latency_s"], 2) for m in modes
                }
            result[f"c{c}"] = row
    result["model_name"] = model
    result["device"] = served.get("device")
    return result


def table(result: dict[str, Any]) -> str:
    """The markdown table docs/benchmarks.md shows."""
    lines = [
        "| concurrency | batching | requests | tokens/s | p50 latency | p99 latency | p99/p50 | p50 TTFT | p99 TTFT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["levels"]:
        row = result[f"c{c}"]
        for mode in ("static", "continuous"):
            if mode in row:
                m = row[mode]
                ratio = m["p99_latency_s"] / m["p50_latency_s"]
                lines.append(
                    f"| {c} | {mode} | {m['requests']} | {m['tokens_per_s']} | {m['p50_latency_s']} s | "
                    f"{m['p99_latency_s']} s | {ratio:.2f} | {m['p50_ttft_s']} s | {m['p99_ttft_s']} s |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_path", help="Run directory or model name to serve.")
    parser.add_argument(
        "--n", type=int, default=None, help="Requests per mode and level (default 4 per client)."
    )
    parser.add_argument(
        "--concurrency", default="1,8,32", help="Clients sending at the same time, comma-separated levels."
    )
    parser.add_argument("--max-tokens", type=int, default=32, help="Tokens generated per request.")
    parser.add_argument("--threads", type=int, default=None, help="Server CPU threads.")
    parser.add_argument(
        "--fixed-length", action="store_true", help="Every answer max_tokens long (ignore_eos)."
    )
    parser.add_argument("--modes", default="static,continuous", help="Batching modes, comma-separated.")
    parser.add_argument(
        "--server-args", default="", help='More `smolora serve` options, e.g. "--weight-layout row".'
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the result here.")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    result = run_serve_bench(
        args.model_path,
        args.n,
        levels,
        args.max_tokens,
        args.threads,
        modes=tuple(args.modes.split(",")),
        fixed=args.fixed_length,
        server_args=shlex.split(args.server_args),
    )
    text = json.dumps(result, indent=2)
    print(text)
    print(table(result))
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
