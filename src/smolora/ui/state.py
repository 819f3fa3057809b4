"""What the UI's routes share, on `app.state.ui`: the workspace, the jobs it started, the training run.

A route takes it as a parameter typed `UI` (FastAPI hands it over from the app), so no
route is a closure over `create_app`'s locals. The helpers below are the few questions
several views ask of it: is this path a run, where do runs live, which are training now.

Run as:
    app.state.ui = UIState(Path(".").resolve())

    @router.get("/api/jobs")
    def jobs_list(ui: UI) -> dict: ...
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from smolora.ui import jobs, runs
from smolora.ui.workspace import safe_path


@dataclass
class UIState:
    workspace: Path  # resolved; every browser path lies inside it
    allow_remote_code: bool = False  # `smolora ui --allow-remote-code`
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> job (train, eval, export, pull)
    train: dict[str, Any] | None = None  # the training job the Train view follows
    # Held from the 409 check until the new job is recorded: two clicks on Start arrive as two
    # requests in two threadpool threads, and both must not pass the check.
    starting: threading.Lock = field(default_factory=threading.Lock)


async def ui_state(request: Request) -> UIState:
    return request.app.state.ui


UI = Annotated[UIState, Depends(ui_state)]


def run_path(ui: UIState, user_path: str) -> Path:
    """A run directory named by the browser: inside the workspace (else 403) and a run (else 404)."""
    p = safe_path(ui.workspace, user_path)
    if not runs.is_run(p):
        raise HTTPException(404, f"{user_path}: not a run directory")
    return p


def runs_dirs(ui: UIState) -> list[Path]:
    """runs/ of the workspace, and the output.dir of every run started from this UI."""
    dirs = {ui.workspace / "runs"}
    dirs.update(j["run_dir"].parent for j in ui.jobs.values() if j["kind"] == "train")
    return sorted(dirs)


def running_runs(ui: UIState) -> set[str]:
    return {
        str(j["run_dir"].resolve())
        for j in ui.jobs.values()
        if j["kind"] == "train" and j["proc"].poll() is None
    }


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    return {**jobs.job_state(job), **{k: str(job[k]) for k in ("run", "target") if k in job}}


def add_job(ui: UIState, job: dict[str, Any]) -> dict[str, Any]:
    ui.jobs[job["id"]] = job
    return job_view(job)
