"""The fine-tuning job queue: jobs, their events and checkpoints in SQLite, run by worker threads.

`store.py` (the database: files, jobs, events, checkpoints, the state a job is in), `files.py`
(uploaded JSONL files: checked on upload, written out for training), `worker.py` (runs queued
jobs as `smolora train` subprocesses, records what they log, resumes a job a dead process left).
`smolora serve` (OpenAI's fine-tuning API), `smolora ui` and `smolora jobs` use the same database.

Run as:
    db = store.open_store(Path("jobs"))
    job_id = store.add_job(db, config_path, model="smollm2-135m")
    workers = worker.start_workers(db, n=1)
"""
