"""Fuzz the web UI's HTTP API with schemathesis: every operation in its /openapi.json, with the token.

The UI app runs in this process (uvicorn in a thread) on a throw-away workspace and
SMOLORA_HOME; schemathesis (`st run`, a tool nobody here wrote) generates requests from the
schema and fails on any 5xx or a dropped connection. The workspace holds no data files and
no model, so no request can make the Data view convert the bundled model (minutes); the
paths, config overrides, uploads and job endpoints are all exercised.
tests/test_ui_fuzz.py runs this with a few examples per operation; the numbers in the docs
come from the default, longer run.

Run as:
    .venv/bin/python benchmarks/fuzz_ui.py                     # ~50 examples per operation
    .venv/bin/python benchmarks/fuzz_ui.py --max-examples 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

TOKEN = "fuzz-token-0123456789abcdef"


def count_report(path: Path) -> dict:
    """Operations, requests and their status codes from schemathesis' NDJSON event stream."""
    statuses: dict[str, int] = {}
    operations = 0
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if "LoadingFinished" in event:
            operations = event["LoadingFinished"]["statistic"]["operations"]["selected"]
        for step in event.get("ScenarioFinished", {}).get("recorder", {}).get("interactions", {}).values():
            code = str((step.get("response") or {}).get("status_code", "no response"))
            statuses[code] = statuses.get(code, 0) + 1
    return {
        "operations": operations,
        "requests": sum(statuses.values()),
        "statuses": dict(sorted(statuses.items())),
    }


def fuzz(max_examples: int, phases: str, seed: int, workdir: Path) -> dict:
    os.environ["SMOLORA_HOME"] = str(workdir / "home")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from smolora.ui import create_app
    from ui_server import serve_in_thread

    ws = workdir / "ws"
    ws.mkdir()
    report = workdir / "events.ndjson"
    with serve_in_thread(create_app(ws, token=TOKEN)) as url:
        command = [
            str(Path(sys.executable).parent / "st"),
            "run",
            f"{url}/openapi.json",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "-H",
            "X-SmoLoRA: 1",
            "--checks",
            "not_a_server_error",
            "--phases",
            phases,
            "--max-examples",
            str(max_examples),
            "--seed",
            str(seed),
            "--workers",
            "1",
            "--request-timeout",
            "120",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(report),
        ]
        start = time.time()
        run = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
        elapsed = time.time() - start
    from smolora.ui import inspect

    inspect.stop_worker()
    counts = count_report(report) if report.exists() else {"operations": 0, "requests": 0, "statuses": {}}
    return {
        "returncode": run.returncode,
        **counts,
        "test_cases": next((ln.strip() for ln in run.stdout.splitlines() if " generated, " in ln), ""),
        "server_errors": sum(n for code, n in counts["statuses"].items() if code.startswith("5")),
        "seconds": round(elapsed, 1),
        "command": " ".join(command[:1] + ["run", "URL/openapi.json", *command[3:]]).replace(TOKEN, "TOKEN"),
        "output_tail": run.stdout[-4000:] + run.stderr[-2000:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=50)
    parser.add_argument("--phases", default="examples,coverage,fuzzing")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuzz-ui-") as tmp:
        summary = fuzz(args.max_examples, args.phases, args.seed, Path(tmp))
    tail = summary.pop("output_tail")
    if summary["returncode"]:
        print(tail)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    sys.exit(0 if summary["returncode"] == 0 and summary["server_errors"] == 0 else 1)


if __name__ == "__main__":
    main()
