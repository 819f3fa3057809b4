"""One request cannot hurt the others: admission by rows, greedy tiny temperatures, validated content,
empty prompts, plain-request disconnects, the per-client queue share, stop-string caps, bounded
rate-limit memory, trusted proxies only, /health behind the key, null as the default, and every
error in OpenAI's shape. Most run on a real `smolora serve` subprocess; a few in-process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

from helpers import start_server
from smolora.serve.batching import Job, RowSampling, Served, cancel, submit
from smolora.serve.limits import RateLimiter

KEY = "hardening-key"
USER = [{"role": "user", "content": "What is 3 plus one?"}]


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    """Loopback is a trusted proxy here, so each test speaks as its own client (X-Forwarded-For)."""
    flags = ["--api-key", KEY, "--forwarded-allow-ips", "127.0.0.1", "--rate-limit", "20", "--max-batch", "4"]
    proc, url, log = start_server(tiny_run, tmp_path_factory, *flags)
    yield {"url": url, "proc": proc, "log": log}
    proc.terminate()
    proc.wait(timeout=30)


def post(server, path, body, client="10.0.0.1", timeout=60, key=KEY):
    headers = {"Content-Type": "application/json", "X-Forwarded-For": client}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(f"{server['url']}{path}", content=content, headers=headers, timeout=timeout)


def health(server, key=KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{server['url']}/health", headers=headers, timeout=10).json()


def is_openai_error(r, status, param="any"):
    """The response is `status` with OpenAI's error body, naming `param` when given."""
    error = r.json()["error"]
    assert r.status_code == status, r.text
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert "Traceback" not in r.text
    if param != "any":
        assert error["param"] == param, error
    return error


# --- admission: rows, n, the list cap, the per-client share -----------------------------------


def test_a_prompt_list_over_the_cap_is_refused_naming_prompt(server):
    """The list is capped before any tokenising (it skipped the queue cap and froze the loop)."""
    body = {"model": "tiny", "prompt": ["a"] * 65, "max_tokens": 1}
    is_openai_error(post(server, "/v1/completions", body, client="10.0.1.1"), 400, "prompt")
    body = {"model": "tiny", "prompt": ["a"] * 200_000, "max_tokens": 1}  # the 260k-list attack, in 800 KB
    is_openai_error(post(server, "/v1/completions", body, client="10.0.1.1"), 400, "prompt")
    assert health(server)["queued"] == 0


def test_rows_are_prompts_times_n(server):
    body = {
        "model": "tiny",
        "prompt": ["The capital of", "Write a"],
        "n": 3,
        "max_tokens": 2,
        "temperature": 0,
    }
    r = post(server, "/v1/completions", body, client="10.0.1.2")
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    assert choices[0]["text"] == choices[1]["text"] == choices[2]["text"]  # greedy: same answer per prompt
    single = post(server, "/v1/completions", {**body, "n": 1}, client="10.0.1.2").json()
    assert r.json()["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]  # prompts counted once
    # 64 prompts x n=3 is more than one client's share of the queue (128): a 400, retrying cannot help
    too_many = {**body, "prompt": ["a"] * 64}
    error = is_openai_error(post(server, "/v1/completions", too_many, client="10.0.1.2"), 400, "n")
    assert error["code"] == "too_many_completions"
    # n > 1 streams too: every chunk names its choice, and each choice finishes once
    stream = {"model": "tiny", "messages": USER, "n": 2, "stream": True, "max_tokens": 3}
    r = post(server, "/v1/chat/completions", stream, client="10.0.1.2")
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    finished = [c["index"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]]
    assert sorted(finished) == [0, 1], r.text


def fake_job(model: str, client: str) -> Job:
    return Job(model, [1], 1, 0.0, 1.0, [], False, loop=None, client=client)  # type: ignore[arg-type]


def test_one_client_gets_at_most_half_the_queue():
    from smolora.serve.batching import queued
    from smolora.serve.jobs import admit
    from smolora.serve.openai import APIError

    served = Served(model=None, tokenizer=None, names={}, default="x", max_queue=8)
    served.wake = asyncio.Event()
    jobs = [fake_job("x", "greedy") for _ in range(4)]
    for job in jobs:
        admit(served, "greedy", 1, "prompt")
        submit(served, job)
    with pytest.raises(APIError) as refused:
        admit(served, "greedy", 1, "prompt")
    assert refused.value.status == 429 and refused.value.code == "client_queue_full"
    assert refused.value.headers == {"Retry-After": "1"}
    admit(served, "polite", 4, "prompt")  # another client still has its room
    for _ in range(4):
        submit(served, fake_job("x", "polite"))
    with pytest.raises(APIError) as full:
        admit(served, "third", 1, "prompt")
    assert full.value.code == "queue_full"
    with pytest.raises(APIError) as never:
        admit(served, "third", 5, "n")
    assert never.value.status == 400 and never.value.param == "n"
    cancel(served, jobs[0])  # a cancelled job leaves the queue and the client's count at once
    assert queued(served) == 7 and served.waiting["greedy"] == 3
    admit(served, "greedy", 1, "prompt")


def test_batches_take_the_oldest_model_first_without_rescanning():
    from smolora.serve.batching import take_batch

    served = Served(model=None, tokenizer=None, names={}, default="a", max_batch=2)
    served.wake = asyncio.Event()
    jobs = [fake_job(m, "c") for m in ["a", "b", "a", "a", "b"]]
    for job in jobs:
        submit(served, job)
    cancel(served, jobs[2])
    assert take_batch(served) == [jobs[0], jobs[3]]
    assert take_batch(served) == [jobs[1], jobs[4]]
    assert served.pending == {} and served.waiting == {}


# --- sampling, content, empty prompts, stop strings ----------------------------------------------


def test_a_tiny_temperature_is_greedy_not_nan():
    scores = torch.tensor([[1.0, 3.0, 2.0], [0.5, 0.1, 0.2]])
    out = RowSampling(torch.tensor([1e-40, 1e-6]), torch.tensor([1.0, 1.0]))(None, scores)
    assert not out.isnan().any()
    assert out.argmax(-1).tolist() == [1, 0] and (out.isinf().sum(-1) == 2).all()  # one-hot on the best


def test_a_tiny_temperature_does_not_fail_its_batch(server):
    results = {}

    def ask(name, temperature):
        body = {"model": "tiny", "messages": USER, "max_tokens": 4, "temperature": temperature}
        results[name] = post(server, "/v1/chat/completions", body, client=f"10.0.2.{len(name)}")

    threads = [threading.Thread(target=ask, args=a) for a in [("t", 1e-40), ("zero", 0), ("warm", 0.8)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {k: r.status_code for k, r in results.items()} == {"t": 200, "zero": 200, "warm": 200}
    text = {k: r.json()["choices"][0]["message"]["content"] for k, r in results.items()}
    assert text["t"] == text["zero"]


@pytest.mark.parametrize(
    "content, param",
    [
        ([{"type": "text", "text": 5}], "messages.0.content.0.text"),
        ([{"type": "text", "text": None}], "messages.0.content.0.text"),
        ([{"type": "text"}], "messages.0.content.0.text"),
        ([{"type": "image_url", "image_url": {"url": "x"}}], "messages.0.content.0.type"),
        (["just a string"], "messages.0.content.0"),
        (7, "messages.0.content"),
    ],
)
def test_content_parts_are_validated(server, content, param):
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2}
    is_openai_error(post(server, "/v1/chat/completions", body, client="10.0.3.1"), 400, param)


def test_text_content_parts_are_joined(server):
    parts = [{"type": "text", "text": "What is 3 "}, {"type": "text", "text": "plus one?"}]
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": 3,
        "temperature": 0,
    }
    joined = post(server, "/v1/chat/completions", body, client="10.0.3.2").json()
    plain = post(server, "/v1/chat/completions", {**body, "messages": USER}, client="10.0.3.2").json()
    assert joined["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": ["ok", ""]}, "prompt.1"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}]}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": []}]}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]}, "messages"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
    ],
)
def test_empty_prompts_are_refused(server, path, body, param):
    is_openai_error(post(server, path, {"model": "tiny", **body}, client="10.0.4.1"), 400, param)


@pytest.mark.parametrize("stop", [["a", "b", "c", "d", "e"], "x" * 257, ["ok", "y" * 257], [""]])
def test_stop_strings_are_capped(server, stop):
    body = {"model": "tiny", "messages": USER, "max_tokens": 2, "stop": stop}
    error = is_openai_error(post(server, "/v1/chat/completions", body, client="10.0.5.1"), 400)
    assert error["param"].startswith("stop")


def test_the_longest_stop_string_allowed_still_works(server):
    body = {"model": "tiny", "messages": USER, "max_tokens": 3, "stop": ["z" * 256, "q" * 256]}
    assert post(server, "/v1/chat/completions", body, client="10.0.5.2").status_code == 200


# --- null means the default ------------------------------------------------------------------

NULLS = {"temperature": None, "top_p": None, "n": None, "stream": None, "max_tokens": None, "stop": None}
NULLS |= {"stream_options": None, "ignore_eos": None, "model": None}


def test_null_means_the_default(server):
    chat = {"messages": USER, **NULLS, "max_completion_tokens": None, "logprobs": None, "tools": None}
    r = post(server, "/v1/chat/completions", chat, client="10.0.6.1")
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "tiny" and r.json()["object"] == "chat.completion"
    plain = {"prompt": "The capital of", **NULLS, "echo": None, "logprobs": None, "best_of": None}
    r = post(server, "/v1/completions", plain, client="10.0.6.1")
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 16  # null max_tokens is OpenAI's 16 for completions
    with_content = {"messages": [{"role": "system", "content": None}, *USER]}
    assert post(server, "/v1/chat/completions", with_content, client="10.0.6.1").status_code == 200


# --- disconnects, health, trusted proxies, error shapes ---------------------------------------


def test_a_plain_request_whose_client_leaves_stops_decoding(server):
    """Not streamed, all four rows decoding (--max-batch 4): tokens flow every few milliseconds, and
    the old check ran only after a second without one, so these rows decoded all 480 tokens (~8 s)."""
    before = health(server)
    body = {"model": "tiny", "prompt": ["Write a"] * 4, "max_tokens": 480, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        post(server, "/v1/completions", body, client="10.0.7.1", timeout=0.5)
    while True:  # the rows end one way or the other
        state = health(server)
        ended = state["cancelled"] + state["completed"] - before["cancelled"] - before["completed"]
        if ended >= 4:
            break
        time.sleep(0.1)
    assert state["cancelled"] - before["cancelled"] == 4


def test_health_names_models_only_with_the_key(server):
    anonymous = health(server, key=None)
    assert anonymous["status"] == "ok" and "models" not in anonymous and "tiny" not in json.dumps(anonymous)
    assert "tiny" in health(server)["models"]


def test_forwarded_for_counts_from_a_trusted_proxy(server):
    codes = [
        httpx.get(
            f"{server['url']}/v1/models", headers={"X-Forwarded-For": "10.0.8.1"}, timeout=10
        ).status_code
        for _ in range(30)
    ]
    assert codes[:20] == [401] * 20 and 429 in codes  # 20 a minute for that client (one more per 3 s)
    other = httpx.get(f"{server['url']}/v1/models", headers={"X-Forwarded-For": "10.0.8.2"}, timeout=10)
    assert other.status_code == 401  # another client behind the proxy has its own bucket
    is_openai_error(other, 401)


def test_a_bad_forwarded_allow_ips_is_refused_before_loading():
    cmd = [
        sys.executable,
        "-m",
        "smolora.cli.main",
        "serve",
        "no-such-run",
        "--forwarded-allow-ips",
        "10.0.0.1,nonsense",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--forwarded-allow-ips" in r.stderr and "nonsense" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_routes_and_methods_answer_in_openai_shape(server):
    r = httpx.get(f"{server['url']}/v1/nope", timeout=10)
    assert is_openai_error(r, 404)["code"] == "not_found"
    r = httpx.get(f"{server['url']}/v1/chat/completions", timeout=10)
    assert is_openai_error(r, 405)["code"] == "method_not_allowed" and "POST" in r.headers["allow"]
    r = httpx.post(
        f"{server['url']}/v1/completions", content=b"x" * 2_000_000, headers={"X-Forwarded-For": "10.0.9.1"}
    )
    is_openai_error(r, 413)
    assert server["proc"].poll() is None


# --- in-process: the tokeniser's thread, an unexpected error's 500 ---------------------------------


class WatchedTokenizer:
    """The real tokenizer, remembering the thread of each call; 'boom' fails like an unexpected bug."""

    def __init__(self, tok):
        self.tok, self.threads = tok, []

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __call__(self, text, *args, **kwargs):
        self.threads.append(threading.current_thread().name)
        if text == "boom":
            raise RuntimeError("secret detail /home/someone/data.jsonl")
        return self.tok(text, *args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        self.threads.append(threading.current_thread().name)
        return self.tok.apply_chat_template(*args, **kwargs)


def test_prompts_are_tokenised_off_the_event_loop_and_a_crash_leaks_nothing(tiny_run):
    from fastapi.testclient import TestClient

    from smolora.serve.app import create_app
    from smolora.serve.load import load_served

    torch.set_num_threads(1)
    served = load_served(str(tiny_run), device="cpu")
    served.tokenizer = WatchedTokenizer(served.tokenizer)
    with TestClient(create_app(served), raise_server_exceptions=False) as http:
        assert http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2}).status_code == 200
        assert http.post("/v1/completions", json={"prompt": "Write a", "max_tokens": 2}).status_code == 200
        crash = http.post("/v1/completions", json={"prompt": "boom", "max_tokens": 2})
    assert served.tokenizer.threads and all(
        t.startswith("smolora-tokenize") for t in served.tokenizer.threads
    )
    error = is_openai_error(crash, 500)
    assert (
        error["code"] == "internal_error" and "secret" not in crash.text and "RuntimeError" not in crash.text
    )


@pytest.mark.parametrize(
    "batching, target", [("static", "batching.run_batch"), ("continuous", "engine.Engine.prefill")]
)
def test_a_failed_batch_answers_with_a_reference_not_the_exception(tiny_run, monkeypatch, batching, target):
    from fastapi.testclient import TestClient

    from smolora.serve.app import create_app
    from smolora.serve.load import load_served

    def broken(*args):
        raise RuntimeError("secret shape mismatch in /home/someone/model")

    monkeypatch.setattr(f"smolora.serve.{target}", broken)
    served = load_served(str(tiny_run), device="cpu")
    served.batching = batching
    with TestClient(create_app(served), raise_server_exceptions=False) as http:
        r = http.post("/v1/completions", json={"prompt": "Write a", "max_tokens": 2})
        alive = http.get("/health").status_code
    error = is_openai_error(r, 500)
    assert error["code"] == "generation_failed" and "(ref " in error["message"]
    assert "secret" not in r.text and "/home/someone" not in r.text and alive == 200


# --- rate-limit memory ---------------------------------------------------------------------


def test_rate_limit_buckets_are_bounded_and_pruned_by_age(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("smolora.serve.limits.time.monotonic", lambda: now[0])
    limiter = RateLimiter(per_minute=60, max_clients=100)
    for i in range(1000):  # many addresses, each seen once: memory stays at the cap
        assert limiter.take(f"10.0.{i // 256}.{i % 256}") is None
    assert len(limiter.buckets) == 100
    now[0] += 61  # a full refill later every bucket is as good as new: all forgotten on the next take
    assert limiter.take("10.9.9.9") is None and list(limiter.buckets) == ["10.9.9.9"]
    for _ in range(59):
        limiter.take("10.9.9.9")
    assert limiter.take("10.9.9.9") is not None  # pruning never forgets a client still refilling
