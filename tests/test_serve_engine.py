"""Continuous batching and the OpenAI fields it brings (logprobs, echo, seed, n, token-id prompts,
include_usage, max_completion_tokens), through the real `openai` client against a real
`smolora serve` subprocess on the tiny run, checked against the same model run offline."""

from __future__ import annotations

import threading

import openai
import pytest
import torch

from helpers import other_adapter, start_server

USER = [{"role": "user", "content": "What is 3 plus one?"}]
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run):
    return tiny_run, other_adapter(tiny_run, tmp_path_factory.mktemp("engine-runs"))


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    proc, url, _ = start_server(
        runs[0],
        tmp_path_factory,
        "--adapter",
        f"second={runs[1]}",
        "--max-batch",
        "8",
        "--batch-wait-ms",
        "50",
    )
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def offline(runs):
    """The same run and adapters loaded in this process: the reference the server must equal."""
    from smolora.serve.load import load_served

    return load_served(str(runs[0]), {"second": str(runs[1])}, device="cpu")


@torch.inference_mode()
def greedy_offline(served, name: str, ids: list[int], steps: int):
    """Greedy continuation by plain forward passes over the whole text, then the log-softmax at every
    position of prompt + continuation (row t - 1 scores token t)."""
    model, adapter = served.model, served.names[name]["adapter"]

    def logits_of(tokens):
        if adapter is None:
            with model.disable_adapter():
                return model(input_ids=torch.tensor([tokens])).logits[0]
        model.set_adapter(adapter)
        return model(input_ids=torch.tensor([tokens])).logits[0]

    ids = list(ids)
    for _ in range(steps):
        ids.append(int(logits_of(ids)[-1].argmax()))
    return ids, torch.log_softmax(logits_of(ids).float(), -1)


def test_completion_logprobs_and_echo_equal_a_plain_forward_pass(client, offline):
    prompt = offline.tokenizer("The capital of France is")["input_ids"]
    r = client.completions.create(model="tiny", prompt=prompt, echo=True, logprobs=3, max_tokens=4, **GREEDY)
    lp = r.choices[0].logprobs
    full, logprobs = greedy_offline(offline, "tiny", prompt, 4)
    assert len(lp.token_logprobs) == len(full) == len(prompt) + 4
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing comes before the first
    for t in range(1, len(full)):
        assert lp.token_logprobs[t] == pytest.approx(float(logprobs[t - 1, full[t]]), abs=1e-4)
        best = torch.topk(logprobs[t - 1], 3)
        expected = {
            offline.tokenizer.decode([i]): v
            for i, v in zip(best.indices.tolist(), best.values.tolist(), strict=True)
        }
        assert lp.top_logprobs[t] == pytest.approx(expected, abs=1e-4)
    assert lp.tokens == [offline.tokenizer.decode([i]) for i in full]
    assert r.choices[0].text == offline.tokenizer.decode(full)  # the prompt, then the answer
    assert lp.text_offset == [len(offline.tokenizer.decode(full[:t])) for t in range(len(full))]
    # lm-eval's log-likelihood request: echo, max_tokens 0, only the prompt scored
    r0 = client.completions.create(
        model="tiny", prompt=prompt, echo=True, logprobs=1, max_tokens=0, temperature=0
    )
    assert r0.choices[0].logprobs.token_logprobs[1:] == pytest.approx(
        lp.token_logprobs[1 : len(prompt)], abs=1e-6
    )
    assert r0.choices[0].finish_reason == "length" and r0.usage.completion_tokens == 0


def test_chat_logprobs_equal_a_plain_forward_pass(client, offline):
    from smolora.serve.jobs import chat_prompt_ids
    from smolora.serve.schema import ChatRequest

    for name in ("tiny", offline.default, "second"):
        r = client.chat.completions.create(
            model=name, messages=USER, logprobs=True, top_logprobs=2, max_completion_tokens=5, **GREEDY
        )
        prompt = chat_prompt_ids(offline, name, ChatRequest(messages=USER))
        full, logprobs = greedy_offline(offline, name, prompt, 5)
        content = r.choices[0].logprobs.content
        assert len(content) == 5 and r.usage.completion_tokens == 5
        for k, item in enumerate(content):
            t = len(prompt) + k
            assert item.token == offline.tokenizer.decode([full[t]])
            assert item.bytes == list(item.token.encode())
            assert item.logprob == pytest.approx(float(logprobs[t - 1, full[t]]), abs=1e-4)
            assert [x.logprob for x in item.top_logprobs] == pytest.approx(
                torch.topk(logprobs[t - 1], 2).values.tolist(), abs=1e-4
            )


def test_base_and_adapters_share_a_batch_and_answer_as_alone(client, offline):
    """Rows for the base and two adapters, with different lengths, decoded together, each equal to
    its answer alone: the mixed-adapter forward, the cache merges and the dropped rows all line up."""
    asks = [(name, k) for name in ("tiny", offline.default, "second") for k in (3, 9)]

    def ask(name, k):
        r = client.chat.completions.create(model=name, messages=USER, max_tokens=k, **GREEDY)
        return r.choices[0].message.content

    alone = [ask(name, k) for name, k in asks]
    together: list = [None] * len(asks)
    threads = [
        threading.Thread(target=lambda i=i, a=a: together.__setitem__(i, ask(*a))) for i, a in enumerate(asks)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    assert alone[1] != alone[5]  # the adapters really differ (the second one is the first scaled)


def test_a_short_request_finishes_while_a_long_one_is_still_streaming(client):
    """Continuous batching: the short request joins the running batch instead of waiting for it."""
    started, long_done, order = threading.Event(), threading.Event(), []

    def long_one():
        stream = client.chat.completions.create(
            model="tiny", messages=USER, max_tokens=400, stream=True, **GREEDY
        )
        for _ in stream:
            started.set()
        order.append("long")
        long_done.set()

    thread = threading.Thread(target=long_one)
    thread.start()
    assert started.wait(60)
    client.chat.completions.create(model="second", messages=USER, max_tokens=2, **GREEDY)
    order.append("short")
    thread.join()
    assert order == ["short", "long"]


def test_seed_gives_the_same_sampled_text_and_n_choices(client):
    sampled = {"model": "tiny", "messages": USER, "max_tokens": 12, "temperature": 1.0}
    first = client.chat.completions.create(**sampled, seed=7).choices[0].message.content
    again = client.chat.completions.create(**sampled, seed=7).choices[0].message.content
    other = client.chat.completions.create(**sampled, seed=8).choices[0].message.content
    assert first == again and first != other
    three = client.chat.completions.create(**sampled, seed=7, n=3)
    texts = [c.message.content for c in three.choices]
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert texts[0] == first and texts[1] == other  # choice j draws from seed + j
    assert len(set(texts)) > 1
    completion = {"model": "tiny", "prompt": "The capital of", "max_tokens": 8, "temperature": 1.0, "seed": 3}
    assert (
        client.completions.create(**completion).choices[0].text
        == client.completions.create(**completion).choices[0].text
    )


def test_completions_take_token_id_lists_and_refuse_bad_ids(client, offline):
    ids = [offline.tokenizer(p)["input_ids"] for p in ("The capital of", "Write a")]
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=3, n=2, **GREEDY)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    by_text = client.completions.create(
        model="tiny", prompt=["The capital of", "Write a"], max_tokens=3, **GREEDY
    )
    assert [c.text for c in r.choices[::2]] == [c.text for c in by_text.choices]
    vocab = offline.model.get_input_embeddings().num_embeddings
    for bad in ([vocab], [[1, 2], [vocab + 5]]):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="tiny", prompt=bad, max_tokens=1)
        assert e.value.body["param"] == "prompt" and str(vocab) in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", max_tokens=0)
    assert e.value.body["param"] == "max_tokens"
    echoed = client.completions.create(model="tiny", prompt="Write a", echo=True, max_tokens=2, **GREEDY)
    assert echoed.choices[0].text.startswith("Write a") and echoed.choices[0].logprobs is None


def test_stream_with_usage_logprobs_and_max_completion_tokens(client):
    body = {"model": "tiny", "messages": USER, "max_completion_tokens": 6, "logprobs": True, **GREEDY}
    whole = client.chat.completions.create(**body)
    chunks = list(
        client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}, n=2)
    )
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert "".join(c.delta.content or "" for c in mine) == whole.choices[0].message.content
        streamed = [x for c in mine if c.logprobs for x in c.logprobs.content]
        assert [x.logprob for x in streamed] == pytest.approx(
            [x.logprob for x in whole.choices[0].logprobs.content], abs=1e-5
        )
        assert [c.finish_reason for c in mine if c.finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_static_batching_refuses_what_needs_the_engine(tiny_run, tmp_path_factory):
    import subprocess
    import sys

    proc, url, _ = start_server(tiny_run, tmp_path_factory, "--batching", "static")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        assert (
            client.completions.create(model="tiny", prompt="Write a", max_tokens=2).choices[0].text
            is not None
        )
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="tiny", prompt="Write a", max_tokens=2, logprobs=1)
        assert "--batching static" in e.value.body["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bad = subprocess.run(
        [sys.executable, "-m", "smolora.cli.main", "serve", str(tiny_run), "--batching", "dynamic"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "continuous, static" in bad.stderr


def test_a_lone_adapter_is_merged_and_unmerged_back_to_the_base(offline):
    """Engine.merge folds the adapter every row uses into the base weights; a mixed lane, the bare
    base or a chore (adapter load/unload) unmerges it, and the base weights come back."""
    from concurrent.futures import Future
    from types import SimpleNamespace

    from smolora.serve.engine import Engine

    engine = Engine(offline)
    layer = next(m for m in offline.model.modules() if hasattr(m, "lora_A") and m.lora_A)
    before = layer.base_layer.weight.detach().clone()
    adapter = SimpleNamespace(model=offline.default, adapter=None)  # a row: its name is all that is read
    second = SimpleNamespace(model="second", adapter=None)
    with engine.adapters(None, [adapter]):
        assert engine.merged == offline.names[offline.default]["adapter"]
        assert not torch.equal(layer.base_layer.weight, before)
    with engine.adapters(None, [adapter, second]) as extra:
        assert engine.merged is None and "adapter_names" in extra
    torch.testing.assert_close(layer.base_layer.weight, before, rtol=0, atol=1e-6)
    with engine.adapters(None, [adapter]):
        pass
    offline.chores.put((lambda: None, Future()))
    engine.iterate([])
    assert engine.merged is None
    torch.testing.assert_close(layer.base_layer.weight, before, rtol=0, atol=1e-6)


def test_a_shared_system_prompt_is_computed_once_and_answers_as_without(client, offline, server):
    """Prompts that start alike (a long system prompt) reuse its keys/values after the first
    ones (prefix_tokens in /health grows), their log-probabilities still equal a plain forward
    pass, and a prompt that shares only part of it (the prefix is cropped) answers right too."""
    import httpx

    from smolora.serve.jobs import chat_prompt_ids
    from smolora.serve.schema import ChatRequest

    system = "You answer questions about arithmetic in one short sentence, politely and exactly. " * 3
    asks = [
        [{"role": "system", "content": system}, {"role": "user", "content": q}]
        for q in ("What is 3 plus one?", "What is 2 plus 2?", "Seven minus five?")
    ]
    asks.append([{"role": "system", "content": system[:90] + " Be brief."}, *USER])
    before = httpx.get(f"{server}/health").json()["prefix_tokens"]
    for messages in asks:
        r = client.chat.completions.create(
            model=offline.default, messages=messages, logprobs=True, max_completion_tokens=4, **GREEDY
        )
        prompt = chat_prompt_ids(offline, offline.default, ChatRequest(messages=messages))
        full, logprobs = greedy_offline(offline, offline.default, prompt, 4)
        for k, item in enumerate(r.choices[0].logprobs.content):
            t = len(prompt) + k
            assert item.token == offline.tokenizer.decode([full[t]])
            assert item.logprob == pytest.approx(float(logprobs[t - 1, full[t]]), abs=1e-4)
    assert httpx.get(f"{server}/health").json()["prefix_tokens"] > before


def test_prefixes_are_learnt_cropped_and_kept_per_adapter():
    from types import SimpleNamespace

    from smolora.serve.prefix import MIN_PREFIX, Prefix, Prefixes

    def cache(n):  # what Prefixes reads of a DynamicCache: each layer's keys/values [rows, heads, n, dim]
        return SimpleNamespace(
            layers=[SimpleNamespace(keys=torch.zeros(1, 1, n, 2), values=torch.zeros(1, 1, n, 2))]
        )

    start = list(range(100, 100 + MIN_PREFIX + 4))
    prefixes = Prefixes()
    assert prefixes.lookup("a", [start + [1, 2]]) is None  # one prompt: nothing is shared yet
    new = prefixes.lookup("a", [start + [3]])
    assert new.ids == tuple(start) and new.cache is None
    prefixes.keep("a", Prefix(new.ids, cache(len(new.ids))))
    assert prefixes.lookup("a", [start + [9], start + [8, 7]]).ids == tuple(start)  # a hit
    cropped = prefixes.lookup("a", [start[: MIN_PREFIX + 1] + [5, 6]])
    assert (
        cropped.ids == tuple(start[: MIN_PREFIX + 1])
        and cropped.cache.layers[0].values.shape[2] == MIN_PREFIX + 1
    )
    assert prefixes.lookup("b", [start + [3]]) is None  # another adapter learns its own
    assert prefixes.lookup("a", [list(range(MIN_PREFIX + 5))]) is None  # shares too little
    assert prefixes.lookup("a", [start[:3]]) is None  # a prompt keeps a token of its own
    other = list(range(500, 500 + MIN_PREFIX))  # a new system prompt: what is kept does not block it
    assert prefixes.lookup("a", [other + [1]]) is None
    assert prefixes.lookup("a", [other + [2]]).ids == tuple(other)
    prefixes.clear()
    assert prefixes.entries == {} and prefixes.last == {}
