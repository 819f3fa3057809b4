"""`smolora serve` as a real subprocess on tiny runs, driven by the real `openai` client (and httpx for raw HTTP)."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time

import httpx
import openai
import pytest
import torch

from helpers import other_adapter, start_server

KEY = "test-key"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run):
    """The shared tiny run, and a second adapter made from it in a folder of its own."""
    return tiny_run, other_adapter(tiny_run, tmp_path_factory.mktemp("serve-runs"))


@pytest.fixture(scope="module")
def server(runs, tiny_model_dir, tmp_path_factory):
    """One server for the module: two adapters on one base, an API key, a long batch window."""
    proc, base, log = start_server(
        runs[0],
        tmp_path_factory,
        "--adapter",
        f"second={runs[1]}",
        "--api-key",
        KEY,
        "--max-batch",
        "4",
        "--batch-wait-ms",
        "300",
        "--weight-layout",
        "column",  # every test of this module decodes through transposed weights (model/layout.py)
    )
    yield {"url": base, "base_model": str(tiny_model_dir), "proc": proc, "log": log}
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server['url']}/v1", api_key=KEY, max_retries=0)


def raw(server, body, headers=None):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})}
    return httpx.post(f"{server['url']}/v1/chat/completions", content=body, headers=headers, timeout=60)


def health(server) -> dict:
    return httpx.get(f"{server['url']}/health", timeout=10).json()


USER = [{"role": "user", "content": "What is 3 plus one?"}]


def test_health_says_which_weight_layout_was_chosen(server):
    assert health(server)["weight_layout"] == "column-major (asked for)"
    assert "weights: column-major (asked for)" in server["log"].read_text()


def test_list_models(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids == [server["base_model"], "tiny", "second"]


def test_chat_completion_and_stream_agree(client):
    done = client.chat.completions.create(model="tiny", messages=USER, max_tokens=6, temperature=0)
    choice = done.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length") and done.model == "tiny"
    assert done.usage.prompt_tokens > 0 and 0 < done.usage.completion_tokens <= 6

    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=USER,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: streamed and plain answers are the same tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens


def test_model_field_picks_adapter_or_base(client, runs, server):
    """Each served name answers exactly like that model loaded on its own (greedy, one request)."""
    from smolora.generate import generate
    from smolora.model.load import load_for_inference

    torch.set_num_threads(1)
    second, tok, _ = load_for_inference(runs[1], device="cpu")
    with second.disable_adapter():
        base_expected = generate(second, tok, [USER], max_new_tokens=8)[0]
    expected = generate(second, tok, [USER], max_new_tokens=8)[0]
    got = client.chat.completions.create(model="second", messages=USER, max_tokens=8, temperature=0)
    assert got.model == "second" and got.choices[0].message.content.strip() == expected
    got = client.chat.completions.create(
        model=server["base_model"], messages=USER, max_tokens=8, temperature=0
    )
    assert got.choices[0].message.content.strip() == base_expected


def test_completions_endpoint(client):
    r = client.completions.create(
        model="tiny", prompt=["The capital of", "Write a"], max_tokens=3, temperature=0
    )
    assert [c.index for c in r.choices] == [0, 1] and all(isinstance(c.text, str) for c in r.choices)
    assert r.usage.completion_tokens <= 6


def test_concurrent_requests_share_batches(client, server):
    before = health(server)["batches"]
    results: list = []

    def ask(i: int) -> None:
        messages = [{"role": "user", "content": f"What is {i} plus one?"}]
        results.append(
            client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0.7)
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert health(server)["batches"] - before < 4  # batched, not served one at a time


@pytest.mark.parametrize(
    "body, status, param",
    [
        ('{"model": "tiny", "messages": [', 400, None),  # malformed JSON
        ('{"model": "tiny"}', 400, "messages"),
        ('{"model": "tiny", "messages": []}', 400, "messages"),
        ('{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
        (
            '{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 5}',
            400,
            "temperature",
        ),
        (
            '{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
            400,
            "max_tokens",
        ),
        (
            '{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 9999}',
            400,
            "max_tokens",
        ),
        ('{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_p": 1.5}', 400, "top_p"),
        ('{"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}', 400, "messages.0.role"),
        ('["not", "an", "object"]', 400, None),
    ],
)
def test_bad_input_is_an_openai_style_4xx(server, body, status, param):
    r = raw(server, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error" and error["param"] == param


def test_bad_input_through_the_openai_client(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=USER)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="tiny", messages=USER, temperature=3)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model="tiny", messages=USER, max_tokens=600)


def test_api_key_is_required(server):
    anonymous = httpx.get(f"{server['url']}/v1/models", timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
    wrong = openai.OpenAI(base_url=f"{server['url']}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.get(f"{server['url']}/health", timeout=10).status_code == 200  # liveness stays open


def test_client_disconnecting_mid_stream_frees_its_slot(server, client):
    cancelled_before = health(server)["cancelled"]

    async def read_one_chunk_and_leave() -> None:
        body = {"model": "tiny", "messages": USER, "max_tokens": 400, "ignore_eos": True, "stream": True}
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(timeout=60) as http:
            async with http.stream(
                "POST", f"{server['url']}/v1/chat/completions", json=body, headers=headers
            ) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        return  # closes the connection mid-stream

    asyncio.run(read_one_chunk_and_leave())
    # The server notices at its next token; poll until the row is gone.
    for _ in range(600):
        state = health(server)
        if state["cancelled"] > cancelled_before and state["active"] == 0 and state["queued"] == 0:
            break
        time.sleep(0.1)
    assert state["cancelled"] > cancelled_before and state["active"] == 0 and state["queued"] == 0
    # and the server still answers
    assert client.chat.completions.create(model="tiny", messages=USER, max_tokens=2).choices[0].message


def test_stop_strings_cut_and_are_never_streamed(tiny_tokenizer):
    """BatchControl on its own: tokens of a known text arrive one by one; output stops before 'lamp'."""
    from smolora.serve.batching import BatchControl, Job, Served

    loop = asyncio.new_event_loop()
    served = Served(model=None, tokenizer=tiny_tokenizer, names={}, default="x")
    job = Job(
        model="x", ids=[1], max_tokens=50, temperature=0, top_p=1, stop=["lamp"], ignore_eos=False, loop=loop
    )
    control = BatchControl(served, [job])
    for token in tiny_tokenizer("order 3 lamps to Lisbon", add_special_tokens=False)["input_ids"]:
        control(torch.tensor([[token]]), None)
        if job.finish:
            break
    loop.run_until_complete(asyncio.sleep(0))
    events = []
    while not job.events.empty():
        events.append(job.events.get_nowait())
    loop.close()
    assert "".join(v for _, k, v in events if k == "delta") == "order 3 "
    assert events[-1] == (0, "done", "stop")


def test_plain_base_with_named_adapters_and_mismatch(runs, tiny_model_dir, tmp_path):
    """`smolora serve BASE --adapter a=RUN --adapter b=RUN` in-process; an adapter with other surgery is refused."""
    from smolora.errors import ExportError
    from smolora.serve.load import load_served

    torch.set_num_threads(1)
    served = load_served(str(tiny_model_dir), {"a": str(runs[0]), "b": str(runs[1])}, device="cpu")
    assert list(served.names) == [str(tiny_model_dir), "a", "b"] and served.default == "a"
    assert served.names["b"]["adapter"] != served.names["a"]["adapter"]

    pruned = tmp_path / "pruned"
    shutil.copytree(runs[1] / "adapter", pruned / "adapter")
    meta = json.loads((pruned / "adapter" / "smolora.json").read_text())
    (pruned / "adapter" / "smolora.json").write_text(json.dumps({**meta, "keep_layers": 1}))
    with pytest.raises(ExportError, match="its own process"):
        load_served(str(runs[0]), {"pruned": str(pruned)}, device="cpu")
