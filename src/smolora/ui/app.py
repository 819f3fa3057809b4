"""The web UI's FastAPI app: the guard, one router per view, the static front end.

Training goes through the workspace's job queue (ui/queued.py: `<workspace>/.smolora/jobs`,
worker threads started with the app); evaluation, export and model pulls run the `smolora`
CLI as subprocesses (no shell); the Train form is validated by `build_config`; the Data
view calls `inspect_data`; Chat loads models with `load_for_inference`. Every path from the
browser goes through `safe_path` (inside the workspace, else 403). Who may call the API at
all (the launch token, the Host and Origin checks, anti-framing headers) is decided in
`guard.py`.

Each view's routes are in `routes_<view>.py` (page, train, data, runs, jobs, chat, export,
models); what they share (the workspace, the queue, the jobs) is a `UIState` on `app.state.ui`.

Run as:
    import uvicorn
    uvicorn.run(create_app(Path("."), token="a-long-random-string"), host="127.0.0.1", port=7860)
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from smolora.errors import SmoLoRAError
from smolora.redact import mask_text
from smolora.ui import (
    jobs,
    routes_chat,
    routes_data,
    routes_export,
    routes_jobs,
    routes_models,
    routes_page,
    routes_runs,
    routes_train,
)
from smolora.ui.guard import allowed_hosts as loopback_hosts
from smolora.ui.guard import guard, new_token
from smolora.ui.routes_page import STATIC
from smolora.ui.state import UIState
from smolora.ui.workspace import OutsideWorkspace

# The order of /openapi.json, which the fuzzer (benchmarks/fuzz_ui.py) walks; paths never overlap.
ROUTERS = [
    routes_page,
    routes_train,
    routes_data,
    routes_runs,
    routes_jobs,
    routes_chat,
    routes_export,
    routes_models,
]


def create_app(
    workspace: Path,
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
    allow_remote_code: bool = False,
    workers: int = 1,
) -> FastAPI:
    """The UI app; `token` (default: a fresh random one, in `app.state.token`) opens its API.

    `allowed_hosts`: Host names accepted (default: loopback only). `allow_remote_code`: let the
    browser set model.trust_remote_code / model.allow_pickle (off: refused with the field named).
    `workers`: training jobs this app runs at once from the queue (0: it only queues them).
    """
    # The UI itself never goes online: hub lookups fail fast unless the user started it with
    # HF_HUB_OFFLINE=0 on purpose.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app = FastAPI(title="SmoLoRA", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.ui = UIState(workspace.resolve(), allow_remote_code, workers)
    app.state.token = token or new_token()
    hosts = [h.lower().strip("[]") for h in allowed_hosts] if allowed_hosts else loopback_hosts("127.0.0.1")
    app.add_middleware(guard, token=app.state.token, hosts=hosts)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(OutsideWorkspace, outside)
    app.add_exception_handler(SmoLoRAError, user_error)
    app.add_exception_handler(ValueError, user_error)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in ROUTERS:
        app.include_router(module.router)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    import asyncio

    from smolora.queue.worker import start_workers, stop_workers
    from smolora.ui.inspect import stop_worker

    ui = app.state.ui
    if ui.workers > 0:  # they also put back a job a dead UI left running (it then resumes)
        ui.handle = start_workers(ui.queue, ui.workers)
    yield
    if ui.handle is not None:  # running jobs stop cleanly (checkpoint) and stay queued for next time
        await asyncio.to_thread(stop_workers, ui.handle)
    jobs.stop_all(ui.jobs)  # a clean stop (checkpoint kept) rather than orphans
    stop_worker()


# One shape for every error the UI gives: {"error": "one line"} (422s keep FastAPI's list).


async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)


async def outside(_: Request, e: OutsideWorkspace) -> JSONResponse:
    return JSONResponse({"error": str(e)}, status_code=403)


async def user_error(_: Request, e: Exception) -> JSONResponse:
    # A SmoLoRAError or a ValueError is the user's to fix: 400, with any secret in it masked.
    return JSONResponse({"error": mask_text(str(e))}, status_code=400)
