"""Worker threads: each takes the oldest queued job and runs it as `smolora train CONFIG` in a subprocess.

While it runs, the worker reads the run's `metrics.jsonl` (a metrics event per logged step and
evaluation) and its `checkpoints/` (a checkpoint row each), and every half second checks whether
the job was cancelled: then SIGTERM, which the recipe answers with a checkpoint and a clean stop
(train/stopping.py), SIGKILL only after a grace period. A worker that stops (the server shuts
down) stops its jobs the same way and puts them back in the queue; a job whose worker died
(SIGKILL, power cut: its owner's process is gone or its heartbeat is old) goes back too, once its
training process has ended. A job that ran before continues with `--resume` from its last
intact checkpoint, and its events say so.

Run as:
    workers = start_workers(root, n=2, on_success=lambda job: None)
    ...
    stop_workers(workers)
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from smolora.queue import store
from smolora.queue.prepare import prepare_job
from smolora.queue.progress import Progress, error_line, job_step
from smolora.queue.submit import LOG, job_dir
from smolora.runs import _pid_alive, live_dir
from smolora.train.checkpoints import good_checkpoint

log = logging.getLogger("smolora")

POLL_S = 0.5  # how often a worker looks at its job (and an idle one at the queue)
STALE_S = 60.0  # a running job's heartbeat older than this: its worker is gone
CANCEL_GRACE_S = 60.0  # after SIGTERM, the recipe finishes its step and saves; then SIGKILL


def start_workers(root: Path, n: int = 1, on_success: Any = None) -> dict[str, Any]:
    """`n` daemon threads working the queue at `root`; the handle `stop_workers` takes."""
    workers = {
        "root": Path(root),
        "owner": f"{os.getpid()}:{uuid.uuid4().hex[:8]}",
        "stop": threading.Event(),
        "on_success": on_success,
        "threads": [],
    }
    for i in range(n):
        thread = threading.Thread(target=work, args=(workers,), name=f"smolora-worker-{i}", daemon=True)
        thread.start()
        workers["threads"].append(thread)
    return workers


def stop_workers(workers: dict[str, Any], timeout_s: float = 20.0) -> None:
    """Stop every running job cleanly (SIGTERM: a checkpoint), wait for them; they stay queued.

    Each job's watcher wakes on the event and sends the one SIGTERM: a second signal would tell
    the trainer to abort without its checkpoint.
    """
    workers["stop"].set()
    for thread in workers["threads"]:
        thread.join(timeout=timeout_s)


def work(workers: dict[str, Any]) -> None:
    root, stop = workers["root"], workers["stop"]
    while not stop.is_set():
        try:
            reclaim_orphans(root)
            job = store.claim_next(root, workers["owner"])
            if job is None:
                stop.wait(POLL_S)
                continue
            run_job(workers, job)
        except Exception:  # a worker never dies of one job (a locked database, a full disk)
            log.exception("job worker error")
            stop.wait(5 * POLL_S)


def reclaim_orphans(root: Path) -> None:
    """Put back in the queue every running job whose worker is gone, once its training has ended."""
    now = time.time()
    with store.connect(root) as db:
        running = [store.as_dict(r) for r in db.execute("SELECT * FROM jobs WHERE status = 'running'")]
    for job in running:
        pid = int((job["owner"] or "0:").split(":")[0] or 0)
        if _pid_alive(pid) and now - (job["heartbeat"] or 0) < STALE_S:
            continue
        if job["pid"] and trainer_alive(job):
            continue  # its trainer is still saving its last checkpoint: after that
        store.update_job(root, job["id"], status="queued", owner=None, pid=None)
        step = job_step(root, job["id"])
        store.add_event(
            root, job["id"], f"The process running this job stopped{step}; the job is queued again", "warn"
        )


def trainer_alive(job: dict[str, Any]) -> bool:
    """Whether the job's training process still runs (on Linux told apart from a reused pid)."""
    if not _pid_alive(job["pid"]):
        return False
    try:
        cmdline = Path(f"/proc/{job['pid']}/cmdline").read_bytes()
    except OSError:
        return not sys.platform.startswith("linux")
    return job["config"].encode() in cmdline


def run_job(workers: dict[str, Any], job: dict[str, Any]) -> None:
    root = workers["root"]
    try:
        problem = prepare_job(root, job)
    except Exception as e:  # the job fails, the worker goes on
        log.exception("preparing job %s", job["id"])
        problem = f"the job could not be prepared: {e}"
    if problem is not None:
        store.add_event(root, job["id"], problem, "error")
        store.finish_job(
            root, job["id"], "failed", error={"code": "invalid_job", "message": problem, "param": None}
        )
        return
    resume = resume_flag(root, job)
    argv = [sys.executable, "-m", "smolora.queue.child", str(os.getpid()), "--"]
    argv += ["-m", "smolora.cli.main", "-q", "train", job["config"], *resume]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    with open(job_dir(root, job["id"]) / LOG, "ab") as out:
        proc = subprocess.Popen(
            argv, cwd=job["cwd"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    store.update_job(root, job["id"], pid=proc.pid)
    if not resume:
        store.add_event(root, job["id"], "Fine-tuning job started")
    outcome = watch(workers, job, proc)
    conclude(workers, job, proc.returncode, outcome)


def resume_flag(root: Path, job: dict[str, Any]) -> list[str]:
    """["--resume"] for a job that ran before and left an intact checkpoint; its event says which."""
    if job["attempts"] <= 1:
        # The UI's resume box: continue that run's last checkpoint (train says if there is none).
        asked = job["source"] == "ui" and (job["metadata"] or {}).get("resume") is True
        return ["--resume"] if asked else []
    run_dir = Path(job["run_dir"])
    checkpoint, _ = good_checkpoint(run_dir)
    if checkpoint is None:
        if job["source"] == "api" and run_dir.is_relative_to(Path(root).resolve() / store.RUNS_DIR):
            from smolora.runs import is_marked

            if run_dir.exists() and is_marked(run_dir):
                import shutil

                shutil.rmtree(run_dir)  # no checkpoint: nothing to keep of a run only this job made
        store.add_event(
            root, job["id"], "Restarting the job from the beginning: it saved no checkpoint", "warn"
        )
        return []
    store.add_event(
        root,
        job["id"],
        f"Resuming from {checkpoint.name} after the job was interrupted",
        data={"step": int(checkpoint.name.split("-")[-1]), "checkpoint": checkpoint.name},
    )
    return ["--resume"]


def watch(workers: dict[str, Any], job: dict[str, Any], proc: subprocess.Popen) -> str:
    """Follow the running job until its process ends: "done", "cancelled" or "shutdown"."""
    root, final = workers["root"], Path(job["run_dir"])
    progress = Progress(root, job)
    outcome, signalled = "done", None
    while proc.poll() is None:
        workers["stop"].wait(POLL_S)
        progress.update(live_dir(final, proc.pid))
        now = time.time()
        store.update_job(root, job["id"], heartbeat=now)
        if signalled is None and workers["stop"].is_set():
            outcome, signalled = "shutdown", now
            proc.send_signal(signal.SIGTERM)
        elif signalled is None and (store.get_job(root, job["id"]) or {}).get("cancel_requested"):
            outcome, signalled = "cancelled", now
            proc.send_signal(signal.SIGTERM)  # the recipe saves a checkpoint, then exits
        elif signalled is not None and now - signalled > CANCEL_GRACE_S:
            proc.kill()
    progress.update(live_dir(final, proc.pid) if final.exists() else final)
    job["trained_tokens"] = progress.tokens
    return outcome


def conclude(workers: dict[str, Any], job: dict[str, Any], rc: int, outcome: str) -> None:
    """The job's last state and event, from how its process ended."""
    root, job_id = workers["root"], job["id"]
    if outcome == "shutdown":
        store.update_job(root, job_id, status="queued", owner=None, pid=None)
        store.add_event(
            root,
            job_id,
            "The server stopped; the job is queued again and resumes from its checkpoint",
            "warn",
        )
        return
    if outcome == "cancelled":
        checkpoint, _ = good_checkpoint(Path(job["run_dir"]))
        kept = f"; {checkpoint.name} kept in {job['run_dir']}" if checkpoint else ""
        store.finish_job(root, job_id, "cancelled")
        store.add_event(root, job_id, f"Job cancelled{kept}")
        return
    if rc != 0:
        tail = (job_dir(root, job_id) / LOG).read_text(encoding="utf-8", errors="replace")[-20000:]
        message = error_line(tail) or f"training exited with code {rc}"
        store.finish_job(
            root, job_id, "failed", error={"code": "training_failed", "message": message, "param": None}
        )
        store.add_event(root, job_id, f"Training failed: {message}", "error")
        return
    name = fine_tuned_name(job) if job["source"] == "api" else None
    store.update_job(root, job_id, fine_tuned_model=name, trained_tokens=job.get("trained_tokens"))
    hook = workers["on_success"]
    if hook is not None:
        try:
            note = hook(store.get_job(root, job_id))
            if note:
                store.add_event(root, job_id, note)
        except Exception as e:  # trained and saved: only serving it failed
            log.exception("after job %s", job_id)
            store.add_event(
                root, job_id, f"Trained, but the model could not be loaded for serving: {e}", "warn"
            )
    store.finish_job(root, job_id, "succeeded")
    store.add_event(root, job_id, "The job has successfully completed")


def fine_tuned_name(job: dict[str, Any]) -> str:
    """OpenAI's shape, `ft:BASE:SUFFIX:ID` (the base by its last path part; ID from the job id)."""
    base = Path(str(job["base"]).rstrip("/")).name or str(job["base"])
    return f"ft:{base}:{job['suffix'] or ''}:{job['id'].removeprefix('ftjob-')[:12]}"
