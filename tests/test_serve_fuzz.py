"""schemathesis against a real `smolora serve` on the tiny model: no 5xx, no dropped request, no dead server.

A bounded run (few examples per operation, a fixed seed); the long one is benchmarks/fuzz_serve.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from helpers import start_server

pytest.importorskip("schemathesis")
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from fuzz_serve import SERVER_FLAGS, st_command, summarize  # noqa: E402


def test_schemathesis_finds_no_server_error(tmp_path_factory, tiny_run, tmp_path):
    proc, url, log = start_server(tiny_run, tmp_path_factory, *SERVER_FLAGS)
    try:
        report = tmp_path / "events.ndjson"
        # The timeout only stops a hung run from hanging the suite; each request has its own (60 s).
        st = subprocess.run(
            st_command(url, report, max_examples=5, seed=1),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
        paths = httpx.get(f"{url}/openapi.json", timeout=10).json()["paths"]
        operations = sum(len(methods) for methods in paths.values())  # every route the schema offers
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    summary = summarize(report)
    assert st.returncode == 0, st.stdout[-4000:]
    assert summary["server_errors"] == [], summary
    assert len(summary["operations"]) == operations and summary["requests"] > 100, summary
    assert summary["statuses"].get(200, 0) > 10, summary  # the fuzzer reached the model, not only 4xx
