"""`smolora jobs list | show ID | cancel ID`: the fine-tuning job queue from the terminal.

The same database `smolora serve` (OpenAI's fine-tuning API) and `smolora ui` work from; a
cancel here reaches the worker running the job (it sends SIGTERM: a checkpoint, then a stop).

Run as:
    smolora jobs list
    smolora jobs show ftjob-0123456789abcdef01234567
    smolora jobs cancel ftjob-0123456789abcdef01234567 --jobs-dir jobs
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from smolora.cli.common import console
from smolora.errors import SmoLoRAError

jobs_app = typer.Typer(help="The fine-tuning job queue: list, show and cancel jobs.", no_args_is_help=True)

JobsDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--jobs-dir", help="The queue's directory (as smolora serve --jobs-dir); default SMOLORA_HOME/jobs."
    ),
]
JobId = Annotated[str, typer.Argument(help="A job id, e.g. ftjob-0123... (smolora jobs list shows them).")]


def queue_root(jobs_dir: Path | None) -> Path:
    from smolora.queue.store import DB_FILE
    from smolora.runs import smolora_home

    root = (jobs_dir or smolora_home() / "jobs").expanduser()
    if not (root / DB_FILE).is_file():
        raise SmoLoRAError(
            f"no job queue at {root} (no {DB_FILE}); point --jobs-dir at a server's --jobs-dir"
        )
    return root


def found(root: Path, job_id: str) -> dict[str, Any]:
    from smolora.queue.store import get_job

    job = get_job(root, job_id)
    if job is None:
        raise SmoLoRAError(f"no job {job_id!r} in {root}; `smolora jobs list` shows the ids")
    return job


def when(stamp: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "-"


@jobs_app.command("list")
def list_cmd(
    jobs_dir: JobsDirOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many jobs, newest first.")] = 50,
) -> None:
    """The jobs in the queue, newest first: id, status, model, the fine-tuned model, created.

    Example: smolora jobs list --jobs-dir jobs
    """
    from smolora.queue.store import list_jobs

    root = queue_root(jobs_dir)
    jobs, more = list_jobs(root, None, limit)
    # Plain columns, not a table that folds: ids are for copying into `smolora jobs show`.
    rows = [("ID", "STATUS", "MODEL", "FINE-TUNED MODEL / RUN", "CREATED")]
    for job in jobs:
        result = job["fine_tuned_model"] or job["run_dir"] or ""
        rows.append(
            (job["id"], job["status"], Path(job["model"] or "").name, result, when(job["created_at"]))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        console.print(escape(line), highlight=False, soft_wrap=True)
    if not jobs:
        console.print(f"no jobs in {root}")
    if more:
        console.print(f"(more jobs than --limit {limit})")


@jobs_app.command("show")
def show(
    job_id: JobId,
    jobs_dir: JobsDirOpt = None,
    events: Annotated[int, typer.Option(min=0, help="How many of the newest events to print.")] = 20,
) -> None:
    """One job: its settings and state, then its latest events (oldest of them first).

    Example: smolora jobs show ftjob-0123456789abcdef01234567
    """
    from smolora.queue.store import list_events

    root = queue_root(jobs_dir)
    job = found(root, job_id)
    for key in (
        "id",
        "status",
        "model",
        "fine_tuned_model",
        "training_file",
        "validation_file",
        "run_dir",
        "config",
    ):
        if job.get(key):
            console.print(f"{key}: {escape(str(job[key]))}", highlight=False)
    for key in ("hyperparameters", "method", "error"):
        if job.get(key):
            console.print(f"{key}: {escape(str(job[key]))}", highlight=False)
    console.print(f"created: {when(job['created_at'])}  finished: {when(job['finished_at'])}")
    rows, _ = list_events(root, job_id, None, events)
    for event in reversed(rows):
        level = "" if event["level"] == "info" else f"[{event['level']}] "
        console.print(f"  {when(event['created_at'])}  {escape(level + event['message'])}", highlight=False)


@jobs_app.command("cancel")
def cancel(job_id: JobId, jobs_dir: JobsDirOpt = None) -> None:
    """Cancel a job: a queued one at once, a running one after its current step (a checkpoint is kept).

    Example: smolora jobs cancel ftjob-0123456789abcdef01234567
    """
    from smolora.queue.store import DONE, request_cancel

    root = queue_root(jobs_dir)
    before = found(root, job_id)
    if before["status"] in DONE:
        raise SmoLoRAError(
            f"job {job_id} already {before['status']}; only queued or running jobs can be cancelled"
        )
    job = request_cancel(root, job_id)
    if job["status"] == "cancelled":
        console.print(f"[green]cancelled[/] {job_id}")
    else:
        console.print(
            f"cancelling {job_id}: its worker stops it after the current step (smolora jobs show {job_id})"
        )
