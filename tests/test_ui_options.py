"""The UI controls no other test used (tests/test_options_used.py lists them), each through the
request the page sends for it, with its effect: the Chat view's temperature (#chat-temp), the
Train view's resume box (#resume), the Export view's quant (#export-quant) and output folder
(#export-out). The HTTP API on the tiny model, as in test_ui.py, whose fixtures these use.
Chat and resume run for real; the export is checked up to the command it starts (below).

Run as:
    pytest -q tests/test_ui_options.py
"""

from __future__ import annotations

import json
import shutil
import time

import torch

from test_sampling import chatty_model_dir  # noqa: F401 (fixture)
from test_ui import client, tiny_overrides, train_run, ws  # noqa: F401 (fixtures)


def chat(client, model: str, temperature: float) -> str:  # noqa: F811 (the fixture)
    torch.manual_seed(0)
    body = {"model": model, "messages": [{"role": "user", "content": "Name a color"}], "max_new_tokens": 12}
    with client.stream("POST", "/api/chat", json={**body, "temperature": temperature}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == {"done": True}, events[-1]
    return "".join(e.get("text", "") for e in events)


def test_chat_temperature_samples(client, ws, chatty_model_dir):  # noqa: F811 (fixtures)
    shutil.copytree(chatty_model_dir, ws / "chatty")
    greedy = chat(client, "chatty", 0)
    assert greedy.strip() and chat(client, "chatty", 0) == greedy
    hot = chat(client, "chatty", 5.0)
    assert hot != greedy and chat(client, "chatty", 5.0) == hot  # seeded: the same draw again


def wait(client, url: str) -> dict:  # noqa: F811 (the fixture)
    """The job's state once it is no longer running (a bound only so a hang fails, not a timing)."""
    deadline = time.time() + 600
    status = client.get(url).json()
    while status["state"] == "running" and time.time() < deadline:
        time.sleep(0.5)
        status = client.get(url).json()
    return status


def test_resume_box_resumes(client, ws):  # noqa: F811 (fixtures)
    r = client.post("/api/train/start", json={"overrides": tiny_overrides("fresh"), "resume": True})
    assert r.status_code == 200, r.text
    status = wait(client, "/api/train/status")
    # --resume reached `smolora train`: a name never trained has no checkpoint to continue from
    assert status["state"] == "failed" and "no complete checkpoint" in status["error"]


def test_export_quant_and_out(client, ws):  # noqa: F811 (fixtures)
    """The command the Export view starts carries both; `export --quant` itself is checked in
    test_export.py (q8_0 is smaller than f16 and within its tolerance), so the job is stopped."""
    train_run(ws, "a")
    job = client.post(
        "/api/export", json={"run": "runs/a", "format": "gguf", "quant": "q8_0", "out": "exports/q8"}
    )
    assert job.status_code == 200, job.text
    command = job.json()["command"]
    client.post(f"/api/jobs/{job.json()['id']}/stop")
    assert "--quant q8_0" in command and "--out exports/q8" in command, command
    assert wait(client, f"/api/jobs/{job.json()['id']}")["state"] in ("stopped", "failed")
