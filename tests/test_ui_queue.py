"""The UI on the workspace's job queue (ui/queued.py): Start queues, the list shows queued, running
and past jobs, the page's Stop cancels, a UI started again on the workspace lists them and resumes
the job the last one left, and a job's progress comes from its events. The HTTP API the page
uses, on the tiny model (a left-behind job is made by hand, as a SIGKILLed UI leaves one);
`smolora ui --jobs-workers` at the end.

Run as:
    pytest -q tests/test_ui_queue.py
"""

from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient

from helpers import UI_BASE, UI_HEADERS, UI_TOKEN, workspace_overrides
from smolora.queue import store
from smolora.ui import create_app
from smolora.ui.queued import QUEUE_DIR

STEPS = 150  # long enough to be still training when the test looks, and when the first UI stops
LONG = (f"train.max_steps={STEPS}", "train.save_every=10", "train.threads=1")


def client(ws, workers: int = 1) -> TestClient:
    return TestClient(create_app(ws, token=UI_TOKEN, workers=workers), base_url=UI_BASE, headers=UI_HEADERS)


def start(c: TestClient, name: str, *extra: str) -> dict:
    r = c.post("/api/train/start", json={"overrides": workspace_overrides(name, *extra)})
    assert r.status_code == 200, r.text
    return r.json()


def listed(c: TestClient) -> dict[str, dict]:
    return {j["name"]: j for j in c.get("/api/jobs?kind=train").json()["jobs"]}


def until(c: TestClient, job_id: str, done, what: str) -> dict:
    """The job once `done(job)` holds (the bound only turns a hang into a failure, not a timing)."""
    deadline = time.time() + 600
    job = c.get(f"/api/jobs/{job_id}").json()
    while not done(job):
        assert time.time() < deadline, f"{what}: {job}"
        time.sleep(0.3)
        job = c.get(f"/api/jobs/{job_id}").json()
    return job


def messages(job: dict) -> list[str]:
    """The newest events' messages, as GET /api/jobs/ID hands them over."""
    return [e["message"] for e in job["events"]]


def every_event(root, job_id: str) -> list[dict]:
    """All of a job's events, page by page from the queue, newest first."""
    found, after = [], None
    while True:
        page, more = store.list_events(root, job_id, after, 100)
        found += page
        if not more:
            return found
        after = page[-1]["id"]


def test_two_starts_queue_one_behind_the_other_and_a_restarted_ui_lists_and_resumes(ui_ws):
    with client(ui_ws) as c:
        first = start(c, "first", *LONG)
        second = start(c, "second", *LONG)
        assert first["state"] == second["state"] == "queued"
        assert first["command"] == "smolora train configs/first.yaml" and first["run_dir"] == "runs/first"
        checkpointed = lambda j: any(m.startswith("Checkpoint saved") for m in messages(j))  # noqa: E731
        until(c, first["id"], checkpointed, "the first job never saved a checkpoint")
        jobs = listed(c)
        # One worker: the first trains (its step and loss from its events), the second waits.
        assert jobs["first"]["state"] == "running" and jobs["first"]["step"] >= 10, jobs["first"]
        assert isinstance(jobs["first"]["loss"], float)
        assert jobs["second"]["state"] == "queued" and jobs["second"]["ahead"] == 0
        runs = {r["name"]: r["status"] for r in c.get("/api/runs").json()["runs"]}
        assert runs.get("first") == "running", runs  # the Runs table knows it from the queue
        cancelled = c.post(f"/api/jobs/{second['id']}/stop")  # the Runs view's cancel button
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "stopped"
        assert cancelled.json()["status"] == "cancelled"
    # The UI stopped: the running job stopped cleanly (a checkpoint) and waits in the queue.
    root = ui_ws / QUEUE_DIR
    assert store.get_job(root, first["id"])["status"] == "queued"

    with client(ui_ws) as again:  # a new UI on the same workspace
        jobs = listed(again)
        assert set(jobs) == {"first", "second"} and jobs["second"]["state"] == "stopped"
        done = until(again, first["id"], lambda j: j["state"] not in ("queued", "running"), "no end")
        assert done["state"] == "finished" and done["status"] == "succeeded", done
        assert done["step"] == STEPS and isinstance(done["loss"], float)
        events = every_event(root, first["id"])
        said = [e["message"] for e in events]
        resumed = next(i for i, m in enumerate(said) if m.startswith("Resuming from checkpoint-"))
        # A clean stop (one SIGTERM: a second means abort) saved a checkpoint at the step it ended on.
        before = [e["data"]["step"] for e in events[resumed:] if e["type"] == "metrics"]
        assert events[resumed]["data"]["step"] == max(before), said
        # Progress from the events: every training step once, resumed or not.
        steps = [e["data"]["step"] for e in events if e["type"] == "metrics" and "train_loss" in e["data"]]
        assert sorted(steps) == list(range(1, STEPS + 1))
        status = again.get(f"/api/train/status?job={first['id']}").json()
        assert status["state"] == "finished" and status["total_steps"] == STEPS and status["n_rows"] > 0
        assert (ui_ws / "runs" / "first" / "adapter").is_dir()


def test_a_job_a_dead_ui_left_running_is_queued_again_and_trains(ui_ws):
    with client(ui_ws, workers=0) as c:
        job = start(c, "orphan", "train.max_steps=6", "train.threads=1")
    # What a SIGKILLed UI leaves: running, owned by a process that is gone, no checkpoint yet.
    root = ui_ws / QUEUE_DIR
    store.update_job(root, job["id"], status="running", owner="999999999:gone", heartbeat=0.0, attempts=1)
    with client(ui_ws) as again:
        done = until(again, job["id"], lambda j: j["state"] not in ("queued", "running"), "no end")
        assert done["state"] == "finished" and done["attempts"] == 2 and done["step"] == 6, done
        said = [e["message"] for e in every_event(root, job["id"])]
        assert "The process running this job stopped; the job is queued again" in said, said
        assert "Restarting the job from the beginning: it saved no checkpoint" in said


def test_the_train_views_stop_cancels_the_running_job_and_keeps_a_checkpoint(ui_ws):
    with client(ui_ws) as c:
        job = start(c, "stopped", "train.max_steps=5000", "train.save_every=1000", "train.threads=1")
        until(c, job["id"], lambda j: j["state"] == "running" and j["step"], "no step recorded")
        view = c.get("/api/train/status").json()  # no ?job: the one training now
        assert view["id"] == job["id"] and view["state"] == "running" and view["pid"]
        assert c.get("/api/system").json()["training_rss"]  # its process, measured
        r = c.post(f"/api/train/stop?job={job['id']}")
        assert r.status_code == 200 and r.json()["state"] in ("stopping", "stopped")
        done = until(c, job["id"], lambda j: j["state"] == "stopped", "the stop did not end it")
        kept = re.search(r"Job cancelled; (checkpoint-\d+) kept", " ".join(messages(done)))
        assert kept, messages(done)
        assert kept.group(1) in c.get("/api/train/status").json()["checkpoints"]  # what the Train view lists


def test_one_run_directory_is_queued_once_and_without_workers_jobs_wait(ui_ws):
    with client(ui_ws, workers=0) as c:
        assert c.app.state.ui.handle is None
        assert c.get("/api/train/status").json() == {"state": "idle"}
        job = start(c, "twice")
        again = c.post("/api/train/start", json={"overrides": workspace_overrides("twice")})
        assert again.status_code == 409 and "runs/twice is already queued" in again.json()["error"]
        other = start(c, "other")
        assert other["ahead"] == 1
        status = c.get(f"/api/train/status?job={job['id']}").json()
        assert status["state"] == "queued" and status["rows"] == [] and status["ahead"] == 0
        assert c.get("/api/train/status?job=ftjob-" + "0" * 24).status_code == 404
        assert c.get("/api/jobs/ftjob-" + "0" * 24).status_code == 404
        assert c.post("/api/train/stop?job=not-a-job").status_code == 404
        stopped = c.post("/api/train/stop", params={"job": job["id"]}).json()
        assert stopped["state"] == "stopped" and "Job cancelled" in messages(stopped)
        assert listed(c)["other"]["ahead"] == 0  # nothing ahead of it now
        assert c.post("/api/train/start", json={"overrides": workspace_overrides("twice")}).status_code == 200


def test_a_start_while_another_is_being_queued_waits_for_it(ui_ws, monkeypatch):
    import threading

    from smolora.ui import queued

    entered, release = threading.Event(), threading.Event()
    real = queued.submit_training

    def slow(*args, **kwargs):
        entered.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(queued, "submit_training", slow)
    body = {"overrides": workspace_overrides("double")}
    with client(ui_ws, workers=0) as c:
        answers: list = []
        post = lambda: answers.append(c.post("/api/train/start", json=body))  # noqa: E731
        threads = [threading.Thread(target=post) for _ in range(2)]
        threads[0].start()
        assert entered.wait(30)
        threads[1].start()  # a double click: it waits for the first, then finds its job queued
        time.sleep(0.5)  # time to reach the lock; had it not, it must still get the 409
        release.set()
        for t in threads:
            t.join(60)
        assert sorted(r.status_code for r in answers) == [200, 409]
        assert len(listed(c)) == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_cli_ui_jobs_workers(ui_ws, monkeypatch, workers):
    import uvicorn
    from typer.testing import CliRunner

    from smolora.cli.main import app

    apps: list = []
    monkeypatch.setattr(uvicorn, "run", lambda served, **kw: apps.append(served))
    monkeypatch.chdir(ui_ws)  # `smolora ui` changes into the workspace; put the test back after
    args = ["ui", "--workspace", str(ui_ws), "--jobs-workers", str(workers)]
    r = CliRunner().invoke(app, args, env={"SMOLORA_UI_TOKEN": UI_TOKEN})
    assert r.exit_code == 0, r.output
    with TestClient(apps[0], base_url=UI_BASE, headers=UI_HEADERS) as c:
        handle = c.app.state.ui.handle
        assert (handle is None) if workers == 0 else len(handle["threads"]) == workers
    bad = CliRunner().invoke(app, ["ui", "--workspace", str(ui_ws), "--jobs-workers", "-1"])
    assert bad.exit_code == 2 and "--jobs-workers" in bad.output
