"""The Models view's API: the model store's list, verify and remove, and `smolora models pull`.

Run as:
    app.include_router(router)    # POST /api/models/verify {"name": "tiny-llama"}
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from smolora.ui import jobs, models
from smolora.ui.requests import ModelName
from smolora.ui.state import UI, add_job
from smolora.ui.workspace import model_ref

router = APIRouter()


@router.get("/api/models")
def models_list() -> dict[str, Any]:
    from smolora.model.store import models_dir

    return {"models": models.list_models(), "store": str(models_dir())}


@router.post("/api/models/pull")
def models_pull(req: ModelName, ui: UI) -> dict[str, Any]:
    from smolora.runs import smolora_home

    name = model_ref(ui.workspace, req.name)
    log = smolora_home() / "ui-logs" / "pull.console.log"
    return add_job(ui, jobs.start_job("pull", models.pull_argv(name), ui.workspace, log, target=name))


@router.post("/api/models/verify")
def models_verify(req: ModelName) -> dict[str, Any]:
    return models.verify(req.name)


@router.post("/api/models/remove")
def models_remove(req: ModelName) -> dict[str, Any]:
    return models.remove(req.name)
