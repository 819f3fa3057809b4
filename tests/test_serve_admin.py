"""Adapters loaded and unloaded at run time (POST/DELETE /v1/adapters) and /tokenize, /detokenize,
against a real `smolora serve` subprocess on the tiny run, through the real `openai` client and httpx."""

from __future__ import annotations

import json
import os
import shutil
import threading

import httpx
import openai
import pytest

from helpers import other_adapter, start_server

KEY = "admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": "What is 3 plus one?"}]
GREEDY = {"temperature": 0, "max_tokens": 12, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def dirs(tiny_run, tmp_path_factory):
    """--adapter-dir with a good adapter, one of another base, links and a FIFO; one outside it."""
    root = tmp_path_factory.mktemp("adapter-dir")
    outside = tmp_path_factory.mktemp("outside")
    second = other_adapter(tiny_run, root)  # root/runs/second
    other_adapter(tiny_run, outside)
    alien = root / "runs" / "alien"
    shutil.copytree(second, alien)
    meta = json.loads((alien / "adapter" / "smolora.json").read_text())
    meta["base_model"] = "someone/another-model"
    (alien / "adapter" / "smolora.json").write_text(json.dumps(meta))
    os.symlink(outside / "runs" / "second", root / "escape")
    os.mkfifo(root / "fifo")
    fifo_run = root / "runs" / "fifo-inside"
    shutil.copytree(second, fifo_run)
    (fifo_run / "adapter" / "adapter_config.json").unlink()
    os.mkfifo(fifo_run / "adapter" / "adapter_config.json")
    (root / "plain.txt").write_text("not an adapter")
    (root / "empty").mkdir()
    return root, outside, second


@pytest.fixture(scope="module")
def server(tiny_run, dirs, tmp_path_factory):
    proc, url, _ = start_server(
        tiny_run, tmp_path_factory, "--adapter-dir", str(dirs[0]), "--api-key", KEY, "--rate-limit", "0"
    )
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def reference(tiny_run, dirs, tmp_path_factory):
    """The same adapter served from the start with --adapter: what the hot-loaded one must answer."""
    proc, url, _ = start_server(tiny_run, tmp_path_factory, "--adapter", f"second={dirs[2]}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def client_of(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def load(url: str, name, path, headers=AUTH) -> httpx.Response:
    return httpx.post(f"{url}/v1/adapters", json={"name": name, "path": path}, headers=headers, timeout=60)


def listed(url: str) -> list[str]:
    return [m.id for m in client_of(url).models.list().data]


def answer(client: openai.OpenAI, model: str) -> str:
    r = client.chat.completions.create(model=model, messages=USER, **GREEDY)
    return r.choices[0].message.content


def test_load_lists_and_answers_as_the_same_adapter_served_at_start(server, reference, dirs):
    r = load(server, "hot", "runs/second")
    assert r.status_code == 201, r.text
    assert r.json() == {"id": "hot", "object": "model", "created": 0, "owned_by": "smolora"}
    assert "hot" in listed(server)
    hot, ref = answer(client_of(server), "hot"), answer(client_of(reference, "none"), "second")
    assert hot == ref
    assert hot != answer(client_of(reference, "none"), "tiny")  # the scaled adapter does differ
    assert load(server, "hot", "runs/second").status_code == 409  # the name is taken
    assert load(server, "tiny", "runs/second").status_code == 409
    # an absolute path inside --adapter-dir, its adapter/ directory, works as --adapter does
    r = load(server, "hot2", str(dirs[0] / "runs" / "second" / "adapter"))
    assert r.status_code == 201, r.text
    assert answer(client_of(server), "hot2") == ref
    assert httpx.delete(f"{server}/v1/adapters/hot2", headers=AUTH, timeout=60).status_code == 200


def test_delete_waits_for_a_streaming_request_then_404(server):
    assert load(server, "gone", "runs/second").status_code == 201
    client = client_of(server)
    expected = client.chat.completions.create(
        model="gone", messages=USER, temperature=0, max_tokens=200, extra_body={"ignore_eos": True}
    )
    expected = expected.choices[0].message.content
    started, pieces, result = threading.Event(), [], {}

    def long_stream():
        stream = client.chat.completions.create(
            model="gone",
            messages=USER,
            temperature=0,
            max_tokens=200,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                started.set()
            if chunk.choices and chunk.choices[0].finish_reason:
                result["finish"] = chunk.choices[0].finish_reason

    t = threading.Thread(target=long_stream)
    t.start()
    assert started.wait(60)
    deleted = {}

    def delete():
        deleted["r"] = httpx.delete(f"{server}/v1/adapters/gone", headers=AUTH, timeout=120)

    d = threading.Thread(target=delete)
    d.start()
    # At once: new requests on it get 404 and it is off the list, while the stream still runs.
    while "gone" in listed(server):
        pass
    with pytest.raises(openai.NotFoundError):
        answer(client, "gone")
    t.join(120)
    d.join(120)
    assert result["finish"] == "length" and "".join(pieces) == expected  # finished whole, same adapter
    assert deleted["r"].status_code == 200, deleted["r"].text
    assert deleted["r"].json() == {"id": "gone", "object": "model", "deleted": True}
    assert "gone" not in listed(server)
    assert httpx.delete(f"{server}/v1/adapters/gone", headers=AUTH, timeout=60).status_code == 404
    # the name can be loaded again, and the others still answer
    assert load(server, "gone", "runs/second").status_code == 201
    assert answer(client, "gone") == answer(client, "hot")


def test_refusals(server, dirs):
    root, outside, _ = dirs
    cases = {
        "..": ("runs/second", 400),
        ".": ("runs/second", 400),
        "a/b": ("runs/second", 400),
        "x" * 65: ("runs/second", 400),
        "": ("runs/second", 400),
        "trav": ("../" + outside.name + "/runs/second", 403),
        "abs": (str(outside / "runs" / "second"), 403),
        "link": ("escape", 403),
        "fifo": ("fifo", 400),
        "fifo2": ("runs/fifo-inside", 400),
        "file": ("plain.txt", 400),
        "none": ("empty", 400),
        "missing": ("no/such/run", 400),
        "nul": ("runs/sec\x00ond", 400),
        "alien": ("runs/alien", 400),
    }
    for name, (path, status) in cases.items():
        r = load(server, name, path)
        assert r.status_code == status, (name, r.text)
        error = r.json()["error"]
        assert "\n" not in error["message"] and "Traceback" not in error["message"], error
    assert "outside --adapter-dir" in load(server, "trav", "../x").json()["error"]["message"]
    assert "someone/another-model" in load(server, "alien", "runs/alien").json()["error"]["message"]
    big = httpx.post(
        f"{server}/v1/adapters",
        content=json.dumps({"name": "n" * (1 << 20), "path": "runs/second"}),
        headers=AUTH,
        timeout=60,
    )
    assert big.status_code in (400, 413)
    for body in ({"name": None, "path": "runs/second"}, {"name": "ok", "path": None}, {}, {"name": "ok"}):
        assert httpx.post(f"{server}/v1/adapters", json=body, headers=AUTH, timeout=60).status_code == 400
    assert load(server, "nokey", "runs/second", headers={}).status_code == 401
    assert httpx.delete(f"{server}/v1/adapters/hot", timeout=60).status_code == 401
    assert httpx.post(f"{server}/tokenize", json={"prompt": "hi"}, timeout=60).status_code == 401
    base = [n for n in listed(server) if n not in ("tiny", "hot", "gone", "hot2")][0]
    assert httpx.delete(f"{server}/v1/adapters/{base}", headers=AUTH, timeout=60).status_code == 400
    assert httpx.delete(f"{server}/v1/adapters/nope", headers=AUTH, timeout=60).status_code == 404
    assert not {"trav", "link", "fifo", "fifo2", "alien"} & set(listed(server))
    assert answer(client_of(server), "hot")  # the server still answers after all of that


def test_without_adapter_dir_loading_is_off(reference):
    r = load(reference, "x", "runs/second", headers={})
    assert r.status_code == 403
    assert "--adapter-dir DIR" in r.json()["error"]["message"]


def test_tokenize_detokenize_equal_the_tokenizer_offline(server, tiny_run):
    from transformers import AutoTokenizer

    from smolora.runs import read_meta

    meta = read_meta(tiny_run / "adapter")
    tok = AutoTokenizer.from_pretrained(meta.base_model)
    text = "The capital of France is Paris. Ünïcödé ✓"
    r = httpx.post(f"{server}/tokenize", json={"prompt": text}, headers=AUTH, timeout=60).json()
    assert r["tokens"] == tok(text)["input_ids"] and r["count"] == len(r["tokens"])
    assert r["max_model_len"] > 0
    back = httpx.post(f"{server}/detokenize", json={"tokens": r["tokens"]}, headers=AUTH, timeout=60).json()
    assert back == {"prompt": tok.decode(r["tokens"])}
    assert text in back["prompt"]
    chat = httpx.post(
        f"{server}/tokenize", json={"model": "tiny", "messages": USER}, headers=AUTH, timeout=60
    )
    ids = chat.json()["tokens"]
    assert text not in tok.decode(ids) and "3 plus one" in tok.decode(ids)
    # the chat ids are what a chat request's prompt is: usage.prompt_tokens counts the same
    usage = client_of(server).chat.completions.create(model="tiny", messages=USER, **GREEDY).usage
    assert usage.prompt_tokens == len(ids)
    for body in ({"tokens": [-1]}, {"tokens": [10**9]}, {"tokens": None}, {"tokens": ["a"]}):
        assert httpx.post(f"{server}/detokenize", json=body, headers=AUTH, timeout=60).status_code == 400
    for body in ({}, {"prompt": "a", "messages": USER}, {"prompt": None}, {"messages": []}):
        assert httpx.post(f"{server}/tokenize", json=body, headers=AUTH, timeout=60).status_code == 400
    r = httpx.post(f"{server}/tokenize", json={"model": "nope", "prompt": "a"}, headers=AUTH, timeout=60)
    assert r.status_code == 404


def offline_embeddings(run, texts: list[str], base: bool = False) -> list[list[float]]:
    """Each text alone through the run's model loaded in-process: the mean of its last hidden state."""
    import contextlib

    import torch

    from smolora.model.load import load_for_inference

    torch.set_num_threads(1)
    model, tok, _ = load_for_inference(run, device="cpu")
    out = []
    with torch.inference_mode(), model.disable_adapter() if base else contextlib.nullcontext():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]])
            out.append(model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].mean(0))
    return [v.tolist() for v in out]


def test_embeddings_equal_an_offline_mean_pool(server, tiny_run, dirs):
    import numpy as np

    texts = ["The capital of France is Paris.", "Write a haiku", "abc ✓ " * 40]
    client = client_of(server)
    assert load(server, "emb", "runs/second").status_code == 201
    base = [n for n in listed(server) if n not in ("tiny", "hot", "gone", "hot2", "emb")][0]
    got = {}
    for name in ("tiny", "emb", base):
        r = client.embeddings.create(model=name, input=texts)  # the client asks for base64
        assert r.model == name and [d.index for d in r.data] == [0, 1, 2]
        got[name] = np.array([d.embedding for d in r.data])
        assert np.allclose(np.linalg.norm(got[name], axis=1), 1, atol=1e-5)  # unit length, as OpenAI's
    expected = {
        "tiny": offline_embeddings(tiny_run, texts),
        "emb": offline_embeddings(dirs[2], texts),
        base: offline_embeddings(tiny_run, texts, base=True),
    }
    for name, vectors in expected.items():
        vectors = np.array(vectors)
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        assert np.abs(got[name] - unit).max() < 1e-4, name
    assert np.abs(got["tiny"] - got["emb"]).max() > 1e-3  # the adapter the name picks is used
    # raw means (vLLM's normalize=false), floats, token ids: the same numbers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    ids = [tok(t)["input_ids"] for t in texts]
    raw = httpx.post(
        f"{server}/v1/embeddings",
        json={"model": "emb", "input": ids, "encoding_format": "float", "normalize": False},
        headers=AUTH,
        timeout=60,
    ).json()
    assert raw["usage"] == {"prompt_tokens": sum(map(len, ids)), "total_tokens": sum(map(len, ids))}
    assert np.abs(np.array([d["embedding"] for d in raw["data"]]) - expected["emb"]).max() < 1e-4
    one = client.embeddings.create(model="emb", input=ids[1], encoding_format="float")
    assert np.abs(np.array(one.data[0].embedding) - got["emb"][1]).max() < 1e-5
    assert httpx.delete(f"{server}/v1/adapters/emb", headers=AUTH, timeout=60).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="emb", input="a")


def test_embeddings_refusals(server):
    bad = [
        {"input": None},
        {},
        {"input": ""},
        {"input": []},
        {"input": [[]]},
        {"input": [-1]},
        {"input": [10**9]},
        {"input": ["a"] * 129},
        {"input": "abc " * 2000},  # over the tiny model's context of 512
        {"input": "a", "encoding_format": "int8"},
        {"input": "a", "dimensions": 7},
        {"input": "a", "model": None, "user": None, "encoding_format": None, "dimensions": 32},  # fine
    ]
    for body in bad:
        r = httpx.post(f"{server}/v1/embeddings", json=body, headers=AUTH, timeout=60)
        assert r.status_code == (200 if body.get("dimensions") == 32 else 400), (body, r.text)
    r = httpx.post(f"{server}/v1/embeddings", json={"input": "a", "model": "nope"}, headers=AUTH, timeout=60)
    assert r.status_code == 404
    assert httpx.post(f"{server}/v1/embeddings", json={"input": "a"}, timeout=60).status_code == 401
