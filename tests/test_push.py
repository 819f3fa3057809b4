"""`smolora push` against a local fake of the hub's HTTP API that records what was uploaded.

The fake implements only what `huggingface_hub` calls for create_repo + create_commit
(repos/create, validate-yaml, preupload, commit). It answers every file as a "regular"
upload, so the content arrives inline in the commit; the hub's LFS/Xet transfer for large
files is not exercised here.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from fastapi import FastAPI, Request  # module level: FastAPI resolves the string annotations here

from helpers import tiny_config
from smolora.errors import ExportError
from smolora.export.push import model_card, push_run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fake_hub():
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
def tiny_run(tmp_path_factory, tiny_model_dir):
    """This module's own tiny run (not conftest's shared one): its tests write eval/ into it."""
    from smolora.train.recipe import train

    root = tmp_path_factory.mktemp("push-run")
    data = root / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"A{i}."}) + "\n" for i in range(24)))
    torch.set_num_threads(1)
    cfg = tiny_config(tiny_model_dir, data, root, "train.max_steps=2", "train.threads=1")
    return train(cfg, show_progress=False)


def push_cli(fake_hub, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_ENDPOINT": fake_hub["url"],
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "hf_fake_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "smolora.cli.main", "push", *args], capture_output=True, text=True, env=env
    )


def last_commit(fake_hub) -> dict:
    return [c for c in fake_hub["calls"] if c["call"] == "commit"][-1]


def test_push_adapter_uploads_files_and_card(fake_hub, tiny_run):
    r = push_cli(fake_hub, str(tiny_run), "--repo", "me/tiny-lora")
    assert r.returncode == 0, r.stderr[-2000:]
    create = [c for c in fake_hub["calls"] if c["call"] == "create"][-1]
    assert create["body"]["name"] == "tiny-lora" and create["body"]["organization"] == "me"
    assert create["auth"] == "Bearer hf_fake_token"
    commit = last_commit(fake_hub)
    assert commit["repo"] == "me/tiny-lora"
    files = commit["files"]
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "smolora.json",
        "README.md",
        "smolora_config.yaml",
    ):
        assert name in files, sorted(files)
    assert (
        files["adapter_model.safetensors"]
        == (tiny_run / "adapter" / "adapter_model.safetensors").read_bytes()
    )
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: peft\n") and "AutoPeftModelForCausalLM" in card
    assert "## Training config" in card and "max_steps: 2" in card


def test_push_merged_model(fake_hub, tiny_run):
    r = push_cli(fake_hub, str(tiny_run), "--repo", "me/tiny-merged", "--merged")
    assert r.returncode == 0, r.stderr[-2000:]
    files = last_commit(fake_hub)["files"]
    assert {"model.safetensors", "config.json", "generation_config.json", "parity.json", "README.md"} <= set(
        files
    )
    card = files["README.md"].decode()
    assert "library_name: transformers" in card and "## Parity" in card and "AutoModelForCausalLM" in card


def test_card_carries_eval_metrics(tiny_run):
    from smolora.runs import read_meta

    (tiny_run / "eval").mkdir(exist_ok=True)
    metrics = {"base": {"exact_match": 0.1}, "fine_tuned": {"exact_match": 0.75}, "n": 12}
    (tiny_run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    card = model_card(tiny_run, read_meta(tiny_run / "adapter"), "me/x", merged=False)
    assert "| exact_match | 0.100 | 0.750 |" in card and "On 12 held-out examples" in card


def test_push_errors_are_actionable(tiny_run, monkeypatch):
    with pytest.raises(ExportError, match="USER/NAME"):
        push_run(tiny_run, "no-slash")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="HF_HUB_OFFLINE"):
        push_run(tiny_run, "me/x")
