"""Load test for `smolora serve`: N chat requests at a fixed concurrency, batched vs one at a time.

Starts the server twice as a subprocess (`--max-batch CONCURRENCY`, then `--max-batch 1`),
sends the same requests through httpx from CONCURRENCY closed-loop clients, and reports
throughput (requests/s, generated tokens/s) and p50/p99 latency per mode. Greedy decoding
with a fixed max_tokens keeps the work comparable between the two modes.

Run as:
    python benchmarks/serve_load.py runs/quickstart --n 200 --concurrency 8
    # or from Python: run_serve_bench("runs/quickstart", n=200, concurrency=8)
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


async def fire(url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict[str, Any]:
    """n requests from `concurrency` clients that each send the next one when the last returns."""
    latencies: list[float] = []
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
            }
            start = time.perf_counter()
            r = await http.post(f"{url}/v1/chat/completions", json=body)
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)
            tokens += r.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": n,
        "wall_s": round(wall, 2),
        "requests_per_s": round(n / wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "completion_tokens": tokens,
        "p50_latency_s": round(statistics.median(latencies), 3),
        "p99_latency_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
    }


def run_serve_bench(
    model_path: str | Path,
    n: int = 200,
    concurrency: int = 8,
    max_tokens: int = 32,
    threads: int | None = None,
) -> dict[str, Any]:
    """Serve `model_path` batched and one-at-a-time; return both measurements and the speed-up."""
    result: dict[str, Any] = {
        "model": str(model_path),
        "n": n,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for mode, max_batch in (("batched", concurrency), ("one_at_a_time", 1)):
            proc, url = start_server(str(model_path), max_batch, threads, Path(tmp) / f"{mode}.log")
            try:
                served = httpx.get(f"{url}/health", timeout=10).json()
                model = served["models"][-1]  # the run's adapter (the base when serving a plain model)
                asyncio.run(fire(url, model, min(concurrency, n), concurrency, max_tokens))  # warm-up
                before = httpx.get(f"{url}/health", timeout=10).json()["batches"]
                result[mode] = {
                    **asyncio.run(fire(url, model, n, concurrency, max_tokens)),
                    "max_batch": max_batch,
                }
                # generate() calls the measured requests took: n one at a time, ~n/concurrency batched
                result[mode]["batches"] = httpx.get(f"{url}/health", timeout=10).json()["batches"] - before
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    result["model_name"] = model
    result["speedup"] = round(
        result["batched"]["requests_per_s"] / result["one_at_a_time"]["requests_per_s"], 2
    )
    result["device"] = served.get("device")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_path", help="Run directory or model name to serve.")
    parser.add_argument("--n", type=int, default=200, help="Requests per mode.")
    parser.add_argument("--concurrency", type=int, default=8, help="Clients sending at the same time.")
    parser.add_argument("--max-tokens", type=int, default=32, help="Tokens generated per request.")
    parser.add_argument("--threads", type=int, default=None, help="Server CPU threads.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the result here.")
    args = parser.parse_args()
    result = run_serve_bench(args.model_path, args.n, args.concurrency, args.max_tokens, args.threads)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
