"""Training on the workspace's job queue: the Train button submits, Runs lists, Stop cancels.

The queue is `smolora.queue` (SQLite in WAL mode) in `<workspace>/.smolora/jobs`, the same
database `smolora jobs --jobs-dir` and `smolora serve --jobs-dir` read. So a UI started again
on the workspace lists every job it had, its worker threads (`smolora ui --jobs-workers N`, one
by default) train queued jobs one after another, and a job a dead UI left running is resumed
from its last checkpoint (queue/worker.py). A job is the config the form wrote
(`configs/<name>.yaml`, checked as before) run as `smolora train` in the workspace. The list's
progress (step, loss) is the job's newest metrics event; the Train view's chart reads the
run's own metrics.jsonl (it has tokens/s and the objective's numbers too).

Run as:
    root = queue_root(Path("."))
    job = submit_training(root, Path("."), ["model.name=tiny", "data.path=qa.jsonl"])
    print(job_view(root, Path("."), store.get_job(root, job["id"]))["state"])
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from smolora.config import build_config
from smolora.queue import store
from smolora.queue.submit import LOG, job_dir, submit
from smolora.ui import training
from smolora.ui.jobs import log_tail
from smolora.ui.workspace import inside, relative, safe_path

QUEUE_DIR = Path(".smolora") / "jobs"
# The queue's states in the words the UI's other jobs use (its badges, the Train view's logic).
STATES = {
    "queued": "queued",
    "running": "running",
    "succeeded": "finished",
    "failed": "failed",
    "cancelled": "stopped",
}
LISTED = 50  # the newest jobs the Runs view lists
JOB_ID = re.compile(r"ftjob-[0-9a-f]{24}")


def queue_root(workspace: Path) -> Path:
    return store.open_store(workspace / QUEUE_DIR)


def is_queue_id(job_id: str) -> bool:
    return JOB_ID.fullmatch(job_id) is not None


def unfinished(root: Path) -> list[dict[str, Any]]:
    """Queued and running jobs, oldest first (the order the workers take them)."""
    with store.connect(root) as db:
        rows = db.execute("SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY seq").fetchall()
    return [store.as_dict(r) for r in rows]


def submit_training(
    root: Path, workspace: Path, overrides: list[str], resume: bool = False, allow_remote_code: bool = False
) -> dict[str, Any]:
    """Check the form, write configs/<name>.yaml, queue it; the job as stored.

    409 when a queued or running job already trains that run directory: two would write one.
    """
    view = training.checked_view(overrides, workspace, allow_remote_code)
    run_dir = safe_path(workspace, view["run_dir"])
    clash = next((j for j in unfinished(root) if Path(j["run_dir"]) == run_dir), None)
    if clash is not None:
        raise HTTPException(
            409,
            f"{view['run_dir']} is already {clash['status']} (job {clash['id']}); "
            "pick another output.name or stop that job first",
        )
    config_path = training.write_config(view, workspace)
    cfg = build_config(view["data"], "form")
    meta = {"name": view["name"], "config_file": view["config_file"], "resume": resume}
    meta.update(
        max_steps=cfg.train.max_steps,
        epochs=cfg.train.epochs,
        batch=cfg.train.batch_size * cfg.train.grad_accum,
    )
    fields = {"model": cfg.model.name, "base": cfg.model.name, "metadata": meta}
    return submit(root, config_path, {}, fields, cwd=workspace)


def latest_metrics(root: Path, job_id: str) -> dict[str, Any]:
    """Step, loss and validation loss from the job's newest metrics events (what the worker saw)."""
    with store.connect(root) as db:
        rows = db.execute(
            "SELECT data FROM events WHERE job_id = ? AND type = 'metrics' ORDER BY seq DESC LIMIT 50",
            (job_id,),
        ).fetchall()
    found: dict[str, Any] = {"step": None, "loss": None, "eval_loss": None}
    for row in rows:
        data = json.loads(row["data"] or "{}")
        if "train_loss" in data and found["loss"] is None:
            found.update(step=data.get("step"), loss=data["train_loss"])
        if "valid_loss" in data and found["eval_loss"] is None:
            found["eval_loss"] = data["valid_loss"]
    return found


def job_view(root: Path, workspace: Path, job: dict[str, Any], ahead: int | None = None) -> dict[str, Any]:
    """A queue job as the browser lists it, beside the UI's other jobs (same `state` words)."""
    meta = job["metadata"] or {}
    status = job["status"]
    state = "stopping" if status == "running" and job["cancel_requested"] else STATES[status]
    run_dir = Path(job["run_dir"])
    config_file = meta.get("config_file") or job["config"]
    end = job["finished_at"] or time.time()
    out = {
        "id": job["id"],
        "kind": "train",
        "source": job["source"],
        "status": status,  # the queue's own word, as `smolora jobs list` prints it
        "state": state,
        "name": meta.get("name") or run_dir.name,
        "run_dir": relative(workspace, run_dir) if inside(workspace, run_dir) else str(run_dir),
        "command": f"smolora train {config_file}",
        "created": job["created_at"],
        "started": job["started_at"],
        "finished": job["finished_at"],
        "elapsed": round(end - job["started_at"], 1) if job["started_at"] else None,
        "pid": job["pid"],
        "attempts": job["attempts"],
        "max_steps": meta.get("max_steps"),
        **latest_metrics(root, job["id"]),
    }
    if ahead is not None:
        out["ahead"] = ahead  # queued jobs a worker takes before this one
    if job["error"]:
        out["error"] = job["error"].get("message")
    return out


def places(root: Path) -> dict[str, int]:
    """Queued job id -> how many queued jobs a worker takes before it."""
    waiting = [j["id"] for j in unfinished(root) if j["status"] == "queued"]
    return {job_id: i for i, job_id in enumerate(waiting)}


def list_views(root: Path, workspace: Path, limit: int = LISTED) -> list[dict[str, Any]]:
    """The newest jobs, newest first; a queued one says how many are ahead of it."""
    jobs, _ = store.list_jobs(root, None, limit)
    ahead = places(root)
    return [job_view(root, workspace, j, ahead.get(j["id"])) for j in jobs]


def known_job(root: Path, job_id: str) -> dict[str, Any]:
    job = store.get_job(root, job_id) if is_queue_id(job_id) else None
    if job is None:
        raise HTTPException(404, "no such job")
    return job


def detail(root: Path, workspace: Path, job: dict[str, Any], events: int = 20) -> dict[str, Any]:
    """One job with its training log's tail (masked) and its newest events."""
    rows, _ = store.list_events(root, job["id"], None, events)
    return {
        **job_view(root, workspace, job, places(root).get(job["id"])),
        "log_tail": log_tail(job_dir(root, job["id"]) / LOG),
        "events": [
            {"created": e["created_at"], "level": e["level"], "message": e["message"], "data": e["data"]}
            for e in rows
        ],
    }


def cancel(root: Path, workspace: Path, job_id: str) -> dict[str, Any]:
    """Stop from the page: a queued job is cancelled at once, a running one after its step (SIGTERM:
    a checkpoint first). A finished job stays as it was."""
    known_job(root, job_id)
    return detail(root, workspace, store.request_cancel(root, job_id))


def followed(root: Path, job_id: str | None) -> dict[str, Any] | None:
    """The job the Train view shows: the one named, else the oldest running, else the newest."""
    if job_id:
        return known_job(root, job_id)
    running = [j for j in unfinished(root) if j["status"] == "running"]
    if running:
        return running[0]
    jobs, _ = store.list_jobs(root, None, 1)
    return jobs[0] if jobs else None


def progress_of(job: dict[str, Any], seen: list, since: int) -> dict[str, Any]:
    """training.progress on a queue job: its run's metrics.jsonl rows, step total, ETA, checkpoints."""
    meta = job["metadata"] or {}
    if job["status"] == "queued" and not job["attempts"]:  # nothing of it yet (an older run is not it)
        empty = dict.fromkeys(("loss", "eval_loss", "tokens_per_s", "eta_s", "train_log_tail"))
        nothing = {"rows": [], "n_rows": 0, "step": 0, "checkpoints": [], "total_exact": True}
        return {**empty, **nothing, "total_steps": meta.get("max_steps")}
    run = {
        "run_dir": Path(job["run_dir"]),
        "pid": job["pid"] if job["status"] == "running" else None,
        "running": job["status"] == "running",
        "started": job["started_at"] or job["created_at"],
        "seen": seen,
        "name": meta.get("name") or Path(job["run_dir"]).name,
        "cwd": job["cwd"],
        **{k: meta.get(k) for k in ("max_steps", "epochs", "batch")},
    }
    return training.progress(run, since)


def running_runs(root: Path) -> set[str]:
    return {str(Path(j["run_dir"]).resolve()) for j in unfinished(root) if j["status"] == "running"}


def run_parents(root: Path, workspace: Path) -> set[Path]:
    """The output.dir of every listed job that lies in the workspace (the Runs view looks there)."""
    jobs, _ = store.list_jobs(root, None, LISTED)
    parents = {Path(j["run_dir"]).parent for j in jobs if j["run_dir"]}
    return {p for p in parents if inside(workspace, p)}
