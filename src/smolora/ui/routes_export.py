"""The Export view's API: start `smolora merge` / `smolora export` on a run, and its parity checks.

Run as:
    app.include_router(router)    # POST /api/export {"run": "runs/a", "format": "gguf", "quant": "q8_0"}
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from smolora.ui import jobs
from smolora.ui.export import export_argv, parity_files
from smolora.ui.requests import ExportRequest
from smolora.ui.state import UI, add_job, run_path
from smolora.ui.workspace import relative, safe_path

router = APIRouter()


@router.post("/api/export")
def export(req: ExportRequest, ui: UI) -> dict[str, Any]:
    p = run_path(ui, req.run)
    run = relative(ui.workspace, p)
    out = relative(ui.workspace, safe_path(ui.workspace, req.out)) if req.out else None
    argv = export_argv(req.format, run, req.quant, out)
    log = p / f"export-{req.format}.console.log"
    return add_job(ui, jobs.start_job("export", argv, ui.workspace, log, run=run))


@router.get("/api/export/parity")
def parity(run: str, ui: UI) -> dict[str, Any]:
    return {"files": parity_files(ui.workspace, run_path(ui, run))}
