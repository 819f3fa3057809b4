"""The UI controls no other test used (tests/test_options_used.py lists them), each through the
request the page sends for it, with its effect: the Chat view's temperature (#chat-temp), the
Train view's resume box (#resume), the Export view's quant (#export-quant) and output folder
(#export-out). The HTTP API on the tiny model, as in test_ui.py, with the same fixtures (conftest.py).
Chat and resume run for real; the export is checked up to the command it starts (below).

Run as:
    pytest -q tests/test_ui_options.py
"""

from __future__ import annotations

import json
import shutil
import time

import torch

from helpers import train_run, workspace_overrides


def chat(client, model: str, temperature: float) -> str:
    torch.manual_seed(0)
    body = {"model": model, "messages": [{"role": "user", "content": "Name a color"}], "max_new_tokens": 12}
    with client.stream("POST", "/api/chat", json={**body, "temperature": temperature}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == {"done": True}, events[-1]
    return "".join(e.get("text", "") for e in events)


def test_chat_temperature_samples(ui_client, ui_ws, chatty_model_dir):
    shutil.copytree(chatty_model_dir, ui_ws / "chatty")
    greedy = chat(ui_client, "chatty", 0)
    assert greedy.strip() and chat(ui_client, "chatty", 0) == greedy
    hot = chat(ui_client, "chatty", 5.0)
    assert hot != greedy and chat(ui_client, "chatty", 5.0) == hot  # seeded: the same draw again


def wait(client, url: str) -> dict:
    """The job's state once it is no longer running (a bound only so a hang fails, not a timing)."""
    deadline = time.time() + 600
    status = client.get(url).json()
    # stopping: the signal is sent; queued: a training job waits for the queue's worker
    while status["state"] in ("queued", "running", "stopping") and time.time() < deadline:
        time.sleep(0.5)
        status = client.get(url).json()
    return status


def test_resume_box_resumes(ui_client, ui_ws):
    r = ui_client.post("/api/train/start", json={"overrides": workspace_overrides("fresh"), "resume": True})
    assert r.status_code == 200, r.text
    status = wait(ui_client, "/api/train/status")
    # --resume reached `smolora train`: a name never trained has no checkpoint to continue from
    assert status["state"] == "failed" and "no complete checkpoint" in status["error"]


def test_export_quant_and_out(ui_client, ui_ws):
    """The command the Export view starts carries both; `export --quant` itself is checked in
    test_export.py (q8_0 is smaller than f16 and within its tolerance), so the job is stopped."""
    train_run(ui_ws, "a")
    job = ui_client.post(
        "/api/export", json={"run": "runs/a", "format": "gguf", "quant": "q8_0", "out": "exports/q8"}
    )
    assert job.status_code == 200, job.text
    command = job.json()["command"]
    ui_client.post(f"/api/jobs/{job.json()['id']}/stop")
    assert "--quant q8_0" in command and "--out exports/q8" in command, command
    # a tiny export may finish before the stop reaches it: any end will do, a hang will not
    assert wait(ui_client, f"/api/jobs/{job.json()['id']}")["state"] in ("stopped", "failed", "finished")
