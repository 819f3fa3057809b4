"""A job's progress read from its run's metrics.jsonl (queue/progress.py): one event per step,
through a resume that trims the file and logs the same steps again. No model: the files a
trainer writes, written by hand.

Run as:
    pytest -q tests/test_queue_progress.py
"""

from __future__ import annotations

import json

from smolora.queue import store
from smolora.queue.progress import Progress
from smolora.runs import METRICS_FILE
from smolora.train.checkpoints import trim_metrics


def row(step: int, speed: float) -> str:
    return json.dumps({"step": step, "loss": 5.0 - step / 100, "tokens_per_s": speed}) + "\n"


def a_run(tmp_path, rows: str):
    """A queue store and a run directory whose metrics.jsonl holds `rows`."""
    root = store.open_store(tmp_path / "jobs")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / METRICS_FILE).write_text(rows)
    return root, run_dir, run_dir / METRICS_FILE


def train_steps(root, job_id: str) -> list[int]:
    events, _ = store.list_events(root, job_id, limit=1000)
    return sorted(e["data"]["step"] for e in events if e["type"] == "metrics")


def test_a_resume_whose_rows_reach_past_the_old_position_loses_no_step(tmp_path):
    # The interrupted run logged steps 1-22 with long rows; the resume trims back to its
    # checkpoint (step 20) and logs 21-23 with shorter rows, so the new file is already longer
    # than the reader's old position when it looks again, and that position is inside row 23.
    root, run_dir, metrics = a_run(tmp_path, "".join(row(s, 123456.789) for s in range(1, 23)))
    progress = Progress(root, {"id": "ftjob-1"})
    progress.update(run_dir)
    assert train_steps(root, "ftjob-1") == list(range(1, 23))

    old_size = metrics.stat().st_size
    trim_metrics(run_dir, 20)  # what `train --resume` does first
    with open(metrics, "a", encoding="utf-8") as f:
        f.write("".join(row(s, 1.0) for s in (21, 22, 23)))
    assert metrics.stat().st_size - len(row(23, 1.0)) < old_size < metrics.stat().st_size
    progress.update(run_dir)
    assert train_steps(root, "ftjob-1") == list(range(1, 24))  # 21 and 22 once, 23 not lost


def test_a_watcher_started_after_the_stop_skips_recorded_steps_and_reads_a_growing_file(tmp_path):
    root, run_dir, metrics = a_run(tmp_path, "".join(row(s, 1.0) for s in range(1, 6)))
    Progress(root, {"id": "ftjob-2"}).update(run_dir)
    again = Progress(root, {"id": "ftjob-2"})  # the restarted UI's watcher of the resumed run
    trim_metrics(run_dir, 3)
    again.update(run_dir)
    with open(metrics, "a", encoding="utf-8") as f:
        f.write(row(4, 2.0) + row(5, 2.0) + row(6, 2.0) + '{"step": 7, "lo')  # 7: half written
    again.update(run_dir)
    assert train_steps(root, "ftjob-2") == [1, 2, 3, 4, 5, 6]
    with open(metrics, "a", encoding="utf-8") as f:
        f.write('ss": 4.9}\n')
    again.update(run_dir)
    assert train_steps(root, "ftjob-2") == [1, 2, 3, 4, 5, 6, 7]
