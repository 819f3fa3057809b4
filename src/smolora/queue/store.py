"""The job database: uploaded files, fine-tuning jobs, their events and checkpoints, in SQLite.

One directory holds it all: `jobs.db` (WAL mode, so the server, the UI and `smolora jobs` read
while a worker writes), `files/` (uploads, named by the ids made here, never by the client),
`jobs/<id>/` (a job's config, its training files and log) and `runs/<id>/` (the run an API job
trains). A job is a plain dict of its row. States: queued -> running -> succeeded | failed |
cancelled; a running job whose worker died goes back to queued (worker.reclaim_orphans).

Every call opens its own connection: connections are cheap, and no thread shares one.

Run as:
    root = open_store(Path("~/.cache/smolora/jobs").expanduser())
    job_id = add_job(root, {"model": "smollm2-135m", "config": "jobs/x/config.yaml"})
    add_event(root, job_id, "Job started")
    print(get_job(root, job_id)["status"], list_events(root, job_id))
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DB_FILE = "jobs.db"
FILES_DIR = "files"
JOBS_DIR = "jobs"
RUNS_DIR = "runs"
DONE = ("succeeded", "failed", "cancelled")
STATES = ("queued", "running", *DONE)
JSON_COLUMNS = ("hyperparameters", "method", "error", "data", "metrics", "metadata")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, filename TEXT, purpose TEXT, bytes INTEGER, created_at INTEGER,
    kind TEXT, lines INTEGER
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, created_at INTEGER, started_at INTEGER, finished_at INTEGER,
    status TEXT, source TEXT, model TEXT, base TEXT, training_file TEXT, validation_file TEXT,
    suffix TEXT, seed INTEGER, hyperparameters TEXT, method TEXT, metadata TEXT,
    config TEXT, cwd TEXT, run_dir TEXT, fine_tuned_model TEXT, error TEXT,
    trained_tokens INTEGER, owner TEXT, heartbeat REAL, pid INTEGER,
    cancel_requested INTEGER DEFAULT 0, attempts INTEGER DEFAULT 0, seq INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, job_id TEXT, created_at INTEGER,
    level TEXT, message TEXT, type TEXT, data TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    id TEXT PRIMARY KEY, job_id TEXT, step INTEGER, path TEXT, created_at INTEGER, metrics TEXT,
    UNIQUE (job_id, step)
);
"""


def new_id(prefix: str) -> str:
    """An id safe in a URL, a file name and a log line; made here, never taken from a client."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def open_store(root: Path) -> Path:
    """Create the directory and the tables if missing; the root is what every other call takes."""
    root = Path(root).expanduser()
    for sub in (FILES_DIR, JOBS_DIR, RUNS_DIR):
        (root / sub).mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(root / DB_FILE, timeout=30)
    try:
        db.execute(
            "PRAGMA journal_mode=WAL"
        )  # readers never wait for the worker's writes (outside a transaction)
        db.executescript(SCHEMA)
    finally:
        db.close()
    return root


@contextmanager
def connect(root: Path) -> Iterator[sqlite3.Connection]:
    """A connection in one transaction: committed when the block ends, rolled back on an error."""
    db = sqlite3.connect(Path(root) / DB_FILE, timeout=30, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        db.execute("BEGIN IMMEDIATE")  # take the write lock now: no two workers claim one job
        yield db
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    finally:
        db.close()


def as_dict(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    for key in JSON_COLUMNS:
        if out.get(key) is not None:
            out[key] = json.loads(out[key])
    return out


def encoded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in values.items()}


def insert(db: sqlite3.Connection, table: str, row: dict[str, Any], how: str = "") -> sqlite3.Cursor:
    columns, marks = ", ".join(row), ", ".join("?" * len(row))
    return db.execute(f"INSERT {how} INTO {table} ({columns}) VALUES ({marks})", list(row.values()))


# --- files ----------------------------------------------------------------------------------


def file_path(root: Path, file_id: str) -> Path:
    return Path(root) / FILES_DIR / f"{file_id}.jsonl"


def add_file(root: Path, file_id: str, filename: str, size: int, kind: str, lines: int) -> dict[str, Any]:
    row = {"id": file_id, "filename": filename, "purpose": "fine-tune", "bytes": size}
    row.update(created_at=int(time.time()), kind=kind, lines=lines)
    with connect(root) as db:
        insert(db, "files", row)
    return row


def get_file(root: Path, file_id: str) -> dict[str, Any] | None:
    with connect(root) as db:
        return as_dict(db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone())


def list_files(root: Path) -> list[dict[str, Any]]:
    with connect(root) as db:
        return [as_dict(r) for r in db.execute("SELECT * FROM files ORDER BY created_at DESC, rowid DESC")]


def delete_file(root: Path, file_id: str) -> bool:
    with connect(root) as db:
        gone = db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
    if gone:  # only an id this store made names a file on disk
        file_path(root, file_id).unlink(missing_ok=True)
    return gone


# --- jobs -----------------------------------------------------------------------------------


def add_job(root: Path, fields: dict[str, Any], job_id: str | None = None) -> str:
    """A queued job from its columns (config, cwd, model, files, hyperparameters, ...); its id."""
    job_id = job_id or new_id("ftjob")
    row = {"id": job_id, "created_at": int(time.time()), "status": "queued", **fields}
    with connect(root) as db:
        row["seq"] = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
        row = encoded(row)
        insert(db, "jobs", row)
    add_event(root, job_id, f"Created fine-tuning job: {job_id}")
    return job_id


def get_job(root: Path, job_id: str) -> dict[str, Any] | None:
    with connect(root) as db:
        return as_dict(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())


def list_jobs(root: Path, after: str | None = None, limit: int = 20) -> tuple[list[dict[str, Any]], bool]:
    """Newest first; `after` is the last id of the previous page. (jobs, whether more follow)."""
    return page_of(root, "jobs", "seq", None, after, limit)


def update_job(root: Path, job_id: str, **values: Any) -> None:
    values = encoded(values)
    with connect(root) as db:
        db.execute(
            f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
            [*values.values(), job_id],
        )


def claim_next(root: Path, owner: str) -> dict[str, Any] | None:
    """The oldest queued job, now running for `owner` (the write lock makes this atomic)."""
    with connect(root) as db:
        row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
        if row is None:
            return None
        db.execute(
            "UPDATE jobs SET status = 'running', owner = ?, heartbeat = ?, started_at = COALESCE(started_at, ?),"
            " attempts = attempts + 1 WHERE id = ?",
            (owner, time.time(), int(time.time()), row["id"]),
        )
        return as_dict(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())


def finish_job(root: Path, job_id: str, status: str, **values: Any) -> None:
    update_job(root, job_id, status=status, finished_at=int(time.time()), pid=None, **values)


def request_cancel(root: Path, job_id: str) -> dict[str, Any] | None:
    """Cancel a queued job at once; mark a running one for its worker (which sends SIGTERM).

    The job as it is now, or None when there is no such job. A finished job is left as it was.
    """
    with connect(root) as db:
        job = as_dict(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
        if job is None or job["status"] in DONE:
            return job
        if job["status"] == "queued":
            db.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ?",
                (int(time.time()), job_id),
            )
        else:
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
    add_event(root, job_id, "Cancellation requested" if job["status"] == "running" else "Job cancelled")
    return get_job(root, job_id)


# --- events and checkpoints -------------------------------------------------------------------


def add_event(
    root: Path,
    job_id: str,
    message: str,
    level: str = "info",
    data: dict | None = None,
    kind: str = "message",
) -> None:
    row = {"id": new_id("ftevent"), "job_id": job_id, "created_at": int(time.time()), "level": level}
    row.update(message=message, type=kind, data=json.dumps(data) if data is not None else None)
    with connect(root) as db:
        insert(db, "events", row)


def list_events(
    root: Path, job_id: str, after: str | None = None, limit: int = 20
) -> tuple[list[dict[str, Any]], bool]:
    """Newest first, as OpenAI lists them; `after` is the last event id of the previous page."""
    return page_of(root, "events", "seq", job_id, after, limit)


def page_of(
    root: Path, table: str, order: str, job_id: str | None, after: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """One page of a table, `order` descending, rows past the `after` id: (rows, whether more follow)."""
    mine = "job_id = ? AND " if job_id is not None else ""
    with connect(root) as db:
        start = (
            db.execute(f"SELECT {order} FROM {table} WHERE id = ?", (after,)).fetchone() if after else None
        )
        bound = start[order] if start else 1 << 62
        query = f"SELECT * FROM {table} WHERE {mine}{order} < ? ORDER BY {order} DESC LIMIT ?"
        args = [job_id] if job_id is not None else []
        rows = [as_dict(r) for r in db.execute(query, [*args, bound, limit + 1])]
    return rows[:limit], len(rows) > limit


def add_checkpoint(root: Path, job_id: str, step: int, path: str, metrics: dict[str, Any]) -> bool:
    """Record a checkpoint once (False when it was already recorded)."""
    row = {
        "id": new_id("ftckpt"),
        "job_id": job_id,
        "step": step,
        "path": path,
        "created_at": int(time.time()),
    }
    row["metrics"] = json.dumps(metrics)
    with connect(root) as db:
        cur = insert(db, "checkpoints", row, "OR IGNORE")
        return cur.rowcount > 0


def list_checkpoints(
    root: Path, job_id: str, after: str | None = None, limit: int = 10
) -> tuple[list[dict[str, Any]], bool]:
    """Newest (highest step) first; `after` is the last checkpoint id of the previous page."""
    return page_of(root, "checkpoints", "step", job_id, after, limit)
