"""What a running job has logged, turned into its events and checkpoint rows.

`Progress.update(run_dir)` reads the new lines of the run's `metrics.jsonl` (one metrics event
per training step and per evaluation) and the checkpoints published since the last look. A
resumed run trims its metrics file back to the checkpoint's step (a new file, written beside
the old and renamed over it) and logs those steps again; the reader starts the new file from its
beginning and skips the steps already recorded, so every step has one event whatever restarts
happened.

Run as:
    progress = Progress(root, job)
    progress.update(Path(job["run_dir"]))   # every half second while the job runs
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from smolora.queue import store
from smolora.runs import METRICS_FILE
from smolora.train.checkpoints import MANIFEST, checkpoints_of, step_of


class Progress:
    """The reading position in one job's metrics file, and the last steps already recorded."""

    def __init__(self, root: Path, job: dict[str, Any]) -> None:
        self.root, self.job_id = root, job["id"]
        self.offset, self.file = 0, None  # where we are in which file (device, inode)
        self.last = last_steps(root, job["id"])  # {"train": step, "valid": step}
        self.losses: dict[int, float] = {}
        self.tokens = job.get("trained_tokens")

    def update(self, run_dir: Path) -> None:
        self.read_metrics(run_dir / METRICS_FILE)
        for checkpoint in checkpoints_of(run_dir):
            if not (checkpoint / MANIFEST).is_file():
                continue
            step = step_of(checkpoint)
            metrics = {"step": step, "train_loss": self.losses.get(step)}
            if store.add_checkpoint(self.root, self.job_id, step, str(checkpoint), metrics):
                store.add_event(
                    self.root, self.job_id, f"Checkpoint saved at step {step}", data={"step": step}
                )

    def read_metrics(self, path: Path) -> None:
        try:
            f = open(path, "rb")
        except OSError:
            return
        with f:
            # Trimmed by a resume: another file, read from its start, skipping recorded steps. The
            # size alone cannot tell: the re-run's rows may already reach past our old position,
            # which then falls inside a line (and that step's row would be lost).
            stat = os.fstat(f.fileno())
            if (stat.st_dev, stat.st_ino) != self.file or stat.st_size < self.offset:
                self.offset, self.file = 0, (stat.st_dev, stat.st_ino)
            f.seek(self.offset)
            chunk = f.read()
        cut = chunk.rfind(b"\n") + 1  # whole lines only: the trainer may be writing the next
        self.offset += cut
        for line in chunk[:cut].decode("utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                self.record(row)

    def record(self, row: dict[str, Any]) -> None:
        step = row.get("step")
        if not isinstance(step, int):
            return
        if isinstance(row.get("tokens"), int):
            self.tokens = row["tokens"]
        if "loss" in row and step > self.last["train"]:
            self.last["train"], self.losses[step] = step, row["loss"]
            data = {
                "step": step,
                "train_loss": row["loss"],
                "learning_rate": row.get("lr"),
                "epoch": row.get("epoch"),
            }
            message = f"Step {step}: training loss={row['loss']:.4f}"
            store.add_event(self.root, self.job_id, message, data=data, kind="metrics")
        elif "eval_loss" in row and step > self.last["valid"]:
            self.last["valid"] = step
            data = {"step": step, "valid_loss": row["eval_loss"]}
            message = f"Step {step}: validation loss={row['eval_loss']:.4f}"
            store.add_event(self.root, self.job_id, message, data=data, kind="metrics")


def last_steps(root: Path, job_id: str) -> dict[str, int]:
    """The last training and validation steps this job's events already hold."""
    with store.connect(root) as db:
        rows = db.execute(
            "SELECT data FROM events WHERE job_id = ? AND type = 'metrics'", (job_id,)
        ).fetchall()
    last = {"train": 0, "valid": 0}
    for row in rows:
        data = json.loads(row["data"] or "{}")
        key = "train" if "train_loss" in data else "valid"
        last[key] = max(last[key], int(data.get("step") or 0))
    return last


def job_step(root: Path, job_id: str) -> str:
    """' at step N' for the job's last recorded training step, or ''."""
    step = last_steps(root, job_id)["train"]
    return f" at step {step}" if step else ""


ERROR = re.compile(r"^[A-Za-z_.]+(Error|Exception)\b")


def error_line(log_text: str) -> str | None:
    """The `error: ...` line the CLI prints for a SmoLoRAError, else a crash's exception line."""
    lines = [line.strip() for line in log_text.replace("\r", "\n").splitlines() if line.strip()]
    found = next((line for line in reversed(lines) if line.startswith("error:")), None)
    found = found or next((line for line in reversed(lines) if ERROR.match(line)), None)
    return found.removeprefix("error:").strip() if found else None
