"""The Runs view's server side: `smolora.runs` (behind `smolora runs list/compare`) plus what a
browser needs on top: is the run training right now, is there an adapter, an eval report,
the diagnosis lines and best checkpoint, and the loss curves to draw.

Run as:
    for run in list_runs(Path("runs"), running=set()):
        print(run["name"], run["status"], run["final_loss"])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smolora.eval.diagnose import best_line, diagnosis_lines, stored_diagnosis
from smolora.runs import ADAPTER_DIR, ADAPTER_META, METRICS_FILE, compare_runs, find_runs, is_run, run_summary
from smolora.ui.training import read_metrics


def summarize(run: Path, running: set[str]) -> dict[str, Any]:
    s = run_summary(run)
    if str(run.resolve()) in running:
        s["status"] = "running"
    s["has_adapter"] = (run / ADAPTER_DIR / ADAPTER_META).exists()
    s["has_report"] = (run / "eval" / "report.html").exists()
    s["modified"] = max((p.stat().st_mtime for p in run.iterdir()), default=0.0)
    stored = stored_diagnosis(run)  # what training (and `smolora eval`) found, one line each
    s["diagnosis"], s["best"] = diagnosis_lines(stored["diagnosis"]), best_line(stored["best"])
    return s


def list_runs(root: Path, running: set[str] | None = None) -> list[dict[str, Any]]:
    return [summarize(r, running or set()) for r in find_runs(root) if r != root]


def compare(a: Path, b: Path) -> dict[str, Any]:
    """compare_runs' config and metric differences, plus both loss curves for the chart."""
    out = compare_runs(a, b)
    out["names"] = {"a": a.name, "b": b.name}
    out["curves"] = {"a": read_metrics(a / METRICS_FILE), "b": read_metrics(b / METRICS_FILE)}
    return out


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (json.JSONDecodeError, OSError):
        return None


__all__ = ["compare", "is_run", "list_runs", "read_json", "summarize"]
