"""The jobs the UI runs: training jobs from the workspace's queue, and the eval, export and pull
subprocesses it started; list, one job with its log (and a training job's events), stop.

Training jobs (ids `ftjob-...`) live in the queue (ui/queued.py), so a UI started again lists
them; stop cancels one there (queued: at once; running: after its step, a checkpoint kept).

Run as:
    app.include_router(router)    # GET /api/jobs?kind=train
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from smolora.ui import jobs, queued
from smolora.ui.state import UI, job_view

router = APIRouter()


@router.get("/api/jobs")
def jobs_list(ui: UI, kind: str | None = None) -> dict[str, Any]:
    """Newest first: the queue's newest training jobs (queued, running, past) and this UI's others."""
    items = [job_view(j) for j in ui.jobs.values() if kind in (None, j["kind"])]
    if kind in (None, "train"):
        items += queued.list_views(ui.queue, ui.workspace)
    return {"jobs": sorted(items, key=lambda j: -(j.get("created") or j["started"]))}


@router.get("/api/jobs/{job_id}")
def job_get(job_id: str, ui: UI) -> dict[str, Any]:
    if queued.is_queue_id(job_id):
        return queued.detail(ui.queue, ui.workspace, queued.known_job(ui.queue, job_id))
    if job_id not in ui.jobs:
        raise HTTPException(404, "no such job")
    job = ui.jobs[job_id]
    return {**job_view(job), "log_tail": jobs.log_tail(job["log"])}


@router.post("/api/jobs/{job_id}/stop")
def job_stop(job_id: str, ui: UI) -> dict[str, Any]:
    """Stop a job; a training job is cancelled in the queue (the Runs view's and Train view's Stop)."""
    if queued.is_queue_id(job_id):
        return queued.cancel(ui.queue, ui.workspace, job_id)
    if job_id not in ui.jobs:
        raise HTTPException(404, "no such job")
    jobs.stop_job(ui.jobs[job_id])
    return job_view(ui.jobs[job_id])
