"""A job into the queue: its config resolved and validated now, written into the job's directory.

A job's `config.yaml` is a whole run config (the template the caller names, with the caller's
updates merged in), so a worker in any process (the server, the UI, after a restart) runs it
with `smolora train` and nothing else. A bad update is a ConfigError here, before anything is
queued; data files an API job names are written beside the config when the job starts.

Run as:
    job = submit(root, Path("runs/quickstart/config.yaml"), {"train": {"epochs": 2}}, {"model": "smollm2-135m"})
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from smolora.config import build_config, deep_merge, load_config, save_config
from smolora.queue.store import JOBS_DIR, RUNS_DIR, add_job, get_job, new_id

CONFIG = "config.yaml"
TRAIN_DATA = "train.jsonl"  # an API job's training file, as the recipe reads it
VALID_DATA = "valid.jsonl"
LOG = "train.log"  # what the training process prints


def job_dir(root: Path, job_id: str) -> Path:
    return Path(root) / JOBS_DIR / job_id


def submit(
    root: Path,
    template: Path | None,
    updates: dict[str, Any],
    fields: dict[str, Any],
    cwd: Path | None = None,
    api: bool = False,
) -> dict[str, Any]:
    """Queue one job; the job as stored. `api`: the run goes to root/runs/<id> and its data
    paths point at the job's own files (written when it starts)."""
    job_id = new_id("ftjob")
    folder = job_dir(root, job_id)
    data = load_config(template).to_dict() if template else load_config(None).to_dict()
    if api:
        # The uploads' shapes, not whatever columns, template or streaming the template's data had.
        files = {"path": str(folder / TRAIN_DATA), "format": "auto", "fields": {}, "template": None}
        files.update(max_examples=None, split="train", streaming=False, task="sft")
        files["val_path"] = str(folder / VALID_DATA) if fields.get("validation_file") else None
        own = {"data": files, "output": {"dir": str(Path(root).resolve() / RUNS_DIR), "name": job_id}}
        updates = deep_merge(updates, own)
    cfg = build_config(deep_merge(data, updates), "fine-tuning job")  # a ConfigError lists every problem
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{CONFIG}.tmp-{os.getpid()}"
    save_config(cfg, tmp)
    os.replace(tmp, folder / CONFIG)  # a worker never reads half a config
    run_dir = cfg.run_dir if cfg.run_dir.is_absolute() else (cwd or Path.cwd()) / cfg.run_dir
    columns = {"config": str(folder / CONFIG), "cwd": str(cwd or Path.cwd()), "run_dir": str(run_dir)}
    add_job(root, {"source": "api" if api else "ui", **fields, **columns}, job_id)
    return get_job(root, job_id)
