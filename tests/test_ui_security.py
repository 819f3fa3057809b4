"""Nobody but the user gets into the web UI, and nothing the UI does can take it down.

The launch token (cookie or Bearer) on every /api route, the Host check on every bind, the
Origin check on writes, anti-framing headers, remote code refused from the browser, one
queued job per run directory (more in test_ui_queue.py), aborted chats that stop generating,
masked configs and console logs on disk, the Data view's capped worker, and the `smolora ui`
options behind all that.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from helpers import UI_BASE, UI_HEADERS, UI_TOKEN, free_port
from smolora.ui import create_app
from smolora.ui.guard import allowed_hosts

SECRET = "hf_" + "Ab1" * 10  # token-shaped: what redact.py masks


@pytest.fixture
def bare(ui_ws):
    """A client with no token at all: another user of the machine, or a page the token never reached."""
    with TestClient(create_app(ui_ws, token=UI_TOKEN), base_url=UI_BASE) as c:
        yield c


# --- the token ----------------------------------------------------------------------------------


def flat_routes(routes: list) -> list:
    """Every route, those of included routers too (FastAPI keeps an included APIRouter whole)."""
    found = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        found += flat_routes(inner.routes) if inner is not None else [route]
    return found


def test_every_api_route_needs_the_token(bare, ui_client):
    routes = [r for r in flat_routes(ui_client.app.routes) if getattr(r, "path", "").startswith("/api")]
    assert len(routes) > 20
    for route in routes:
        path = route.path.replace("{job_id}", "x").replace("{file_path:path}", "x")
        for method in route.methods - {"HEAD"}:
            r = bare.request(method, path, headers={"X-SmoLoRA": "1"})
            assert r.status_code == 401, (method, path, r.status_code)
            assert "token" in r.json()["error"]
    wrong = {"Authorization": "Bearer not-the-token-at-all-000"}
    assert bare.get("/api/info", headers=wrong).status_code == 401
    assert bare.get("/openapi.json").status_code == 401
    assert ui_client.get("/api/info").status_code == 200
    assert bare.get("/").status_code == 200  # the page itself holds nothing; it asks for the link


def test_the_printed_url_sets_a_strict_cookie_and_redirects_to_the_clean_url(bare):
    r = bare.get(f"/?token={UI_TOKEN}&x=1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/?x=1"
    cookie = r.headers["set-cookie"]
    assert (
        UI_TOKEN in cookie
        and "HttpOnly" in cookie
        and "SameSite=strict" in cookie.replace("Strict", "strict")
    )
    assert bare.get("/api/info").status_code == 200  # the cookie is enough from now on
    assert bare.post("/api/config/preview", json={"overrides": []}, headers={"X-SmoLoRA": "1"}).is_success
    bare.cookies.clear()
    assert bare.get("/?token=wrong-token-0000000000", follow_redirects=False).status_code == 401
    assert bare.get("/api/info").status_code == 401


def test_a_random_token_per_app(ui_ws):
    a, b = create_app(ui_ws).state.token, create_app(ui_ws).state.token
    assert a != b and len(a) >= 16


# --- Host, Origin, framing ------------------------------------------------------------------------


def test_foreign_host_names_are_refused_on_every_bind(ui_ws):
    for bind, extra in (("127.0.0.1", None), ("0.0.0.0", None), ("10.1.2.3", ["ui.example.lan"])):
        hosts = allowed_hosts(bind, extra)
        assert "*" not in hosts and "evil.example" not in hosts
        app = create_app(ui_ws, token=UI_TOKEN, allowed_hosts=hosts)
        with TestClient(app, base_url="http://evil.example:7860", headers=UI_HEADERS) as c:
            r = c.get("/api/info")
            assert r.status_code == 400 and "--allowed-host" in r.json()["error"], bind
            for ok in ("127.0.0.1:7860", "localhost", "[::1]:7860", *([] if bind == "0.0.0.0" else [bind])):
                assert c.get("/api/info", headers={"Host": ok}).status_code == 200, (bind, ok)
            if extra:
                assert c.get("/api/info", headers={"Host": "ui.example.lan:7860"}).status_code == 200


def test_writes_from_another_origin_are_refused(ui_client):
    body = {"overrides": []}
    for origin in ("http://evil.example", "http://127.0.0.1:9999", "null", "http://localhost:7860"):
        r = ui_client.post("/api/config/preview", json=body, headers={"Origin": origin})
        assert r.status_code == 403 and "Origin" in r.json()["error"], origin
    assert ui_client.post("/api/config/preview", json=body, headers={"Origin": UI_BASE}).status_code == 200
    assert (
        ui_client.post("/api/config/preview", json=body).status_code == 200
    )  # no Origin: not a browser page
    assert ui_client.get("/api/info", headers={"Origin": "http://evil.example"}).status_code == 200


def test_no_response_may_be_framed(ui_client, bare, ui_ws):
    run = ui_ws / "runs" / "r"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  name: x\n")
    (run / "metrics.jsonl").write_text("")
    (run / "eval" / "report.html").write_text("<p>report</p>")
    for r in (
        ui_client.get("/"),
        ui_client.get("/static/main.js"),
        ui_client.get("/api/info"),
        ui_client.get("/api/jobs/nope"),
        bare.get("/api/info"),
        ui_client.get("/api/info", headers={"Host": "evil.example"}),
    ):
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], r.url
        assert r.headers["x-frame-options"] == "DENY"
    report = ui_client.get("/api/runs/file/runs/r/eval/report.html")
    assert report.status_code == 200
    assert report.headers["content-security-policy"] == "sandbox; frame-ancestors 'none'"


# --- what the browser may ask for ------------------------------------------------------------------


def test_remote_code_and_pickles_are_refused_from_the_browser(ui_client, ui_ws):
    base = ["model.name=tiny-llama", "data.path=qa.jsonl", "output.name=rc"]
    for field in ("model.trust_remote_code", "model.allow_pickle"):
        view = ui_client.post("/api/config/preview", json={"overrides": [*base, f"{field}=true"]}).json()
        assert not view["ok"] and field in {p["path"] for p in view["problems"]}
        r = ui_client.post("/api/train/start", json={"overrides": [*base, f"{field}=true"]})
        assert (
            r.status_code == 400 and field in r.json()["error"] and "--allow-remote-code" in r.json()["error"]
        )
        r = ui_client.post("/api/data/inspect", json={"path": "qa.jsonl", "overrides": [f"{field}=true"]})
        assert r.status_code == 400 and field in r.json()["error"]
    assert not (ui_ws / "configs").exists()
    allowed = create_app(ui_ws, token=UI_TOKEN, allow_remote_code=True)
    with TestClient(allowed, base_url=UI_BASE, headers=UI_HEADERS) as c:
        view = c.post(
            "/api/config/preview", json={"overrides": [*base, "model.trust_remote_code=true"]}
        ).json()
        assert view["ok"], view["problems"]


def test_a_second_start_while_the_first_is_being_set_up_gets_409(ui_ws, monkeypatch):
    from smolora.ui import queued

    entered, release = threading.Event(), threading.Event()
    real = queued.submit_training

    def slow_start(*args, **kwargs):
        entered.set()
        release.wait(10)  # without the lock, the second request comes in here too and queues again
        return real(*args, **kwargs)

    monkeypatch.setattr(queued, "submit_training", slow_start)
    body = {"overrides": ["model.name=tiny-llama", "data.path=qa.jsonl", "output.name=slow"]}
    app = create_app(ui_ws, token=UI_TOKEN, workers=0)  # no worker: the job stays queued
    with TestClient(app, base_url=UI_BASE, headers=UI_HEADERS) as c:
        answers: list = []
        post = lambda: answers.append(c.post("/api/train/start", json=body))  # noqa: E731
        first, second = threading.Thread(target=post), threading.Thread(target=post)
        first.start()
        assert entered.wait(30)
        second.start()
        time.sleep(0.5)  # time to reach the lock; had it not, it must still get the 409
        release.set()
        first.join(30)
        second.join(30)
        assert sorted(r.status_code for r in answers) == [200, 409]
        assert any("already queued" in r.json().get("error", "") for r in answers)
        assert c.post("/api/train/start", json=body).status_code == 409  # queued now: still one
        assert c.post("/api/train/stop").json()["state"] == "stopped"


# --- chat -----------------------------------------------------------------------------------------


def test_an_aborted_chat_stops_generating_and_frees_the_model_lock(tiny_model_dir):
    from smolora.ui import chat

    messages = [{"role": "user", "content": "What is 3 plus one?"}]
    key = str(tiny_model_dir)
    full = list(chat.stream_answer(key, messages, max_new_tokens=200))
    assert len(full) > 20  # left alone, the tiny model talks for a while
    cancel = threading.Event()
    pieces = chat.stream_answer(key, messages, max_new_tokens=200, cancel=cancel)
    got = [next(pieces)]
    cancel.set()  # what the HTTP handler does when the browser goes away
    got += list(pieces)
    assert len(got) < len(full) // 2
    assert not chat._generate_lock.locked()
    closed = chat.stream_answer(key, messages, max_new_tokens=200)
    next(closed)
    closed.close()  # a reader that just stops: the generator's own cleanup stops generation
    assert not chat._generate_lock.locked()


def test_a_client_disconnect_cancels_the_chat(ui_ws, monkeypatch):
    from smolora.ui import chat
    from ui_server import serve_in_thread

    given: list[threading.Event] = []

    def endless(key, messages, max_new_tokens, temperature, system_prompt, cancel):
        given.append(cancel)  # the real stream_answer's stopping criterion reads this event
        while not cancel.is_set():
            yield "word "
            time.sleep(0.01)

    monkeypatch.setattr(chat, "stream_answer", endless)
    with serve_in_thread(create_app(ui_ws, token=UI_TOKEN)) as url:
        body = json.dumps({"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}).encode()
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            head = (
                f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {UI_TOKEN}\r\n"
                f"X-SmoLoRA: 1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            s.sendall(head.encode() + body)
            seen = b""
            while b'"text"' not in seen:
                seen += s.recv(4096)
        # The socket is closed: the stream's generator is cancelled and tells the model to stop.
        assert given[0].wait(30), "the chat kept generating after the client went away"


# --- secrets on disk -------------------------------------------------------------------------------


def test_configs_written_by_the_ui_are_masked(ui_client, ui_ws):
    (ui_ws / "empty.jsonl").write_text("\n")
    overrides = [
        "model.name=tiny-llama",
        "data.path=empty.jsonl",
        f"data.system_prompt=Use {SECRET} to push",
        "output.name=masked",
    ]
    view = ui_client.post("/api/config/preview", json={"overrides": overrides}).json()
    assert SECRET not in view["yaml"] and view["masked"] == ["data.system_prompt"]
    r = ui_client.post("/api/train/start", json={"overrides": overrides})
    assert r.status_code == 200, r.text
    written = (ui_ws / "configs" / "masked.yaml").read_text()
    assert SECRET not in written and "hf_***" in written
    deadline = time.time() + 300
    while (
        ui_client.get("/api/train/status").json()["state"] in ("queued", "running") and time.time() < deadline
    ):
        time.sleep(0.5)
    for f in ui_ws.rglob("*"):
        if f.is_file() and f.suffix in (".yaml", ".log", ".json", ".jsonl"):
            assert SECRET not in f.read_text(errors="replace"), f


def test_console_logs_are_masked_on_disk(tmp_path):
    from smolora.ui import jobs

    code = (
        f"import sys; print('pushing with token={SECRET}'); "
        "print('Authorization: Bearer sk-abcdefghijklmnopqrstuv', flush=True); "
        f"sys.stderr.write('progress {SECRET}\\r50%\\r100%\\n')"
    )
    log = tmp_path / "job.console.log"
    job = jobs.start_job("eval", [sys.executable, "-c", code], tmp_path, log)
    job["proc"].wait(60)
    state = jobs.job_state(job)  # waits for the last lines to reach the file
    assert state["state"] == "finished"
    text = log.read_text()
    assert SECRET not in text and "sk-abc" not in text
    assert "token=***" in text and "Bearer ***" in text and "100%" in text


# --- the Data view's worker ------------------------------------------------------------------------


@pytest.fixture
def fresh_worker():
    from smolora.ui import inspect

    inspect.stop_worker()  # a worker from another test runs under other limits
    yield inspect
    inspect.stop_worker()


def test_a_file_too_big_for_the_data_view_is_an_error_not_a_dead_ui(
    ui_client, ui_ws, fresh_worker, monkeypatch
):
    monkeypatch.setattr(fresh_worker, "MEMORY_HEADROOM", 192 * 2**20)
    row = {"question": "What is x? " * 20, "answer": "It is y. " * 20}
    lines = (json.dumps({**row, "question": f"{i}: {row['question']}"}) for i in range(60_000))
    (ui_ws / "big.jsonl").write_text("\n".join(lines) + "\n")  # ~29 MB: far more than 192 MiB once parsed
    model = ["model.name=tiny-llama"]
    r = ui_client.post("/api/data/inspect", json={"path": "big.jsonl", "overrides": model})
    assert 400 <= r.status_code < 600 and r.status_code != 404
    error = r.json()["error"]
    assert "\n" not in error and "big.jsonl" in error
    assert ui_client.get("/api/info").status_code == 200  # the UI process is untouched
    ok = ui_client.post("/api/data/inspect", json={"path": "qa.jsonl", "overrides": model})
    assert ok.status_code == 200 and ok.json()["counts"]["input"] == 40
    assert os.getpid() != fresh_worker._worker["proc"].pid  # and it was read elsewhere


def test_a_stuck_inspection_times_out_and_the_next_one_works(ui_client, fresh_worker, monkeypatch):
    monkeypatch.setattr(fresh_worker, "TIMEOUT_S", 0.01)  # no worker starts that fast
    body = {"path": "qa.jsonl", "overrides": ["model.name=tiny-llama"]}
    r = ui_client.post("/api/data/inspect", json=body)
    assert r.status_code == 504 and "took over" in r.json()["error"]
    monkeypatch.setattr(fresh_worker, "TIMEOUT_S", 600.0)
    assert ui_client.post("/api/data/inspect", json=body).status_code == 200


# --- the `smolora ui` options ----------------------------------------------------------------------


def start_ui(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    out = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "smolora.cli.main", "ui", "--port", str(port), *args],
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    return proc, port


def wait_for(port: int, proc: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.time() + 180
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
            return
        except httpx.HTTPError:
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)


def test_cli_token_allowed_host_and_allow_remote_code(ui_ws, tmp_path):
    import httpx

    token = "cli-token-abcdefghijklmnop"
    args = ["--workspace", str(ui_ws), "--token", token, "--allowed-host", "ui.test", "--allow-remote-code"]
    log = tmp_path / "ui.log"
    proc, port = start_ui(args, {"SMOLORA_HOME": str(tmp_path / "home")}, log)
    try:
        wait_for(port, proc, log)
        assert f"http://127.0.0.1:{port}/?token={token}" in log.read_text()
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            assert c.get("/api/info").status_code == 401
            assert c.get("/api/info", headers=auth).status_code == 200
            assert c.get("/api/info", headers={**auth, "Host": "ui.test"}).status_code == 200
            assert c.get("/api/info", headers={**auth, "Host": "other.test"}).status_code == 400
            body = {"overrides": ["data.path=qa.jsonl", "model.trust_remote_code=true"]}
            view = c.post("/api/config/preview", json=body, headers={**auth, "X-SmoLoRA": "1"}).json()
            assert "model.trust_remote_code" not in {p["path"] for p in view["problems"]}
    finally:
        proc.terminate()
        proc.wait(30)


def test_cli_token_from_the_environment_and_a_short_token_refused(ui_ws, tmp_path):
    import httpx

    token = "env-token-abcdefghijklmnop"
    log = tmp_path / "ui.log"
    proc, port = start_ui(["--workspace", str(ui_ws)], {"SMOLORA_UI_TOKEN": token}, log)
    try:
        wait_for(port, proc, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=True, timeout=120) as browser:
            page = browser.get(f"/?token={token}")
            assert page.status_code == 200 and page.url.query == b"" and page.history[0].status_code == 303
            assert browser.get("/api/info").status_code == 200  # the cookie it set opens the API
    finally:
        proc.terminate()
        proc.wait(30)
    short = subprocess.run(
        [sys.executable, "-m", "smolora.cli.main", "ui", "--workspace", str(ui_ws), "--token", "short"],
        capture_output=True,
        text=True,
    )
    assert short.returncode == 2 and "at least 16 characters" in short.stderr + short.stdout
