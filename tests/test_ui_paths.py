"""Paths that arrive over HTTP stay inside the workspace: every UI endpoint that takes one, each
way out (`..`, absolute paths, symlinks pointing out, the process's own directory), and the
OpenAI-compatible server, which takes no paths at all. Keys are never echoed back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from smolora.ui import create_app

TOKEN = "test-token-0123456789abcdef"
HEADERS = {"X-SmoLoRA": "1", "Authorization": f"Bearer {TOKEN}"}
BASE = "http://127.0.0.1:7860"  # a loopback Host, as a browser on this machine sends


@pytest.fixture
def outside(tmp_path) -> Path:
    """A directory next to the workspace with things worth stealing: a data file, a model, a report."""
    root = tmp_path / "outside"
    (root / "eval").mkdir(parents=True)
    (root / "secret.jsonl").write_text('{"text": "private"}\n')
    (root / "eval" / "report.html").write_text("private report")
    return root


@pytest.fixture
def ws(tmp_path, tiny_model_dir, outside) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "qa.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    shutil.copytree(tiny_model_dir, outside / "model")
    # A run directory whose eval/ is a symlink out of the workspace, and a symlinked data file.
    run = root / "runs" / "r"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")
    (run / "config.yaml").write_text("model:\n  name: smollm2-135m\n")
    (run / "eval").symlink_to(outside / "eval")
    (root / "link.jsonl").symlink_to(outside / "secret.jsonl")
    (root / "escape").symlink_to(outside)
    return root


@pytest.fixture
def client(ws):
    with TestClient(create_app(ws, token=TOKEN), base_url=BASE, headers=HEADERS) as c:
        yield c


def bad_paths(outside: Path) -> list[str]:
    return ["../../etc/passwd", "/etc/passwd", str(outside / "secret.jsonl"), "escape/secret.jsonl"]


def test_data_endpoints_refuse_every_way_out(client, outside):
    for bad in [*bad_paths(outside), "link.jsonl"]:
        r = client.post("/api/data/inspect", json={"path": bad})
        assert r.status_code == 403, bad
        assert "outside the workspace" in r.json()["error"]
    for bad in ["../evil.jsonl", "/tmp/evil.jsonl", str(outside / "evil.jsonl"), "escape/evil.jsonl"]:
        assert client.post(f"/api/upload?path={bad}", content=b"{}\n").status_code == 403, bad
    assert not (outside / "evil.jsonl").exists()


def test_run_endpoints_refuse_every_way_out(client, outside):
    for bad in [*bad_paths(outside), str(outside), "escape"]:
        assert client.get("/api/runs/metrics", params={"run": bad}).status_code == 403, bad
        assert client.get("/api/runs/compare", params={"a": "runs/r", "b": bad}).status_code == 403, bad
        assert client.get("/api/export/parity", params={"run": bad}).status_code == 403, bad
        assert client.post("/api/runs/eval", json={"name": bad}).status_code in (403, 501), bad
        assert client.post("/api/export", json={"run": bad}).status_code in (403, 501), bad
    export_out = client.post("/api/export", json={"run": "runs/r", "out": "../../tmp/x"})
    assert export_out.status_code in (403, 501)


def test_report_files_behind_a_symlink_are_not_served(client):
    r = client.get("/api/runs/file/runs/r/eval/report.html")
    assert r.status_code == 403 and "private" not in r.text
    assert client.get("/api/runs/file/escape/eval/report.html").status_code == 403


def test_chat_and_pull_refuse_models_outside(client, outside, monkeypatch):
    hi = [{"role": "user", "content": "hi"}]
    for bad in [str(outside / "model"), "../outside/model", "escape/model"]:
        assert client.post("/api/chat", json={"model": bad, "messages": hi}).status_code == 403, bad
        assert client.post("/api/models/pull", json={"name": bad}).status_code in (403, 501), bad
    # A relative name that exists only next to the UI process (not in the workspace) is a path too.
    monkeypatch.chdir(outside)
    r = client.post("/api/chat", json={"model": "model", "messages": hi})
    assert r.status_code == 403 and "not in the workspace" in r.json()["error"]
    assert client.post("/api/models/remove", json={"name": "../.."}).status_code == 400


def test_uploads_never_replace_files_that_decide_what_loads(client, ws):
    for name in ("runs/r/adapter/smolora.json", "tiny/config.json", "adapter_config.json"):
        r = client.post(f"/api/upload?path={name}", content=b'{"base_model": "/etc"}')
        assert r.status_code == 400 and "not data" in r.json()["error"], name
    assert not (ws / "runs" / "r" / "adapter").exists()


def test_train_form_paths_stay_inside(client, outside):
    overrides = ["data.path=qa.jsonl"]
    for extra, field in [
        ("train.accelerate_config=/etc/passwd", "train.accelerate_config"),
        ("output.name=../../escaped", "output.name"),
        (f"model.name={outside / 'model'}", "model.name"),
        ("data.val_path=escape/secret.jsonl", "data.val_path"),
    ]:
        view = client.post("/api/config/preview", json={"overrides": [*overrides, extra]}).json()
        assert field in {p["path"] for p in view["problems"]}, (extra, view["problems"])
        assert client.post("/api/train/start", json={"overrides": [*overrides, extra]}).status_code in (
            400,
            403,
        )
    # `extends:` would make the training process read another file: not a config key here.
    view = client.post("/api/config/preview", json={"overrides": [*overrides, "extends=/etc/passwd"]}).json()
    assert not view["ok"] and "extends" in {p["path"] for p in view["problems"]}


def test_job_logs_and_errors_never_echo_keys(client, ws, monkeypatch):
    from smolora.ui import jobs

    log = ws / "job.log"
    log.write_text(
        "pushing with token=hf_abcdefghijklmnopqrstuvwx1234\nAuthorization: Bearer sk-abcdefghijklmnopqrst\n"
    )
    tail = jobs.log_tail(log)
    assert "hf_abc" not in tail and "sk-abc" not in tail and "token=***" in tail
    command = jobs.display_command(
        ["python", "-m", "smolora.cli.main", "push", "runs/r", "--token", "hf_x1234567890"]
    )
    assert command == "smolora push runs/r --token ***"


# --- the OpenAI-compatible server ----------------------------------------------------------


def test_server_takes_no_paths_and_never_echoes_the_key(tiny_model_dir, tmp_path):
    from smolora.serve.app import create_app as server_app
    from smolora.serve.load import load_served

    key = "sk-server-key-0123456789abcdef"
    served = load_served(str(tiny_model_dir), device="cpu")
    with TestClient(server_app(served, api_key=key)) as c:
        wrong = c.get("/v1/models", headers={"Authorization": "Bearer sk-wrong-guess-0123456789"})
        assert wrong.status_code == 401
        assert key not in wrong.text and "wrong-guess" not in wrong.text
        assert key not in c.get("/health").text
        auth = {"Authorization": f"Bearer {key}"}
        for name in ["../../etc/passwd", "/etc/passwd", str(tmp_path)]:
            body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            r = c.post("/v1/chat/completions", json=body, headers=auth)
            # The model field picks among the models loaded at start; nothing is read from disk.
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", name
            assert key not in r.text


def test_globs_and_directories_never_follow_symlinks_out(client, ws, outside):
    data = ws / "data"
    data.mkdir()
    (data / "good.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    (data / "stolen.jsonl").symlink_to(outside / "secret.jsonl")
    for path in ("data", "data/*.jsonl", "**/*.jsonl"):
        view = client.post("/api/config/preview", json={"overrides": [f"data.path={path}"]}).json()
        problems = {p["path"]: p["message"] for p in view["problems"]}
        # Refused here (outside the workspace) or by the loader itself (a link out of a directory).
        assert "stolen.jsonl" in problems.get("data.path", ""), (path, problems)
        view = client.post(
            "/api/config/preview", json={"overrides": ["data.path=qa.jsonl", f"data.val_path={path}"]}
        )
        assert "data.val_path" in {p["path"] for p in view.json()["problems"]}, path
    r = client.post("/api/data/inspect", json={"path": "data"})
    assert r.status_code in (400, 403) and "stolen.jsonl" in r.json()["error"] and "private" not in r.text
    listed = [f["path"] for f in client.get("/api/files").json()["files"]]
    assert "data/good.jsonl" in listed and "data/stolen.jsonl" not in listed and "link.jsonl" not in listed
    (data / "stolen.jsonl").unlink()
    view = client.post("/api/config/preview", json={"overrides": ["data.path=data"]}).json()
    assert view["ok"], view["problems"]  # a directory whose files all stay inside is fine


def test_names_too_long_for_the_file_system_are_a_400(client):
    # Found by schemathesis: a 300-character name reached Path.exists() and its OSError gave a 500.
    long = "0" * 300
    for method, path, body in [
        ("POST", "/api/runs/eval", {"name": long}),
        ("POST", "/api/models/pull", {"name": long}),
        ("POST", "/api/data/inspect", {"path": long}),
        ("POST", "/api/chat", {"model": long, "messages": []}),
        ("GET", f"/api/runs/metrics?run={long}", None),
    ]:
        r = client.request(method, path, json=body)
        assert r.status_code == 400 and "that long" in r.json()["error"], (path, r.status_code)
