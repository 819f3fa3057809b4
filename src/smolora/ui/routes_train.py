"""The Train view's API: the config schema, the form's preview, start (queue) / stop / status, resources.

Start queues the run on the workspace's job queue (ui/queued.py); stop and status take the
job's id (`?job=ftjob-...`), else they mean the job training now, else the newest.

Run as:
    app.include_router(router)    # POST /api/train/start {"overrides": ["model.name=tiny"]}
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query

from smolora.ui import queued, resources, training
from smolora.ui.requests import Overrides, StartRequest
from smolora.ui.state import UI

router = APIRouter()
JobQuery = Query(None, max_length=64, description="a queue job id (ftjob-...); default: the one training")


@router.get("/api/schema")
def schema() -> dict[str, Any]:
    from smolora.config import RunConfig, config_schema

    return {"schema": config_schema(), "defaults": RunConfig().to_dict()}


@router.post("/api/config/preview")
def config_preview(req: Overrides, ui: UI) -> dict[str, Any]:
    view = training.preview(req.overrides, ui.workspace, ui.allow_remote_code)
    view.pop("data", None)
    return view


@router.post("/api/train/start")
def train_start(req: StartRequest, ui: UI) -> dict[str, Any]:
    """Queue the form's run; it trains when a worker is free (several may wait their turn)."""
    if not ui.starting.acquire(timeout=30):
        raise HTTPException(409, "another Start is still being queued; try again")
    try:  # held across the check and the insert: a double click queues one job, not two
        job = queued.submit_training(ui.queue, ui.workspace, req.overrides, req.resume, ui.allow_remote_code)
    finally:
        ui.starting.release()
    return queued.detail(ui.queue, ui.workspace, job)


@router.post("/api/train/stop")
def train_stop(ui: UI, job: str | None = JobQuery) -> dict[str, Any]:
    """Cancel the job the Train view follows (`job`, else the running one, else the newest)."""
    found = queued.followed(ui.queue, job)
    if found is None:
        raise HTTPException(404, "no training job to stop")
    return queued.cancel(ui.queue, ui.workspace, found["id"])


@router.get("/api/train/status")
def train_status(ui: UI, job: str | None = JobQuery, since: int = Query(0, ge=0)) -> dict[str, Any]:
    """One training job (`job`, else the running one, else the newest) with its run's progress."""
    found = queued.followed(ui.queue, job)
    if found is None:
        return {"state": "idle"}
    view = queued.detail(ui.queue, ui.workspace, found)
    # The chart's rows, tokens/s and ETA from the run's metrics.jsonl; the rest from the queue.
    out = {**view, **queued.progress_of(found, ui.seen.setdefault(found["id"], []), since)}
    out["run_dir"] = view["run_dir"]
    return out


@router.get("/api/system")
def system(ui: UI) -> dict[str, Any]:
    running = [j for j in queued.unfinished(ui.queue) if j["status"] == "running" and j["pid"]]
    return resources.snapshot(running[0]["pid"] if running else None)
