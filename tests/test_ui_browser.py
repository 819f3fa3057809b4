"""The web UI in a real browser: Playwright drives Debian's headless Chromium against `smolora ui`
started as a subprocess on a workspace holding the tiny random model.

Scenarios: train from the form and watch the loss chart gain points, stop (a checkpoint is
kept); chat gets an answer; the Data view shows the detected format of an uploaded file; an
upload path outside the workspace is refused; Runs, Export and Models views work.

Chromium comes from apt (`apt-get install -y chromium`), which `make setup` runs when it is
missing; without /usr/bin/chromium these tests skip with a message. With SMOLORA_SCREENSHOTS=1 each
test saves its view to docs/img/ui-<view>.png (the committed screenshots are made that way).

Run as:
    SMOLORA_SCREENSHOTS=1 pytest -q tests/test_ui_browser.py
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "img"
WAIT_MS = 240_000  # the longest any one wait may take (model loads on a busy 2-core machine)
TOKEN = "browser-token-0123456789abcdef"  # given as SMOLORA_UI_TOKEN, as a user may
QA_ROWS = [{"question": f"What is {i} plus one?", "answer": f"It is {i + 1}."} for i in range(40)]


def screenshot(page, view: str, full_page: bool = False) -> None:
    if os.environ.get("SMOLORA_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"ui-{view}.png"), full_page=full_page)


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():  # `make setup` installs it; tests never run apt-get themselves
        pytest.skip(
            f"browser tests need Chromium at {CHROMIUM}: run `make setup` or `apt-get install -y chromium`"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir) -> Path:
    ws = tmp_path_factory.mktemp("ui-ws")
    shutil.copytree(tiny_model_dir, ws / "tiny-llama")
    (ws / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in QA_ROWS) + "\n")
    return ws


@pytest.fixture(scope="module")
def finished_runs(workspace) -> list[str]:
    """Two finished runs (trained in-process, seconds each) for the Runs, Chat and Export views."""
    from helpers import tiny_overrides
    from smolora.config import load_config
    from smolora.train.recipe import train

    home = os.environ.get("SMOLORA_HOME")
    os.environ["SMOLORA_HOME"] = str(workspace.parent / "home-runs")
    try:
        for name, extra in (("tiny-a", ["lora.r=16"]), ("tiny-b", ["lora.r=4", "train.lr=3e-3"])):
            steps = ("train.max_steps=30", "train.save_every=15", "train.eval_every=10")
            overrides = tiny_overrides(
                "tiny-llama", "qa.jsonl", workspace, *steps, f"output.name={name}", *extra
            )
            # Relative model/data paths, as the UI writes them: train from inside the workspace.
            cwd = os.getcwd()
            os.chdir(workspace)
            try:
                train(load_config(None, overrides), show_progress=False)
            finally:
                os.chdir(cwd)
    finally:
        if home is None:
            os.environ.pop("SMOLORA_HOME", None)
        else:
            os.environ["SMOLORA_HOME"] = home
    return ["runs/tiny-a", "runs/tiny-b"]


@pytest.fixture(scope="module")
def server(workspace, tmp_path_factory):
    """`smolora ui` as a real subprocess on a free port, with its own SMOLORA_HOME."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path_factory.mktemp("ui-home")
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "smolora.cli.main", "ui", "--port", str(port), "--workspace", str(workspace)],
        env={**os.environ, "SMOLORA_HOME": str(home), "HF_HUB_OFFLINE": "1", "SMOLORA_UI_TOKEN": TOKEN},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()  # the page needs no token; the API does
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"smolora ui did not start:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield url
    proc.terminate()  # uvicorn shuts down; the UI stops its training jobs cleanly
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, timeout=60_000)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server}?token={TOKEN}")  # the URL smolora ui prints; the cookie does the rest
    page.wait_for_selector("body[data-ready='1']")
    assert "token" not in page.url
    yield page
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def open_view(page, view: str) -> None:
    page.click(f"nav a[data-view={view}]")
    page.wait_for_selector(f"#view-{view}:not([hidden])")


def fill_tiny_run(page, name: str, steps: int, *more: str) -> None:
    """The Train form for a tiny run of `steps` (checkpoints every 1000); `more`: field, value, ..."""
    values = ["model.name", "tiny-llama", "data.path", "qa.jsonl", "data.max_length", "64"]
    values += ["train.batch_size", "4", "train.lr", "0.01", "train.max_steps", str(steps)]
    values += ["train.save_every", "1000", *more, "output.name", name]
    for field, value in zip(values[::2], values[1::2], strict=True):
        page.fill(f'[name="{field}"]', value)
    page.wait_for_function(f"document.querySelector('#preview-yaml').textContent.includes('name: {name}')")
    page.wait_for_selector("#config-state .ok")


def test_train_from_the_form_chart_gains_points_then_stop_keeps_a_checkpoint(page, workspace):
    open_view(page, "train")
    # save_every 1000: so the newest checkpoint below is the Stop's own
    fill_tiny_run(page, "browser-run", 3000, "train.eval_every", "10")
    assert "smolora train configs/browser-run.yaml" in page.text_content("#preview-command")
    assert "name: tiny-llama" in page.text_content("#preview-yaml")

    # An invalid value is flagged next to its field, and Start is disabled until it is fixed.
    page.fill('[name="lora.r"]', "0")
    page.wait_for_selector('.field.invalid[data-key="lora.r"]')
    assert "greater than or equal to 1" in page.text_content('.field[data-key="lora.r"] .field-error')
    assert page.is_disabled("#start-btn")
    page.fill('[name="lora.r"]', "16")
    page.wait_for_selector("#config-state .ok")

    page.click("#start-btn")
    page.wait_for_selector("#train-state .badge-running")
    want = 25 if os.environ.get("SMOLORA_SCREENSHOTS") == "1" else 3
    page.wait_for_function(
        f"+document.querySelector('#loss-chart').dataset.points >= {want}", timeout=WAIT_MS
    )
    page.wait_for_function("document.querySelector('#stat-tps').textContent !== '–'")
    assert page.locator("#loss-chart path.series").count() >= 1
    page.wait_for_function("document.querySelector('#sys-cpu').textContent !== '–'")
    page.evaluate("document.querySelector('.pane-form').scrollTop = 0")
    screenshot(page, "train")

    page.click("#stop-btn")
    page.wait_for_selector("#train-state .badge-stopped", timeout=WAIT_MS)
    checkpoints = list((workspace / "runs" / "browser-run" / "checkpoints").glob("checkpoint-*"))
    steps = sorted(int(c.name.split("-")[1]) for c in checkpoints)
    # the newest is the Stop's own; any other is a best-so-far one, taken at an evaluation (every 10)
    assert f"checkpoint-{steps[-1]}" in page.text_content("#train-notice"), steps
    assert all(s % 10 == 0 for s in steps[:-1]), steps
    assert (workspace / "configs" / "browser-run.yaml").exists()


def test_data_view_shows_the_detected_format_of_an_upload(page, workspace, tmp_path):
    upload = tmp_path / "alpaca.jsonl"  # a file on the user's machine, outside the workspace
    rows = [
        {
            "instruction": f"Add one to {i}" + ", then add one more" * (i % 4),
            "input": "",
            "output": f"{i + 1 + i % 4}",
        }
        for i in range(30)
    ]
    upload.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    open_view(page, "train")
    page.fill('[name="model.name"]', "tiny-llama")
    page.fill('[name="data.max_length"]', "64")
    open_view(page, "data")
    page.set_input_files("#upload-file", str(upload))
    assert page.input_value("#upload-path") == "uploads/alpaca.jsonl"
    page.click("#upload-btn")
    page.wait_for_selector("#data-format", timeout=WAIT_MS)
    assert page.text_content("#data-format") == "alpaca"
    assert (workspace / "uploads" / "alpaca.jsonl").read_text() == upload.read_text()
    page.wait_for_selector("#length-hist rect.bar")
    assert page.locator(".example-text .trained").count() >= 1
    assert "data.max_length" in page.text_content(".warnings")
    screenshot(page, "data", full_page=True)


def test_an_upload_path_outside_the_workspace_is_refused(page, workspace, tmp_path):
    upload = tmp_path / "x.jsonl"
    upload.write_text('{"text": "hello"}\n')
    open_view(page, "data")
    for dest in ("../escaped.jsonl", str(tmp_path / "escaped.jsonl")):
        page.set_input_files("#upload-file", str(upload))
        page.fill("#upload-path", dest)
        page.click("#upload-btn")
        page.wait_for_selector("#upload-notice .notice-error")
        assert "outside the workspace" in page.text_content("#upload-notice")
    assert not (workspace.parent / "escaped.jsonl").exists() and not (tmp_path / "escaped.jsonl").exists()


def test_chat_gets_an_answer_side_by_side_with_the_base(page, finished_runs):
    open_view(page, "chat")
    page.fill("#chat-model", finished_runs[0])
    page.dispatch_event("#chat-model", "change")
    page.check("#chat-side")
    page.fill("#chat-max", "12")
    page.fill("#chat-input", "What is 3 plus one?")
    page.click("#chat-send")
    page.wait_for_selector(".chat-col:nth-child(2) .msg-assistant.done", timeout=WAIT_MS)
    assert page.locator(".chat-col").count() == 2
    assert page.locator(".msg-error").count() == 0
    tuned = page.text_content(".chat-col:nth-child(2) .msg-assistant .msg-text")
    assert tuned.strip(), "the fine-tuned model gave no answer"
    screenshot(page, "chat")


def test_runs_view_lists_and_compares(page, finished_runs):
    open_view(page, "runs")
    page.wait_for_selector("#runs-table tbody tr")
    names = page.locator("#runs-table .run-name").all_text_contents()
    assert {"tiny-a", "tiny-b"} <= set(names)
    # under each name: the step that won and the diagnosis (eval_every=10 over 30 steps)
    lines = page.locator("#runs-table .diagnosis").all_text_contents()
    assert sum(line.startswith("best checkpoint: step ") for line in lines) == 2, lines
    for path in finished_runs:
        page.check(f'#runs-table .cmp[value="{path}"]')
    page.click("#compare-btn")
    page.wait_for_selector("#compare-chart path.series")
    assert "lora.r" in page.text_content("#compare")
    screenshot(page, "runs")


def test_export_view_merges_and_shows_parity(page, finished_runs, workspace):
    open_view(page, "export")
    page.wait_for_selector(f'#export-run option[value="{finished_runs[0]}"]', state="attached")
    page.select_option("#export-run", finished_runs[0])
    page.select_option("#export-format", "merge")
    if page.is_disabled("#export-btn"):  # this build has no merge at all: the view says so
        assert "not available" in page.text_content("#export-avail")
        screenshot(page, "export")
        return
    page.click("#export-btn")
    page.wait_for_selector("#export-job .badge-finished, #export-job .badge-failed", timeout=WAIT_MS)
    assert page.locator("#export-job .badge-finished").count() == 1, page.text_content("#export-job")
    page.wait_for_selector("#parity table")
    assert "parity" in page.text_content("#parity")
    assert (workspace / finished_runs[0] / "merged" / "parity.json").exists()
    screenshot(page, "export")


def test_models_view_pulls_verifies_and_lists(page):
    open_view(page, "models")
    page.wait_for_selector("#models-table tbody tr")
    assert "smollm2-135m" in page.text_content("#models-table")
    page.fill("#pull-name", "tiny-llama")  # a model directory in the workspace: copied into the store
    page.click("#pull-btn")
    page.wait_for_selector("#pull-job .badge-finished", timeout=WAIT_MS)
    page.wait_for_selector("#models-table .run-name:text-is('tiny-llama')")
    row = page.locator("#models-table tbody tr", has_text="tiny-llama")
    row.locator("button", has_text="verify").click()
    page.wait_for_selector("#models-notice .notice-ok")
    assert "match their sha256" in page.text_content("#models-notice")
    screenshot(page, "models")


def test_without_the_token_the_page_asks_for_the_printed_link(browser, server):
    context = browser.new_context()
    page = context.new_page()
    page.goto(server)
    page.wait_for_selector("body[data-ready='locked']")
    assert "?token=" in page.text_content("#token-needed")
    status = page.evaluate("fetch('/api/info').then(r => r.status)")
    assert status == 401
    page.goto(f"{server}?token={TOKEN}")
    page.wait_for_selector("body[data-ready='1']")
    framed = page.evaluate("fetch('/').then(r => r.headers.get('content-security-policy'))")
    assert "frame-ancestors 'none'" in framed
    context.close()


def test_the_form_says_which_values_are_masked_in_the_config_it_writes(page):
    open_view(page, "train")
    page.fill('[name="data.path"]', "qa.jsonl")
    page.fill('[name="data.system_prompt"]', "Use hf_" + "Ab1" * 10 + " here")
    page.wait_for_selector("#form-problems .notice-info")
    assert "data.system_prompt" in page.text_content("#form-problems")
    assert "hf_Ab1" not in page.text_content("#preview-yaml")


def test_the_form_has_the_objective_and_the_chart_shows_its_metrics(page):
    open_view(page, "train")
    options = page.eval_on_selector_all('select[name="train.objective"] option', "os => os.map(o => o.value)")
    assert options == ["sft", "dpo", "orpo", "simpo", "kto", "grpo"]
    page.select_option('select[name="train.objective"]', "grpo")
    page.fill('[name="train.rewards"]', '["exact_match"]')
    page.wait_for_function("document.querySelector('#preview-yaml').textContent.includes('objective: grpo')")
    assert "- exact_match" in page.text_content("#preview-yaml")

    # A dpo run's metrics.jsonl rows, as /api/train/status hands them over: loss, and beside it
    # the objective's chart with reward margin and accuracy (train lines, eval dots).
    rows = [
        {"step": s, "loss": 0.69 - 0.01 * s, "reward_margin": 0.02 * s, "reward_accuracy": 0.2 * s}
        for s in (1, 2, 3)
    ]
    rows.append({"step": 3, "eval_loss": 0.6, "eval_reward_margin": 0.05, "eval_reward_accuracy": 0.75})
    status = {"state": "finished", "name": "dpo", "step": 3, "total_steps": 3, "rows": rows}
    status.update(n_rows=len(rows), run_dir="runs/dpo", checkpoints=[])
    page.route("**/api/train/status*", lambda route: route.fulfill(json=status))
    assert page.is_hidden("#objective-chart")  # no run yet: sft's chart only
    open_view(page, "runs")
    open_view(page, "train")  # showing the view polls the status again
    page.wait_for_selector("#objective-chart:not([hidden])")
    legend = page.text_content("#objective-chart")
    assert "reward margin" in legend and "eval reward accuracy" in legend and "reward chosen" not in legend
    assert page.get_attribute("#objective-chart", "data-points") == "3"
    page.unroute("**/api/train/status*")


def test_two_starts_queue_and_the_runs_view_cancels_each(page):
    # One worker (the default): the first Start trains, the second waits in the queue.
    open_view(page, "train")
    fill_tiny_run(page, "queue-a", 3000)
    page.click("#start-btn")
    page.wait_for_selector("#train-state .badge-running", timeout=WAIT_MS)
    fill_tiny_run(page, "queue-b", 20)
    page.click("#start-btn")  # still enabled while a run trains: more queue behind it
    page.wait_for_selector("#train-state .badge-queued")
    assert "queued" in page.text_content("#progress-text")

    open_view(page, "runs")
    row = lambda name: page.locator("#queue-table tbody tr", has_text=name)  # noqa: E731
    row("queue-b").locator(".badge-queued").wait_for()
    row("queue-a").locator(".badge-running").wait_for()
    # the running job's step and loss, from its events (the list refreshes itself)
    row("queue-a").locator(".job-progress", has_text="loss").wait_for(timeout=WAIT_MS)
    assert "waiting: next" in row("queue-b").text_content()
    screenshot(page, "queue")

    row("queue-b").locator("button.cancel").click()
    row("queue-b").locator(".badge-stopped").wait_for()
    assert "cancelled queue-b" in page.text_content("#queue-notice")
    row("queue-a").locator("button.cancel").click()
    row("queue-a").locator(".badge-stopped").wait_for(timeout=WAIT_MS)
    row("queue-a").locator("button", has_text="watch").click()  # the Train view shows that job
    page.wait_for_selector("#view-train:not([hidden]) #train-state .badge-stopped")
    assert "queue-a" in page.text_content("#train-state")
