"""OpenAI's fine-tuning API on a real `smolora serve` subprocess of the tiny run, through the real
`openai` client: upload, create, poll to succeeded, events, chat with ft:...; cancel; SIGKILL the
server mid-job, start it again and see the job resume and succeed; malformed uploads; jobs that
name a missing file or model fail with a clear event. The tiny run's config is the template
(batch 4, a checkpoint every 4 steps): 24 rows make 6 steps an epoch."""

from __future__ import annotations

import json
import signal
import time

import httpx
import openai
import pytest

from helpers import start_server

KEY = "jobs-key"
ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {i} plus one?"},
            {"role": "assistant", "content": f"It is {i + 1}."},
        ]
    }
    for i in range(24)
]
PAIRS = [
    {
        "input": {"messages": [{"role": "user", "content": f"What is {i} plus one?"}]},
        "preferred_output": [{"role": "assistant", "content": f"It is {i + 1}."}],
        "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
    }
    for i in range(8)
]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jobs")


def serve(tiny_run, tmp_path_factory, jobs_dir):
    flags = ("--jobs-dir", str(jobs_dir), "--jobs-workers", "2", "--api-key", KEY, "--rate-limit", "0")
    return start_server(tiny_run, tmp_path_factory, *flags, "--max-file-mb", "1")


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory, jobs_dir):
    box = {}
    box["proc"], box["url"], box["log"] = serve(tiny_run, tmp_path_factory, jobs_dir)
    yield box
    box["proc"].terminate()
    box["proc"].wait(timeout=60)


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server['url']}/v1", api_key=KEY, max_retries=0)


def base_of(c: openai.OpenAI) -> str:
    return c.models.list().data[0].id  # the served base comes first


def upload(c: openai.OpenAI, data: bytes, name: str = "train.jsonl"):
    return c.files.create(file=(name, data), purpose="fine-tune")


def wait_for(c: openai.OpenAI, job_id: str, states=("succeeded", "failed", "cancelled")):
    while (job := c.fine_tuning.jobs.retrieve(job_id)).status not in states:
        time.sleep(0.2)
    return job


def messages(c: openai.OpenAI, job_id: str) -> list[str]:
    return [e.message for e in c.fine_tuning.jobs.list_events(job_id, limit=100)][::-1]  # every page


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (jsonl(ROWS[:2]) + b'{"messages": [oops\n', "line 3: not valid JSON"),
        (
            jsonl(ROWS[:1]) + b'{"messages": [{"role": "robot", "content": "hi"}]}\n',
            "line 2: unknown role 'robot'",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi"}]}\n',
            "line 1: a conversation needs a user turn and an assistant",
        ),
        (b"\n\n", "the file is empty"),
        (
            jsonl([PAIRS[0], {**PAIRS[1], "non_preferred_output": PAIRS[1]["preferred_output"]}]),
            "line 2: preferred_output",
        ),
    ],
)
def test_malformed_uploads_are_400s_naming_the_line(server, data, expected):
    with pytest.raises(openai.BadRequestError) as e:
        upload(client(server), data)
    assert e.value.status_code == 400 and e.value.body["param"] == "file"
    assert expected in e.value.body["message"], e.value.body


def test_upload_refusals_and_file_routes(server):
    c, url, auth = client(server), server["url"], {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(
        f"{url}/v1/files", files={"file": ("a.jsonl", jsonl(ROWS))}, data={"purpose": "batch"}, headers=auth
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = httpx.post(
        f"{url}/v1/files",
        files={"file": ("a.jsonl", b"x" * (1 << 20 + 1))},
        data={"purpose": "fine-tune"},
        headers=auth,
    )
    assert r.status_code == 413  # --max-file-mb 1
    assert httpx.get(f"{url}/v1/files", headers={"Authorization": "Bearer wrong"}).status_code == 401
    f = upload(c, jsonl(ROWS[:3]), "three.jsonl")
    assert f.id.startswith("file-") and f.filename == "three.jsonl" and f.bytes == len(jsonl(ROWS[:3]))
    assert f.id in [x.id for x in c.files.list().data]
    assert c.files.content(f.id).read() == jsonl(ROWS[:3])
    assert c.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve("../../jobs.db")


def test_jobs_on_a_missing_file_or_model_fail_with_a_clear_event(server):
    c = client(server)
    base, good = base_of(c), upload(c, jsonl(ROWS)).id
    cases = [
        ({"model": base, "training_file": "file-" + "0" * 24}, "does not exist"),
        ({"model": "no-such-model", "training_file": good}, "model 'no-such-model' is not served here"),
        (
            {"model": base, "training_file": good, "method": {"type": "dpo"}},
            "method dpo needs preference pairs",
        ),
    ]
    for body, expected in cases:
        job = wait_for(c, c.fine_tuning.jobs.create(**body).id)
        assert job.status == "failed" and expected in job.error.message, job
        assert any(expected in m for m in messages(c, job.id))
    with pytest.raises(openai.BadRequestError):  # not a run of the template: refused at once
        c.fine_tuning.jobs.create(model=base, training_file=good, hyperparameters={"n_epochs": 0})
    with pytest.raises(openai.NotFoundError):
        c.fine_tuning.jobs.retrieve("ftjob-" + "0" * 24)


def test_the_whole_cycle_then_cancel_a_second_job(server):
    c = client(server)
    base = base_of(c)
    train, valid = upload(c, jsonl(ROWS)), upload(c, jsonl(ROWS[:4]), "valid.jsonl")
    job = c.fine_tuning.jobs.create(
        model=base,
        training_file=train.id,
        validation_file=valid.id,
        suffix="qa",
        seed=3,
        hyperparameters={"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2.0},
    )
    assert job.object == "fine_tuning.job" and job.status in ("queued", "running")
    long = c.fine_tuning.jobs.create(model=base, training_file=train.id, hyperparameters={"n_epochs": 100})
    pairs = upload(c, jsonl(PAIRS), "pairs.jsonl")
    dpo = c.fine_tuning.jobs.create(
        model=base,
        training_file=pairs.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}},
    )
    while not [e for e in c.fine_tuning.jobs.list_events(long.id).data if e.type == "metrics"]:
        time.sleep(0.2)  # the second worker trains it beside the first job
    cancelled = c.fine_tuning.jobs.cancel(long.id)
    assert cancelled.id == long.id
    done = wait_for(c, job.id)
    assert done.status == "succeeded", messages(c, job.id)
    assert (
        done.fine_tuned_model == f"ft:{base.rsplit('/', 1)[-1]}:qa:{job.id[6:18]}" and done.trained_tokens > 0
    )
    events = c.fine_tuning.jobs.list_events(job.id, limit=100).data
    steps = [e.data["step"] for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    assert any("valid_loss" in e.data for e in events)
    assert [p.step_number for p in c.fine_tuning.jobs.checkpoints.list(job.id).data] == [6, 4]
    page = c.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    assert done.fine_tuned_model in [m.id for m in c.models.list().data]
    answer = c.chat.completions.create(
        model=done.fine_tuned_model,
        messages=[{"role": "user", "content": "What is 3 plus one?"}],
        max_tokens=4,
    )
    assert answer.model == done.fine_tuned_model and answer.choices[0].finish_reason in ("stop", "length")
    stopped = wait_for(c, long.id)
    assert stopped.status == "cancelled" and "Job cancelled" in messages(c, long.id)[-1]
    assert wait_for(c, dpo.id).status == "succeeded", messages(c, dpo.id)
    listed = c.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in listed.data] == [dpo.id, long.id] and listed.has_more
    assert c.fine_tuning.jobs.list(after=long.id, limit=1).data[0].id == job.id
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.cancel(job.id)  # succeeded: nothing to cancel


def test_a_job_resumes_after_the_server_is_killed(server, tiny_run, tmp_path_factory, jobs_dir):
    c = client(server)
    train = upload(c, jsonl(ROWS))
    job = c.fine_tuning.jobs.create(model=base_of(c), training_file=train.id, hyperparameters={"n_epochs": 5})
    checkpoints = jobs_dir / "runs" / job.id / "checkpoints"
    while not list(checkpoints.glob("checkpoint-*")):
        time.sleep(0.05)
    server["proc"].send_signal(signal.SIGKILL)  # no shutdown: the job is left 'running'
    server["proc"].wait(timeout=30)
    server["proc"], server["url"], server["log"] = serve(tiny_run, tmp_path_factory, jobs_dir)
    c = client(server)
    done = wait_for(c, job.id)
    said = messages(c, job.id)
    assert done.status == "succeeded", said
    assert any(m.startswith("The process running this job stopped") for m in said)
    assert any(m.startswith("Resuming from checkpoint-") for m in said), said
    events = list(c.fine_tuning.jobs.list_events(job.id, limit=7))  # paged through, 7 at a time
    steps = sorted(e.data["step"] for e in events if e.type == "metrics" and "train_loss" in e.data)
    assert steps == list(range(1, 31)), "every step once, across the restart"
    served = [m.id for m in c.models.list().data]
    assert done.fine_tuned_model in served
