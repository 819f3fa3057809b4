"""The jobs the UI started (eval, export, pull; training too): list, one job with its log, stop.

Run as:
    app.include_router(router)    # GET /api/jobs?kind=export
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from smolora.ui import jobs
from smolora.ui.state import UI, job_view

router = APIRouter()


@router.get("/api/jobs")
def jobs_list(ui: UI, kind: str | None = None) -> dict[str, Any]:
    items = [job_view(j) for j in ui.jobs.values() if kind in (None, j["kind"])]
    return {"jobs": sorted(items, key=lambda j: -j["started"])}


@router.get("/api/jobs/{job_id}")
def job_get(job_id: str, ui: UI) -> dict[str, Any]:
    if job_id not in ui.jobs:
        raise HTTPException(404, "no such job")
    job = ui.jobs[job_id]
    return {**job_view(job), "log_tail": jobs.log_tail(job["log"])}


@router.post("/api/jobs/{job_id}/stop")
def job_stop(job_id: str, ui: UI) -> dict[str, Any]:
    if job_id not in ui.jobs:
        raise HTTPException(404, "no such job")
    jobs.stop_job(ui.jobs[job_id])
    return job_view(ui.jobs[job_id])
