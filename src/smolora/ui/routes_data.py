"""The Data view's API: the workspace's data files, uploads, and `inspect` (in a capped worker).

Run as:
    app.include_router(router)    # POST /api/data/inspect {"path": "qa.jsonl", "overrides": [...]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from smolora.ui import training
from smolora.ui.requests import InspectRequest
from smolora.ui.state import UI
from smolora.ui.workspace import check_data_path, list_data_files, relative, safe_path, save_upload

router = APIRouter()


@router.get("/api/files")
def files(ui: UI) -> dict[str, Any]:
    return {"files": list_data_files(ui.workspace)}


@router.post("/api/upload")
async def upload(request: Request, path: str, ui: UI) -> dict[str, Any]:
    target = await save_upload(ui.workspace, path, request.stream())
    return {"path": relative(ui.workspace, target), "size": target.stat().st_size}


@router.post("/api/data/inspect")
def data_inspect(req: InspectRequest, ui: UI) -> dict[str, Any]:
    from smolora.ui.inspect import inspect_in_worker

    workspace = ui.workspace
    p = safe_path(workspace, req.path)
    if not p.exists():
        raise HTTPException(404, f"{req.path}: no such file in the workspace")
    check_data_path(workspace, str(p))  # a directory's files, too, stay inside
    training.refuse_remote_code(req.overrides, ui.allow_remote_code)
    report = inspect_in_worker(p, req.overrides, workspace, req.examples)
    report["path"] = relative(workspace, p)
    report["files"] = [relative(workspace, Path(f)) for f in report.get("files", [])]
    return report
