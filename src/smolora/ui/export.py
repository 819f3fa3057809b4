"""The Export view's server side: the argv for `smolora merge` / `smolora export`, and the parity files.

Exports run as CLI subprocesses (a merge loads two models; the UI process stays free). Each
writes a `parity.json` beside what it wrote; the view shows the newest few.

Run as:
    argv = export_argv("gguf", "runs/quickstart", "q8_0", None)
    files = parity_files(Path("."), Path("runs/quickstart"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smolora.ui.jobs import cli_argv
from smolora.ui.runs import read_json
from smolora.ui.workspace import relative


def export_argv(fmt: str, run: str, quant: str, out: str | None) -> list[str]:
    args = ["merge", run] if fmt == "merge" else ["export", run, "--format", fmt, "--quant", quant]
    return cli_argv(*args, *(["--out", out] if out else []))


def parity_files(workspace: Path, run: Path, newest: int = 5) -> list[dict[str, Any]]:
    """The run's parity.json files, newest first, each with its path (as the browser shows it)."""
    found = sorted(run.rglob("parity.json"), key=lambda f: -f.stat().st_mtime)
    return [
        {"path": relative(workspace, f), "parity": read_json(f), "mtime": f.stat().st_mtime}
        for f in found[:newest]
    ]
