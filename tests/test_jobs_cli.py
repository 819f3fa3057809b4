"""`smolora jobs list | show | cancel` on a queue, and the queue's worker in this process running a
config job (the UI's kind) through `smolora train`: events per step, cancel from the CLI keeps a checkpoint."""

from __future__ import annotations

import subprocess
import sys
import time

from typer.testing import CliRunner

from helpers import tiny_overrides
from smolora.cli.main import app
from smolora.errors import SmoLoRAError
from smolora.queue import store
from smolora.queue.submit import submit
from smolora.queue.worker import start_workers, stop_workers

runner = CliRunner()


def config_job(root, tiny_model_dir, qa_file, tmp_path, *extra: str) -> dict:
    """A queued job of the tiny run's settings, as the UI submits one: a whole config, no uploads."""
    from smolora.config import apply_overrides

    data = apply_overrides({}, tiny_overrides(tiny_model_dir, qa_file, tmp_path, "train.threads=1", *extra))
    return submit(root, None, data, {"model": str(tiny_model_dir)}, cwd=tmp_path)


def cli(*args: str):
    return runner.invoke(app, ["jobs", *args], catch_exceptions=True)


def test_list_show_cancel_a_queued_job(tmp_path, tiny_model_dir, qa_file):
    root = store.open_store(tmp_path / "jobs")
    first = config_job(root, tiny_model_dir, qa_file, tmp_path)
    second = config_job(root, tiny_model_dir, qa_file, tmp_path, "output.name=other")
    r = cli("list", "--jobs-dir", str(root))
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "MODEL", "FINE-TUNED", "MODEL", "/", "RUN", "CREATED"]
    assert [line.split()[:2] for line in lines[1:]] == [[second["id"], "queued"], [first["id"], "queued"]]
    assert str(tmp_path / "runs" / "other") in lines[1]
    r = cli("list", "--jobs-dir", str(root), "--limit", "1")
    assert first["id"] not in r.output and "more jobs than --limit 1" in r.output
    r = cli("cancel", first["id"], "--jobs-dir", str(root))
    assert r.exit_code == 0 and f"cancelled {first['id']}" in r.output
    assert store.get_job(root, first["id"])["status"] == "cancelled"
    r = cli("show", first["id"], "--jobs-dir", str(root), "--events", "1")
    assert r.exit_code == 0, r.output
    assert "status: cancelled" in r.output and "Job cancelled" in r.output and "Created" not in r.output
    r = cli("cancel", first["id"], "--jobs-dir", str(root))
    assert isinstance(r.exception, SmoLoRAError) and "already cancelled" in str(r.exception)
    r = cli("show", "ftjob-nope", "--jobs-dir", str(root))
    assert isinstance(r.exception, SmoLoRAError) and "no job 'ftjob-nope'" in str(r.exception)


def test_no_queue_is_exit_2_naming_the_place(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "smolora.cli.main", "jobs", "list", "--jobs-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no job queue at" in r.stderr and "--jobs-dir" in r.stderr
    r = cli("list")  # the default place: SMOLORA_HOME/jobs, empty in this test's home
    assert isinstance(r.exception, SmoLoRAError) and "smolora-home/jobs" in str(r.exception)


def wait(root, job_id, until):
    while not until(store.get_job(root, job_id)):
        time.sleep(0.1)
    return store.get_job(root, job_id)


def test_a_worker_trains_a_config_job_and_the_cli_cancels_it(tmp_path, tiny_model_dir, qa_file):
    steps = 200
    root = store.open_store(tmp_path / "jobs")
    job = config_job(root, tiny_model_dir, qa_file, tmp_path, f"train.max_steps={steps}")
    workers = start_workers(root, n=1)
    try:
        while not list((tmp_path / "runs" / "tiny" / "checkpoints").glob("checkpoint-*")):
            time.sleep(0.05)
        wait(root, job["id"], lambda j: j["status"] == "running")
        r = cli("cancel", job["id"], "--jobs-dir", str(root))
        assert r.exit_code == 0 and "cancelling" in r.output, r.output
        done = wait(root, job["id"], lambda j: j["status"] in store.DONE)
    finally:
        stop_workers(workers)
    events, _ = store.list_events(root, job["id"], limit=500)
    said = [e["message"] for e in events][::-1]
    assert done["status"] == "cancelled", said
    assert "Cancellation requested" in said and said[-1].startswith("Job cancelled; checkpoint-")
    steps_seen = [e["data"]["step"] for e in events if e["type"] == "metrics"]
    assert steps_seen and max(steps_seen) < steps
    checkpoints, _ = store.list_checkpoints(root, job["id"])
    assert checkpoints and checkpoints[0]["path"].startswith(str(tmp_path / "runs" / "tiny"))


def test_serve_refuses_a_missing_jobs_config_before_loading(tiny_run, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "smolora.cli.main",
            "serve",
            str(tiny_run),
            "--jobs-config",
            str(tmp_path / "no.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--jobs-config" in r.stderr and "no such file" in r.stderr
