"""schemathesis (a fuzzer nobody here wrote) against the UI's own OpenAPI schema: no 5xx, no crash.

A bounded run of benchmarks/fuzz_ui.py: the UI app with a token on a throw-away workspace,
every operation, schemathesis' boundary cases (coverage phase) plus a few random ones each.
The long run's numbers are in the docs (`python benchmarks/fuzz_ui.py`).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "fuzz_ui.py"


@pytest.mark.skipif(importlib.util.find_spec("schemathesis") is None, reason="pip install -e '.[dev]'")
def test_schemathesis_finds_no_server_error_in_the_ui_api(tmp_path):
    out = tmp_path / "summary.json"
    args = ["--max-examples", "2", "--phases", "coverage,fuzzing", "--json", str(out)]
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp_path)
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["server_errors"] == 0 and run.returncode == 0, run.stdout[-5000:]
    assert summary["operations"] >= 25 and summary["requests"] > 100
    assert set(summary["statuses"]) - {"no response"} == set(summary["statuses"])  # no dropped connection
