"""OpenAI's fine-tuning API on `smolora serve`: files, jobs, events and checkpoints, on the job queue.

`POST /v1/files` takes a multipart upload (purpose `fine-tune`, JSONL: chat conversations or
preference pairs), checked line by line before it is stored (queue/files.py; a bad line is a
400 naming it); `GET /v1/files[/{id}[/content]]`, `DELETE /v1/files/{id}`. `POST
/v1/fine_tuning/jobs` queues a job on the served base model: the template config (`--jobs-config`,
else the served run's own config.yaml) with the request's hyperparameters merged in;
`GET` list (`after`, `limit`) and retrieve, `POST .../{id}/cancel`, `GET .../{id}/events` and
`.../{id}/checkpoints`. What a job names is checked when it starts; a missing file or base
model fails the job with that message in its events, never a 500 here.

The worker threads (queue/worker.py, `--jobs-workers`) run in this process; a finished job's
adapter is loaded between decoding steps (admin.py's `load_in_worker`) and served as
`ft:BASE:SUFFIX:ID` before the job reads `succeeded`, and at start every succeeded job on this
base is loaded again. Same API key and rate limit as every /v1 route.

Run as:
    smolora serve runs/quickstart --jobs-dir jobs --api-key secret
    curl localhost:8000/v1/files -H 'Authorization: Bearer secret' -F purpose=fine-tune -F file=@train.jsonl
"""

from __future__ import annotations

import asyncio
import logging
import re
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from fastapi import Query
from fastapi import Request as HTTPRequest

from smolora.errors import SmoLoRAError
from smolora.queue import store
from smolora.queue.files import check_upload
from smolora.queue.submit import submit
from smolora.queue.worker import start_workers, stop_workers
from smolora.serve.admin import load_in_worker
from smolora.serve.batching import between_steps
from smolora.serve.finetune_shapes import (
    JobRequest,
    checkpoint_object,
    event_object,
    file_object,
    job_object,
    page,
    settings,
)
from smolora.serve.openai import APIError
from smolora.serve.schema import ERRORS, READ_ERRORS

log = logging.getLogger("smolora")

FILE_ID = re.compile(r"file-[0-9a-f]{24}")
JOB_ID = re.compile(r"ftjob-[0-9a-f]{24}")


def add_finetune_routes(app: Any, guarded: list[Any]) -> None:
    """This file's routes in app.py's table, behind the API key when one is set."""
    route = app.add_api_route
    route("/v1/files", upload, methods=["POST"], dependencies=guarded, responses=ERRORS)
    route("/v1/files", list_files, methods=["GET"], dependencies=guarded, responses=READ_ERRORS)
    route("/v1/files/{file_id}", get_file, methods=["GET"], dependencies=guarded, responses=READ_ERRORS)
    route(
        "/v1/files/{file_id}/content",
        file_content,
        methods=["GET"],
        dependencies=guarded,
        responses=READ_ERRORS,
    )
    route("/v1/files/{file_id}", delete_file, methods=["DELETE"], dependencies=guarded, responses=READ_ERRORS)
    route("/v1/fine_tuning/jobs", create_job, methods=["POST"], dependencies=guarded, responses=ERRORS)
    route("/v1/fine_tuning/jobs", list_jobs, methods=["GET"], dependencies=guarded, responses=READ_ERRORS)
    route(
        "/v1/fine_tuning/jobs/{job_id}", get_job, methods=["GET"], dependencies=guarded, responses=READ_ERRORS
    )
    route(
        "/v1/fine_tuning/jobs/{job_id}/cancel",
        cancel_job,
        methods=["POST"],
        dependencies=guarded,
        responses=ERRORS,
    )
    route(
        "/v1/fine_tuning/jobs/{job_id}/events",
        job_events,
        methods=["GET"],
        dependencies=guarded,
        responses=READ_ERRORS,
    )
    route(
        "/v1/fine_tuning/jobs/{job_id}/checkpoints",
        job_checkpoints,
        methods=["GET"],
        dependencies=guarded,
        responses=READ_ERRORS,
    )


# --- the queue's life in the server's -----------------------------------------------------------


def start_finetune(app: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Before decoding starts: serve every finished job on this base again, then start the workers."""
    jobs = app.state.jobs
    if jobs is None:
        return
    store.open_store(jobs["root"])
    served = app.state.served
    for job in finished_jobs(jobs["root"]):
        if job["fine_tuned_model"] not in served.names:
            try:
                served.names[job["fine_tuned_model"]] = load_in_worker(
                    served, job["fine_tuned_model"], Path(job["run_dir"]) / "adapter"
                )
            except Exception as e:  # another base, or its files are gone: serve the rest
                log.warning("not serving %s: %s", job["fine_tuned_model"], e)
    if jobs["workers"] > 0:
        jobs["handle"] = start_workers(
            jobs["root"], jobs["workers"], lambda job: serve_result(app, loop, job)
        )


async def stop_finetune(app: Any) -> None:
    handle = (app.state.jobs or {}).get("handle")
    if handle is not None:
        await asyncio.to_thread(stop_workers, handle)


def finished_jobs(root: Path) -> list[dict[str, Any]]:
    with store.connect(root) as db:
        rows = db.execute(
            "SELECT * FROM jobs WHERE status = 'succeeded' AND fine_tuned_model IS NOT NULL ORDER BY seq"
        ).fetchall()
    return [store.as_dict(r) for r in rows]


def serve_result(app: Any, loop: asyncio.AbstractEventLoop, job: dict[str, Any]) -> str | None:
    """The worker's hook once a job trained: load its adapter between decoding steps (raises: a warning event)."""
    served, name = app.state.served, job["fine_tuned_model"]
    if name is None:
        return None
    adapter = Path(job["run_dir"]) / "adapter"
    pending = asyncio.run_coroutine_threadsafe(
        between_steps(served, lambda: load_in_worker(served, name, adapter)), loop
    )
    served.names[name] = pending.result(timeout=600)
    return f"Fine-tuned model {name} is served here"


def uploads_apart(app: Any, uploads: Any) -> Any:
    """An ASGI app that sends POST /v1/files to `uploads` (a larger body limit) and the rest to `app`."""

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        big = scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path") == "/v1/files"
        return await (uploads if big else app)(scope, receive, send)

    return wrapped


def jobs_root(request: HTTPRequest) -> Path:
    jobs = request.app.state.jobs
    if jobs is None:
        raise APIError(
            403, "fine-tuning is off on this server; start it with --jobs-dir DIR", None, "forbidden"
        )
    return jobs["root"]


# --- files ------------------------------------------------------------------------------------


def multipart_fields(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (file name, bytes) of a multipart/form-data body (the standard library's MIME parser)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("utf-8", "replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise APIError(400, "send the file as multipart/form-data with fields 'file' and 'purpose'", "file")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


async def upload(request: HTTPRequest):
    """Upload a JSONL training file (purpose fine-tune): checked line by line, then stored."""
    root, limit = jobs_root(request), request.app.state.jobs["max_file_bytes"]
    fields = await asyncio.to_thread(
        multipart_fields, request.headers.get("content-type", ""), await request.body()
    )
    purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace").strip()
    if purpose != "fine-tune":
        raise APIError(
            400, f"purpose: {purpose or 'missing'!r}; this server takes 'fine-tune' files", "purpose"
        )
    if "file" not in fields:
        raise APIError(400, "file: missing; send the JSONL file in the multipart field 'file'", "file")
    filename, data = fields["file"]
    if len(data) > limit:
        raise APIError(
            413, f"file: {len(data)} bytes, over this server's --max-file-mb", "file", "file_too_large"
        )
    try:
        kind, lines = await asyncio.to_thread(check_upload, data)
    except SmoLoRAError as e:
        raise APIError(400, f"file {filename or 'upload'!r}: {e}", "file", "invalid_file") from None
    file_id = store.new_id("file")
    path = store.file_path(root, file_id)
    tmp = path.with_name(f".{path.name}.tmp")
    await asyncio.to_thread(tmp.write_bytes, data)
    tmp.replace(path)  # never a half-written upload under its id
    name = Path(filename or "upload.jsonl").name[:255]
    return file_object(store.add_file(root, file_id, name, len(data), kind, lines))


def known_file(root: Path, file_id: str) -> dict[str, Any]:
    row = store.get_file(root, file_id) if FILE_ID.fullmatch(file_id) else None
    if row is None:
        raise APIError(404, f"No such File object: {file_id}", "file_id", "file_not_found")
    return row


async def list_files(request: HTTPRequest):
    return page([file_object(r) for r in store.list_files(jobs_root(request))], False)


async def get_file(file_id: str, request: HTTPRequest):
    return file_object(known_file(jobs_root(request), file_id))


async def file_content(file_id: str, request: HTTPRequest):
    from fastapi.responses import FileResponse

    root = jobs_root(request)
    known_file(root, file_id)
    return FileResponse(store.file_path(root, file_id), media_type="application/jsonl")


async def delete_file(file_id: str, request: HTTPRequest):
    root = jobs_root(request)
    known_file(root, file_id)
    store.delete_file(root, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


# --- jobs -------------------------------------------------------------------------------------


def base_of(served: Any, model: str) -> str:
    """The base model a request's `model` names: the served base (by its served or short name), or
    another model, which the worker looks for in the model store when the job starts."""
    base = str(served.meta.get("base_model"))
    entry = served.names.get(model)
    if model == Path(base.rstrip("/")).name or (entry is not None and entry["adapter"] is None):
        return base
    return model


def updates_of(req: JobRequest, base: str) -> dict[str, Any]:
    """The request as changes to the template config."""
    kind, hyper = settings(req)
    try:  # a relative path to the base, made absolute: jobs train in another working directory
        name = str(Path(base).expanduser().resolve()) if Path(base).expanduser().exists() else base
    except (OSError, ValueError):  # a name too long to be a path, or with a NUL: the worker refuses it
        name = base
    model = {"name": name, "adapter": None}
    train: dict[str, Any] = {"objective": "dpo" if kind == "dpo" else "sft"}
    if isinstance(hyper.get("n_epochs"), int):
        train.update(epochs=hyper["n_epochs"], max_steps=None)  # epochs asked for: not the template's steps
    if isinstance(hyper.get("batch_size"), int):
        train["batch_size"] = hyper["batch_size"]
    if kind == "dpo" and isinstance(hyper.get("beta"), float):
        train["beta"] = hyper["beta"]
    if req.seed is not None:
        train["seed"] = req.seed
    return {"model": model, "train": train}


async def create_job(req: JobRequest, request: HTTPRequest):
    """Queue a fine-tuning job; it trains when a worker is free (GET it, or its events, to follow)."""
    root, jobs = jobs_root(request), request.app.state.jobs
    base = base_of(request.app.state.served, req.model)
    kind, hyper = settings(req)
    fields = {
        "model": req.model,
        "base": base,
        "training_file": req.training_file,
        "validation_file": req.validation_file,
        "suffix": req.suffix or None,
        "seed": req.seed,
        "hyperparameters": hyper,
        "method": {"type": kind},
        "metadata": req.metadata,
    }
    try:
        job = await asyncio.to_thread(
            submit, root, jobs["template"], updates_of(req, base), fields, None, True
        )
    except SmoLoRAError as e:  # the hyperparameters make no valid run of the template
        raise APIError(400, str(e), "hyperparameters", "invalid_hyperparameters") from None
    return job_object(job)


def known_job(root: Path, job_id: str) -> dict[str, Any]:
    job = store.get_job(root, job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        raise APIError(404, f"fine-tuning job {job_id!r} does not exist", "fine_tuning_job_id", "not_found")
    return job


Limit = Query(20, ge=1, le=100)
After = Query(None, max_length=128)


async def list_jobs(request: HTTPRequest, after: str | None = After, limit: int = Limit):
    jobs, more = store.list_jobs(jobs_root(request), after, limit)
    return page([job_object(j) for j in jobs], more)


async def get_job(job_id: str, request: HTTPRequest):
    return job_object(known_job(jobs_root(request), job_id))


async def cancel_job(job_id: str, request: HTTPRequest):
    """Cancel: a queued job at once, a running one at the end of its step (its checkpoint kept)."""
    root = jobs_root(request)
    job = known_job(root, job_id)
    if job["status"] in ("succeeded", "failed"):
        raise APIError(400, f"job {job_id} already {job['status']}; only queued or running jobs cancel", None)
    return job_object(store.request_cancel(root, job_id))


async def job_events(job_id: str, request: HTTPRequest, after: str | None = After, limit: int = Limit):
    root = jobs_root(request)
    known_job(root, job_id)
    events, more = store.list_events(root, job_id, after, limit)
    return page([event_object(e) for e in events], more)


async def job_checkpoints(job_id: str, request: HTTPRequest, after: str | None = After, limit: int = Limit):
    root = jobs_root(request)
    job = known_job(root, job_id)
    rows, more = store.list_checkpoints(root, job_id, after, limit)
    return page([checkpoint_object(r, job) for r in rows], more)
