"""The Runs view's API: list, compare, loss curves, the eval report's files, and `smolora eval`.

Run as:
    app.include_router(router)    # GET /api/runs/compare?a=runs/a&b=runs/b
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from smolora.runs import METRICS_FILE
from smolora.ui import jobs, runs, training
from smolora.ui.requests import ModelName
from smolora.ui.state import UI, add_job, run_path, running_runs, runs_dirs
from smolora.ui.workspace import relative, safe_path

router = APIRouter()


@router.get("/api/runs")
def runs_list(ui: UI) -> dict[str, Any]:
    found = []
    for d in runs_dirs(ui):
        for r in runs.list_runs(d, running_runs(ui)):
            found.append({**r, "path": relative(ui.workspace, Path(r["path"]))})
    return {"runs": found}


@router.get("/api/runs/compare")
def runs_compare(a: str, b: str, ui: UI) -> dict[str, Any]:
    return runs.compare(run_path(ui, a), run_path(ui, b))


@router.get("/api/runs/metrics")
def run_metrics(run: str, ui: UI) -> dict[str, Any]:
    return {"rows": training.read_metrics(run_path(ui, run) / METRICS_FILE)}


@router.get("/api/runs/file/{file_path:path}")
def run_file(file_path: str, ui: UI) -> FileResponse:
    # Only what `smolora eval` writes (report.html and its images) is served from run dirs.
    p = safe_path(ui.workspace, file_path)
    if p.parent.name != "eval" or not runs.is_run(p.parent.parent) or not p.is_file():
        raise HTTPException(404, f"{file_path}: no such evaluation file")
    # Sandboxed: model outputs quoted in a report can never run script in the UI's origin.
    return FileResponse(p, headers={"Content-Security-Policy": "sandbox"})


@router.post("/api/runs/eval")
def run_eval(req: ModelName, ui: UI) -> dict[str, Any]:
    p = run_path(ui, req.name)
    run = relative(ui.workspace, p)
    job = jobs.start_job("eval", jobs.cli_argv("eval", run), ui.workspace, p / "eval-ui.console.log", run=run)
    return add_job(ui, job)
