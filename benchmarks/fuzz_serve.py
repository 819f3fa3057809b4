"""Fuzz `smolora serve` with schemathesis (a tool nobody here wrote) against its own /openapi.json.

Starts the server on a run or model, runs `st run` (every phase: schema examples, coverage
of boundaries and wrong types, random fuzzing, stateful links, in positive and negative modes)
with the not_a_server_error check, then counts what came back from schemathesis's NDJSON
report: operations, requests, status codes, and every 5xx or dropped request. Exit code 1 on
any 5xx, a dropped request, or a dead server. A bounded run of the same lives in
tests/test_serve_fuzz.py.

Run as:
    python benchmarks/fuzz_serve.py runs/quickstart --max-examples 200
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import start_server  # noqa: E402

KEY = "fuzz-key"
# Short answers keep the run about the HTTP surface, not decoding speed.
SERVER_FLAGS = ["--api-key", KEY, "--max-tokens-cap", "8", "--rate-limit", "0", "--request-timeout", "60"]


def st_command(url: str, report: Path, max_examples: int, seed: int | None = None) -> list[str]:
    """`st run` against the server's schema, authenticated, every phase, only the 5xx check."""
    st = Path(sys.executable).with_name("st")
    cmd = [str(st), "run", f"{url}/openapi.json", "--checks", "not_a_server_error"]
    cmd += ["--max-examples", str(max_examples), "--request-timeout", "60", "--workers", "1"]
    cmd += ["--header", f"Authorization: Bearer {KEY}", "--no-color", "--generation-database", "none"]
    cmd += ["--report", "ndjson", "--report-ndjson-path", str(report)]
    return cmd + (["--seed", str(seed)] if seed is not None else [])


def summarize(report: Path) -> dict[str, Any]:
    """Operations, requests and status codes from schemathesis's NDJSON events."""
    operations, statuses, failures = set(), collections.Counter(), []
    for line in report.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished["recorder"]
        if (
            recorder["label"].partition(" ")[2].startswith("/")
        ):  # "POST /v1/completions", not "Stateful tests"
            operations.add(recorder["label"])
        for interaction in recorder.get("interactions", {}).values():
            request, response = interaction["request"], interaction.get("response")
            status = response["status_code"] if response else "no response"
            statuses[status] += 1
            if status == "no response" or status >= 500:
                failures.append(f"{request['method']} {request['uri']} -> {status}")
    return {
        "operations": sorted(operations),
        "requests": sum(statuses.values()),
        "statuses": dict(sorted(statuses.items(), key=str)),
        "server_errors": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="run directory or model path to serve")
    parser.add_argument("--max-examples", type=int, default=200, help="test cases per operation and phase")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fuzz-serve-"))
    os.chdir(work)  # schemathesis writes its report folder into the working directory
    proc, url = start_server(args.model, 8, args.threads, work / "server.log", SERVER_FLAGS)
    started = time.monotonic()
    try:
        st = subprocess.run(
            st_command(url, work / "events.ndjson", args.max_examples, args.seed), check=False
        )
        alive = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    summary = summarize(work / "events.ndjson")
    summary |= {
        "st_exit_code": st.returncode,
        "server_alive": alive,
        "seconds": round(time.monotonic() - started),
    }
    print(json.dumps(summary, indent=2))
    sys.exit(0 if st.returncode == 0 and alive and not summary["server_errors"] else 1)


if __name__ == "__main__":
    main()
