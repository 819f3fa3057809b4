"""The Train view's API: the config schema, the form's preview, start / stop / status, and resources.

Run as:
    app.include_router(router)    # POST /api/train/start {"overrides": ["model.name=tiny"]}
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from smolora.ui import jobs, resources, training
from smolora.ui.requests import Overrides, StartRequest
from smolora.ui.state import UI, add_job

router = APIRouter()


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
    busy = HTTPException(409, "a training run is already going; stop it first")
    if not ui.starting.acquire(blocking=False):
        raise busy  # another Start is being set up right now
    try:
        current = ui.train
        if current is not None and current["proc"].poll() is None:
            raise busy
        job = training.start_training(req.overrides, ui.workspace, req.resume, ui.allow_remote_code)
        ui.train = job
        return add_job(ui, job)
    finally:
        ui.starting.release()


@router.post("/api/train/stop")
def train_stop(ui: UI) -> dict[str, Any]:
    job = ui.train
    if job is None:
        raise HTTPException(404, "no training run to stop")
    jobs.stop_job(job)
    return jobs.job_state(job)


@router.get("/api/train/status")
def train_status(ui: UI, since: int = 0) -> dict[str, Any]:
    job = ui.train
    if job is None:
        return {"state": "idle"}
    return {**jobs.job_state(job), **training.progress(job, since)}


@router.get("/api/system")
def system(ui: UI) -> dict[str, Any]:
    job = ui.train
    pid = job["proc"].pid if job is not None and job["proc"].poll() is None else None
    return resources.snapshot(pid)
