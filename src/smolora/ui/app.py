"""The web UI's HTTP API and static front end (FastAPI), a thin client of the config and the CLI.

Training, evaluation, export and model pulls run the `smolora` CLI as subprocesses (no
shell); the Train form is validated by `build_config`; the Data view calls `inspect_data`;
Chat loads models with `load_for_inference`. Every path from the browser goes through
`safe_path` (inside the workspace, else 403). Who may call the API at all (the launch
token, the Host and Origin checks, anti-framing headers) is decided in `guard.py`.

Run as:
    import uvicorn
    uvicorn.run(create_app(Path("."), token="a-long-random-string"), host="127.0.0.1", port=7860)
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import iterate_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from smolora.errors import SmoLoRAError
from smolora.redact import mask_text
from smolora.ui import chat, jobs, models, resources, runs, training
from smolora.ui.guard import allowed_hosts as loopback_hosts
from smolora.ui.guard import guard, new_token
from smolora.ui.workspace import (
    OutsideWorkspace,
    check_data_path,
    list_data_files,
    model_ref,
    relative,
    safe_path,
    save_upload,
)

STATIC = Path(__file__).parent / "static"


class Overrides(BaseModel):
    overrides: list[str] = Field(default_factory=list, description="`--set` strings: section.key=value")


class StartRequest(Overrides):
    resume: bool = False


class InspectRequest(Overrides):
    path: str
    examples: int = Field(3, ge=0, le=20)


class ChatRequest(BaseModel):
    model: str
    messages: list[dict[str, str]]
    max_new_tokens: int = Field(128, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    system_prompt: str | None = None


class ExportRequest(BaseModel):
    run: str
    format: str = Field("merge", pattern="^(merge|gguf|ollama)$")
    quant: str = Field("f16", pattern="^(f32|f16|q8_0)$")
    out: str | None = None


class ModelName(BaseModel):
    name: str = Field(min_length=1, max_length=300)


def cli_commands() -> set[str]:
    """Commands the installed CLI has ("train", "models pull", ...): views offer only what exists."""
    import typer.main

    from smolora.cli.main import app as cli_app

    root = typer.main.get_command(cli_app)
    names: set[str] = set()
    for name, cmd in getattr(root, "commands", {}).items():
        names.add(name)
        names.update(f"{name} {sub}" for sub in getattr(cmd, "commands", {}))
    return names


def create_app(
    workspace: Path,
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
    allow_remote_code: bool = False,
) -> FastAPI:
    """The UI app; `token` (default: a fresh random one, in `app.state.token`) opens its API.

    `allowed_hosts`: Host names accepted (default: loopback only). `allow_remote_code`: let the
    browser set model.trust_remote_code / model.allow_pickle (off: refused with the field named).
    """
    workspace = workspace.resolve()
    # The UI itself never goes online: hub lookups fail fast unless the user started it with
    # HF_HUB_OFFLINE=0 on purpose.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    state: dict[str, Any] = {"jobs": {}, "train": None, "commands": cli_commands()}
    # Held from the 409 check until the new job is recorded: two clicks on Start arrive as two
    # requests in two threadpool threads, and both must not pass the check.
    starting = threading.Lock()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        from smolora.ui.inspect import stop_worker

        jobs.stop_all(state["jobs"])  # a clean stop (checkpoint kept) rather than orphans
        stop_worker()

    app = FastAPI(title="SmoLoRA", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.smolora = state
    app.state.token = token or new_token()
    hosts = [h.lower().strip("[]") for h in allowed_hosts] if allowed_hosts else loopback_hosts("127.0.0.1")
    app.add_middleware(guard, token=app.state.token, hosts=hosts)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException):
        # One shape for every error the UI gives: {"error": "one line"} (422s keep FastAPI's list).
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(OutsideWorkspace)
    async def outside(_: Request, e: OutsideWorkspace):
        return JSONResponse({"error": str(e)}, status_code=403)

    @app.exception_handler(SmoLoRAError)
    async def user_error(_: Request, e: SmoLoRAError):
        return JSONResponse({"error": mask_text(str(e))}, status_code=400)

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, e: ValueError):
        return JSONResponse({"error": mask_text(str(e))}, status_code=400)

    def run_path(user_path: str) -> Path:
        p = safe_path(workspace, user_path)
        if not runs.is_run(p):
            raise HTTPException(404, f"{user_path}: not a run directory")
        return p

    def runs_dirs() -> list[Path]:
        dirs = {workspace / "runs"}
        dirs.update(j["run_dir"].parent for j in state["jobs"].values() if j["kind"] == "train")
        return sorted(dirs)

    def running_runs() -> set[str]:
        return {
            str(j["run_dir"].resolve())
            for j in state["jobs"].values()
            if j["kind"] == "train" and j["proc"].poll() is None
        }

    def job_view(job: dict[str, Any]) -> dict[str, Any]:
        return {**jobs.job_state(job), **{k: str(job[k]) for k in ("run", "target") if k in job}}

    def add_job(job: dict[str, Any]) -> dict[str, Any]:
        state["jobs"][job["id"]] = job
        return job_view(job)

    # --- page, info, schema ------------------------------------------------------------

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        import smolora
        from smolora.ui.export import availability

        return {
            "export": availability(state["commands"]),
            "version": smolora.__version__,
            "workspace": str(workspace),
            "commands": sorted(state["commands"]),
            "offline": os.environ.get("HF_HUB_OFFLINE") == "1",
        }

    @app.get("/api/schema")
    def schema() -> dict[str, Any]:
        from smolora.config import RunConfig, config_schema

        return {"schema": config_schema(), "defaults": RunConfig().to_dict()}

    @app.post("/api/config/preview")
    def config_preview(req: Overrides) -> dict[str, Any]:
        view = training.preview(req.overrides, workspace, allow_remote_code)
        view.pop("data", None)
        return view

    # --- training ------------------------------------------------------------------------

    @app.post("/api/train/start")
    def train_start(req: StartRequest) -> dict[str, Any]:
        busy = HTTPException(409, "a training run is already going; stop it first")
        if not starting.acquire(blocking=False):
            raise busy  # another Start is being set up right now
        try:
            current = state["train"]
            if current is not None and current["proc"].poll() is None:
                raise busy
            job = training.start_training(req.overrides, workspace, req.resume, allow_remote_code)
            state["train"] = job
            return add_job(job)
        finally:
            starting.release()

    @app.post("/api/train/stop")
    def train_stop() -> dict[str, Any]:
        job = state["train"]
        if job is None:
            raise HTTPException(404, "no training run to stop")
        jobs.stop_job(job)
        return jobs.job_state(job)

    @app.get("/api/train/status")
    def train_status(since: int = 0) -> dict[str, Any]:
        job = state["train"]
        if job is None:
            return {"state": "idle"}
        return {**jobs.job_state(job), **training.progress(job, since)}

    @app.get("/api/system")
    def system() -> dict[str, Any]:
        job = state["train"]
        pid = job["proc"].pid if job is not None and job["proc"].poll() is None else None
        return resources.snapshot(pid)

    # --- data ----------------------------------------------------------------------------

    @app.get("/api/files")
    def files() -> dict[str, Any]:
        return {"files": list_data_files(workspace)}

    @app.post("/api/upload")
    async def upload(request: Request, path: str) -> dict[str, Any]:
        target = await save_upload(workspace, path, request.stream())
        return {"path": relative(workspace, target), "size": target.stat().st_size}

    @app.post("/api/data/inspect")
    def data_inspect(req: InspectRequest) -> dict[str, Any]:
        from smolora.ui.inspect import inspect_in_worker

        p = safe_path(workspace, req.path)
        if not p.exists():
            raise HTTPException(404, f"{req.path}: no such file in the workspace")
        check_data_path(workspace, str(p))  # a directory's files, too, stay inside
        training.refuse_remote_code(req.overrides, allow_remote_code)
        report = inspect_in_worker(p, req.overrides, workspace, req.examples)
        report["path"] = relative(workspace, p)
        report["files"] = [relative(workspace, Path(f)) for f in report.get("files", [])]
        return report

    # --- runs ----------------------------------------------------------------------------

    @app.get("/api/runs")
    def runs_list() -> dict[str, Any]:
        found = []
        for d in runs_dirs():
            for r in runs.list_runs(d, running_runs()):
                found.append({**r, "path": relative(workspace, Path(r["path"]))})
        return {"runs": found, "can_eval": "eval" in state["commands"]}

    @app.get("/api/runs/compare")
    def runs_compare(a: str, b: str) -> dict[str, Any]:
        return runs.compare(run_path(a), run_path(b))

    @app.get("/api/runs/metrics")
    def run_metrics(run: str) -> dict[str, Any]:
        return {"rows": training.read_metrics(run_path(run) / "metrics.jsonl")}

    @app.get("/api/runs/file/{file_path:path}")
    def run_file(file_path: str) -> FileResponse:
        # Only what `smolora eval` writes (report.html and its images) is served from run dirs.
        p = safe_path(workspace, file_path)
        if p.parent.name != "eval" or not runs.is_run(p.parent.parent) or not p.is_file():
            raise HTTPException(404, f"{file_path}: no such evaluation file")
        # Sandboxed: model outputs quoted in a report can never run script in the UI's origin.
        return FileResponse(p, headers={"Content-Security-Policy": "sandbox"})

    @app.post("/api/runs/eval")
    def run_eval(req: ModelName) -> dict[str, Any]:
        if "eval" not in state["commands"]:
            raise HTTPException(501, "smolora eval is not available in this build")
        p = run_path(req.name)
        argv = jobs.cli_argv("eval", relative(workspace, p))
        return add_job(
            jobs.start_job("eval", argv, workspace, p / "eval-ui.console.log", run=relative(workspace, p))
        )

    # --- jobs (eval, export, pull) -------------------------------------------------------

    @app.get("/api/jobs")
    def jobs_list(kind: str | None = None) -> dict[str, Any]:
        items = [job_view(j) for j in state["jobs"].values() if kind in (None, j["kind"])]
        return {"jobs": sorted(items, key=lambda j: -j["started"])}

    @app.get("/api/jobs/{job_id}")
    def job_get(job_id: str) -> dict[str, Any]:
        if job_id not in state["jobs"]:
            raise HTTPException(404, "no such job")
        job = state["jobs"][job_id]
        return {**job_view(job), "log_tail": jobs.log_tail(job["log"])}

    @app.post("/api/jobs/{job_id}/stop")
    def job_stop(job_id: str) -> dict[str, Any]:
        if job_id not in state["jobs"]:
            raise HTTPException(404, "no such job")
        jobs.stop_job(state["jobs"][job_id])
        return job_view(state["jobs"][job_id])

    # --- chat ----------------------------------------------------------------------------

    @app.get("/api/chat/models")
    def chat_models() -> dict[str, Any]:
        tuned, bases = [], []
        for d in runs_dirs():
            for r in runs.list_runs(d, set()):
                if r["has_adapter"]:
                    tuned.append({"value": relative(workspace, Path(r["path"])), "base": r["base_model"]})
                    bases.append(r["base_model"])
        bases += models.loadable_names()
        return {"runs": tuned, "bases": list(dict.fromkeys(b for b in bases if b)), "loaded": chat.loaded()}

    @app.post("/api/chat")
    async def chat_stream(req: ChatRequest) -> StreamingResponse:
        key = model_ref(workspace, req.model)
        cancel = threading.Event()

        async def events():
            yield _sse({"status": "loading" if key not in chat.loaded() else "generating"})
            pieces = chat.stream_answer(
                key, req.messages, req.max_new_tokens, req.temperature, req.system_prompt, cancel
            )
            try:
                async for piece in iterate_in_threadpool(pieces):
                    if piece:
                        yield _sse({"text": piece})
                yield _sse({"done": True})
            except SmoLoRAError as e:
                yield _sse({"error": mask_text(str(e))})
            except Exception as e:  # a stream cannot change its status code any more; say what broke
                yield _sse({"error": mask_text(f"{type(e).__name__}: {e}")})
            finally:
                # The browser went away (Starlette cancels this generator on disconnect) or the
                # answer is done: either way generation stops and the model lock is released.
                cancel.set()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    # --- export --------------------------------------------------------------------------

    @app.post("/api/export")
    def export(req: ExportRequest) -> dict[str, Any]:
        from smolora.ui.export import export_argv

        p = run_path(req.run)
        out = relative(workspace, safe_path(workspace, req.out)) if req.out else None
        argv = export_argv(req.format, relative(workspace, p), req.quant, out, state["commands"])
        if argv is None:
            raise HTTPException(501, f"exporting as {req.format} is not available in this build")
        log = p / f"export-{req.format}.console.log"
        return add_job(jobs.start_job("export", argv, workspace, log, run=relative(workspace, p)))

    @app.get("/api/export/parity")
    def parity(run: str) -> dict[str, Any]:
        from smolora.ui.export import availability

        p = run_path(run)
        found = sorted(p.rglob("parity.json"), key=lambda f: -f.stat().st_mtime)
        return {
            "files": [
                {"path": relative(workspace, f), "parity": runs.read_json(f), "mtime": f.stat().st_mtime}
                for f in found[:5]
            ],
            "available": availability(state["commands"]),
        }

    # --- models --------------------------------------------------------------------------

    @app.get("/api/models")
    def models_list() -> dict[str, Any]:
        from smolora.model.store import models_dir

        return {"models": models.list_models(), "store": str(models_dir())}

    @app.post("/api/models/pull")
    def models_pull(req: ModelName) -> dict[str, Any]:
        from smolora.model.store import smolora_home

        if "models pull" not in state["commands"]:
            raise HTTPException(501, "smolora models pull is not available in this build")
        name = model_ref(workspace, req.name)
        argv = models.pull_argv(name)
        log = smolora_home() / "ui-logs" / "pull.console.log"
        return add_job(jobs.start_job("pull", argv, workspace, log, target=name))

    @app.post("/api/models/verify")
    def models_verify(req: ModelName) -> dict[str, Any]:
        return models.verify(req.name)

    @app.post("/api/models/remove")
    def models_remove(req: ModelName) -> dict[str, Any]:
        return models.remove(req.name)

    return app


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
