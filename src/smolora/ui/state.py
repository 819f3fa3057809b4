"""What the UI's routes share, on `app.state.ui`: the workspace, its job queue, the jobs it started.

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

from smolora.ui import jobs, queued, runs
from smolora.ui.workspace import safe_path


@dataclass
class UIState:
    workspace: Path  # resolved; every browser path lies inside it
    allow_remote_code: bool = False  # `smolora ui --allow-remote-code`
    workers: int = 1  # `smolora ui --jobs-workers`: training jobs run at once from this UI
    queue: Path | None = None  # the training queue's directory (ui/queued.py); made if not given
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> job (eval, export, pull)
    handle: dict[str, Any] | None = None  # the queue's worker threads (queue/worker.py)
    seen: dict[str, list] = field(default_factory=dict)  # job id -> (time, step) for the Train view's ETA
    # Held from the 409 check until the new job is queued: two clicks on Start arrive as two
    # requests in two threadpool threads, and both must not pass the check.
    starting: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.queue is None:  # created here: every route may read it before a job was queued
            self.queue = queued.queue_root(self.workspace)


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
    """runs/ of the workspace, and the output.dir of every run the queue lists."""
    return sorted({ui.workspace / "runs", *queued.run_parents(ui.queue, ui.workspace)})


def running_runs(ui: UIState) -> set[str]:
    return queued.running_runs(ui.queue)


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    return {**jobs.job_state(job), **{k: str(job[k]) for k in ("run", "target") if k in job}}


def add_job(ui: UIState, job: dict[str, Any]) -> dict[str, Any]:
    ui.jobs[job["id"]] = job
    return job_view(job)
