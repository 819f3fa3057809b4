"""Shared fixtures: a tiny tokenizer trained here, a tiny random Llama built from a config, a tiny
finished run, and a fresh SmoLoRA home for every test; and those more than one test file uses: the
chatty model, the fake hub and push's own run, spies on generation, the UI workspace and its client.
Helpers that tests import are in helpers.py; no test imports from another test file.

Everything is offline and takes seconds; the real bundled model is only used by tests marked `slow`
(`pytest -m "not slow and not browser"` leaves them out while developing; `make test` runs all).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from fastapi import FastAPI, Request  # module level: FastAPI resolves the string annotations here

from helpers import (
    UI_BASE,
    UI_HEADERS,
    UI_TOKEN,
    free_port,
    make_tiny_model,
    make_tiny_tokenizer,
    tiny_config,
    tree_digest,
    write_qa,
)

# Tests never touch the user's cache or a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny random Llama saved as a plain HF directory (safetensors + tokenizer)."""
    d = tmp_path_factory.mktemp("tiny-llama")
    model = make_tiny_model(len(tiny_tokenizer))
    model.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Each test gets its own SmoLoRA cache so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("SMOLORA_HOME", str(tmp_path / "smolora-home"))
    yield


@pytest.fixture
def qa_file(tmp_path) -> Path:
    return write_qa(tmp_path / "qa.jsonl", 40)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished 2-step LoRA run of the tiny Llama, trained once for the session.

    Tests read it and write their outputs elsewhere; one that changes a run copies it first
    (`shutil.copytree(tiny_run, tmp_path / "run")`). At the end of the session its files must be the
    ones training wrote, so a test that wrote into it anyway is caught.
    """
    from smolora.train.recipe import train

    root = tmp_path_factory.mktemp("tiny-run")
    cfg = tiny_config(
        tiny_model_dir, write_qa(root / "qa.jsonl", 24), root, "train.max_steps=2", "train.threads=1"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMOLORA_HOME", str(root / "home"))  # session fixtures start before isolated_home
        run = train(cfg, show_progress=False)
    # train() leaves its train.log handler on the `smolora` logger (the next train() replaces it);
    # drop it here so other tests' log lines do not grow the shared run's train.log.
    logger = logging.getLogger("smolora")
    for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(h)
        h.close()
    before = tree_digest(run)
    yield run
    after = tree_digest(run)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test wrote into the shared tiny_run (copy it first): {changed}"


@pytest.fixture(scope="session")
def real_home(tmp_path_factory) -> Path:
    """One SmoLoRA home for the `slow` tests: the real bundled GGUF is converted once per session (~40 s)."""
    from smolora.model.store import resolve_model

    home = tmp_path_factory.mktemp("real-home")
    old = os.environ.get("SMOLORA_HOME")
    os.environ["SMOLORA_HOME"] = str(home)
    try:
        resolve_model("smollm2-135m")
    finally:
        if old is None:
            os.environ.pop("SMOLORA_HOME", None)
        else:
            os.environ["SMOLORA_HOME"] = old
    return home


@pytest.fixture
def use_real_home(real_home, monkeypatch) -> Path:
    monkeypatch.setenv("SMOLORA_HOME", str(real_home))
    return real_home


@pytest.fixture(scope="session")
def chatty_model_dir(tmp_path_factory, tiny_tokenizer):
    """The tiny random Llama with an untied random lm_head: greedy answers that are not empty."""
    import torch

    model = make_tiny_model(len(tiny_tokenizer))
    model.config.tie_word_embeddings = False
    torch.manual_seed(1)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(len(tiny_tokenizer), model.config.hidden_size))
    d = tmp_path_factory.mktemp("chatty-llama")
    model.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def rendered(monkeypatch) -> list[str]:
    """Every prompt text generation hands the model, as rendered."""
    import smolora.generate

    seen: list[str] = []
    real = smolora.generate.render_prompt

    def spy(*args, **kw):
        seen.append(real(*args, **kw))
        return seen[-1]

    monkeypatch.setattr(smolora.generate, "render_prompt", spy)
    return seen


@pytest.fixture
def generate_calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every model.generate call (one per batch)."""
    from transformers.generation.utils import GenerationMixin

    calls: list[dict] = []
    real = GenerationMixin.generate

    def spy(self, *args, **kw):
        calls.append(kw)
        return real(self, *args, **kw)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    return calls


# --- smolora push: a local fake of the hub's HTTP API, and a run of its own ------------------------


@pytest.fixture(scope="module")
def fake_hub():
    """A local fake of the hub's HTTP API that records what was uploaded (see test_push.py)."""
    import uvicorn

    calls: list[dict] = []
    app = FastAPI()

    @app.post("/api/repos/create")
    async def create(request: Request):
        body = await request.json()
        calls.append({"call": "create", "body": body, "auth": request.headers.get("authorization")})
        return {"url": f"{base}/{body['organization']}/{body['name']}", "name": body["name"]}

    @app.post("/api/validate-yaml")
    async def validate(request: Request):
        calls.append({"call": "validate", "body": await request.json()})
        return {"errors": [], "warnings": []}

    @app.post("/api/models/{ns}/{name}/preupload/{rev}")
    async def preupload(ns: str, name: str, rev: str, request: Request):
        files = (await request.json())["files"]
        calls.append({"call": "preupload", "files": [f["path"] for f in files]})
        return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}

    @app.post("/api/models/{ns}/{name}/commit/{rev}")
    async def commit(ns: str, name: str, rev: str, request: Request):
        lines = [json.loads(x) for x in (await request.body()).splitlines() if x.strip()]
        files = {
            x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"
        }
        header = next(x["value"] for x in lines if x["key"] == "header")
        calls.append({"call": "commit", "repo": f"{ns}/{name}", "summary": header["summary"], "files": files})
        return {"commitUrl": f"{base}/{ns}/{name}/commit/abc123", "commitOid": "abc123" + "0" * 34}

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield {"url": base, "calls": calls}
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def push_run_dir(tmp_path_factory, tiny_model_dir):
    """A tiny run of each module's own (not the shared tiny_run): push tests write eval/ into it."""
    import torch

    from smolora.train.recipe import train

    root = tmp_path_factory.mktemp("push-run")
    data = root / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"A{i}."}) + "\n" for i in range(24)))
    torch.set_num_threads(1)
    cfg = tiny_config(tiny_model_dir, data, root, "train.max_steps=2", "train.threads=1")
    return train(cfg, show_progress=False)


# --- the web UI's HTTP API -------------------------------------------------------------------------


@pytest.fixture
def ui_ws(tmp_path, tiny_model_dir) -> Path:
    """A workspace holding the tiny model and a question/answer file."""
    import shutil

    root = tmp_path / "ws"
    root.mkdir()
    shutil.copytree(tiny_model_dir, root / "tiny-llama")
    write_qa(root / "qa.jsonl", 40)
    return root


@pytest.fixture
def ui_client(ui_ws):
    """The UI app on ui_ws through a TestClient that sends the token and the UI header."""
    from fastapi.testclient import TestClient

    from smolora.ui import create_app

    with TestClient(create_app(ui_ws, token=UI_TOKEN), base_url=UI_BASE, headers=UI_HEADERS) as c:
        yield c
