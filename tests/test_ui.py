"""The web UI's HTTP API on the tiny model: config preview, path safety, upload and inspect,
runs, chat streaming, model store, training subprocess failure, and the clean stop on SIGINT.

The browser scenarios (Playwright + Chromium) are in test_ui_browser.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from helpers import UI_BASE, UI_HEADERS, UI_TOKEN, train_run, workspace_overrides
from smolora.ui import create_app
from smolora.ui.jobs import error_line
from smolora.ui.workspace import OutsideWorkspace, safe_path

# --- the page, schema and config preview ------------------------------------------------


def test_page_and_static_files_are_served(ui_client):
    page = ui_client.get("/")
    assert page.status_code == 200 and "SmoLoRA" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text  # nothing from the network
    for name in ("main.js", "train.js", "chart.js", "style.css"):
        assert ui_client.get(f"/static/{name}").status_code == 200
    info = ui_client.get("/api/info").json()
    assert info["version"] and info["workspace"].endswith("ws")


def test_schema_has_every_section_with_defaults(ui_client):
    body = ui_client.get("/api/schema").json()
    assert list(body["schema"]["properties"]) == ["model", "data", "lora", "train", "eval", "output"]
    assert body["defaults"]["lora"]["r"] == 16 and body["defaults"]["model"]["name"] == "smollm2-135m"


def test_the_form_offers_the_objective_and_an_editable_rewards_list(ui_client):
    # The Train form is generated from this schema: an enum is a <select>, a list a JSON text field.
    train = ui_client.get("/api/schema").json()["schema"]["$defs"]["TrainSection"]["properties"]
    assert train["objective"]["enum"] == ["sft", "dpo", "orpo", "simpo", "kto", "grpo"]
    assert train["rewards"]["type"] == "array" and train["rewards"]["items"] == {"type": "string"}
    form = [*workspace_overrides("grpo"), "train.objective=grpo"]  # what the form sends
    view = ui_client.post("/api/config/preview", json={"overrides": form}).json()
    assert not view["ok"] and any("needs train.rewards" in p["message"] for p in view["problems"])
    rewards = 'train.rewards=["exact_match", "length:20"]'
    view = ui_client.post(
        "/api/config/preview", json={"overrides": [*form, rewards, "train.beta=0.2"]}
    ).json()
    assert view["ok"], view["problems"]
    assert "objective: grpo" in view["yaml"] and "- length:20" in view["yaml"] and "beta: 0.2" in view["yaml"]


def test_preview_reports_problems_per_field(ui_client):
    view = ui_client.post(
        "/api/config/preview", json={"overrides": ["data.max_length=2", "trian.lr=1", "data.path=qa.jsonl"]}
    ).json()
    assert not view["ok"]
    paths = {p["path"]: p["message"] for p in view["problems"]}
    assert "greater than or equal to 8" in paths["data.max_length"]
    assert "did you mean 'train'" in paths["trian"]


def test_preview_gives_yaml_and_the_same_cli_command(ui_client):
    view = ui_client.post("/api/config/preview", json={"overrides": workspace_overrides("demo")}).json()
    assert view["ok"], view["problems"]
    assert view["command"] == "smolora train configs/demo.yaml"
    assert "--set model.name=tiny-llama" in view["set_command"]
    assert "model:\n  name: tiny-llama" in view["yaml"] and view["run_dir"] == "runs/demo"


def test_preview_requires_data_and_paths_inside_the_workspace(ui_client):
    no_data = ui_client.post("/api/config/preview", json={"overrides": ["output.name=x"]}).json()
    assert [p["path"] for p in no_data["problems"]] == ["data.path"]
    outside = ui_client.post(
        "/api/config/preview", json={"overrides": ["data.path=../../etc/passwd", "output.dir=/tmp"]}
    ).json()
    assert {"data.path", "output.dir"} <= {p["path"] for p in outside["problems"]}
    refused = ui_client.post("/api/train/start", json={"overrides": ["data.path=/etc/hosts"]})
    assert refused.status_code == 400 and "outside the workspace" in refused.json()["error"]


# --- security: workspace paths, the write header, the host check --------------------------


def test_safe_path_refuses_everything_outside(ui_ws, tmp_path):
    assert safe_path(ui_ws, "qa.jsonl") == ui_ws / "qa.jsonl"
    assert safe_path(ui_ws, str(ui_ws / "qa.jsonl")) == ui_ws / "qa.jsonl"
    (ui_ws / "escape").symlink_to(tmp_path)
    for bad in ("../x", "/etc/passwd", "a/../../x", "~/x", "escape/x", "", "a\x00b"):
        with pytest.raises(OutsideWorkspace):
            safe_path(ui_ws, bad)


def test_uploads_land_in_the_workspace_only(ui_client, ui_ws):
    for bad in ("../evil.jsonl", "/tmp/evil.jsonl", "uploads/../../evil.jsonl"):
        r = ui_client.post(f"/api/upload?path={bad}", content=b'{"text": "x"}\n')
        assert r.status_code == 403, bad
        assert "outside the workspace" in r.json()["error"]
    assert not (ui_ws.parent / "evil.jsonl").exists()
    assert ui_client.post("/api/upload?path=run.sh", content=b"rm -rf /").status_code == 400
    ok = ui_client.post("/api/upload?path=uploads/qa.jsonl", content=(ui_ws / "qa.jsonl").read_bytes())
    assert ok.status_code == 200 and ok.json()["path"] == "uploads/qa.jsonl"
    assert (ui_ws / "uploads" / "qa.jsonl").read_bytes() == (ui_ws / "qa.jsonl").read_bytes()
    assert "uploads/qa.jsonl" in [f["path"] for f in ui_client.get("/api/files").json()["files"]]


def test_every_path_parameter_is_checked(ui_client):
    assert ui_client.post("/api/data/inspect", json={"path": "../../etc/passwd"}).status_code == 403
    assert ui_client.get("/api/runs/compare?a=../..&b=/").status_code == 403
    assert ui_client.get("/api/runs/file/../../etc/passwd").status_code in (403, 404)
    assert ui_client.get("/api/export/parity?run=/etc").status_code == 403
    chat = ui_client.post(
        "/api/chat", json={"model": "/etc", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert chat.status_code == 403
    assert ui_client.post("/api/models/remove", json={"name": "../.."}).status_code == 400


def test_writes_need_the_ui_header(ui_ws):
    auth = {"Authorization": f"Bearer {UI_TOKEN}"}  # no X-SmoLoRA header: what a cross-site form sends
    with TestClient(create_app(ui_ws, token=UI_TOKEN), base_url=UI_BASE, headers=auth) as bare:
        assert bare.post("/api/upload?path=a.jsonl", content=b"{}").status_code == 403
        assert bare.post("/api/train/start", json={"overrides": []}).status_code == 403
        assert bare.get("/api/info").status_code == 200


def test_foreign_host_names_are_refused(ui_ws):
    app = create_app(ui_ws, token=UI_TOKEN, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://evil.example", headers=UI_HEADERS) as c:
        assert c.get("/api/info").status_code == 400


# --- data -----------------------------------------------------------------------------------


def test_inspect_shows_format_counts_histogram_and_examples(ui_client):
    r = ui_client.post(
        "/api/data/inspect",
        json={"path": "qa.jsonl", "overrides": ["model.name=tiny-llama", "data.max_length=16"]},
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["format"] == "qa" and report["mapping"]["prompt"] == "question"
    assert report["counts"]["input"] == 40 and report["max_length"] == 16
    hist = report["histogram"]
    assert sum(hist["counts"]) == 40 and hist["max_length"] == 16 and hist["over"] == report["truncated"] > 0
    assert any("data.max_length" in w for w in report["warnings"])
    roomy = ui_client.post(
        "/api/data/inspect", json={"path": "qa.jsonl", "overrides": ["model.name=tiny-llama"]}
    )
    segments = roomy.json()["examples"][0]  # the prompt is context, the answer is trained on
    assert any(trained for _, trained in segments) and any(not trained for _, trained in segments)
    assert "It is 1." in "".join(text for text, trained in segments if trained)
    assert ui_client.post("/api/data/inspect", json={"path": "missing.jsonl"}).status_code == 404


def test_inspect_a_bad_file_is_a_clear_400(ui_client, ui_ws):
    (ui_ws / "bad.jsonl").write_text('{"question": "a"\n')
    r = ui_client.post(
        "/api/data/inspect", json={"path": "bad.jsonl", "overrides": ["model.name=tiny-llama"]}
    )
    assert r.status_code == 400 and "bad.jsonl" in r.json()["error"]


# --- runs, chat, models, export ------------------------------------------------------------


def test_runs_list_compare_and_chat_stream(ui_client, ui_ws):
    train_run(ui_ws, "a")
    train_run(ui_ws, "b", "lora.r=4")
    runs = {r["name"]: r for r in ui_client.get("/api/runs").json()["runs"]}
    assert set(runs) == {"a", "b"}
    assert runs["a"]["status"] == "done" and runs["a"]["has_adapter"] and runs["a"]["steps"] == 6
    assert runs["a"]["path"] == "runs/a" and runs["a"]["final_loss"] > 0

    cmp = ui_client.get("/api/runs/compare?a=runs/a&b=runs/b").json()
    assert {"key": "lora.r", "a": 16, "b": 4} in cmp["config"]
    assert len([r for r in cmp["curves"]["a"] if "loss" in r]) == 6

    models = ui_client.get("/api/chat/models").json()
    assert {"value": "runs/a", "base": str(ui_ws / "tiny-llama")} in models["runs"]

    with ui_client.stream(
        "POST",
        "/api/chat",
        json={
            "model": "runs/a",
            "messages": [{"role": "user", "content": "What is 3 plus one?"}],
            "max_new_tokens": 8,
        },
    ) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[0]["status"] == "loading" and events[-1] == {"done": True}
    assert "".join(e.get("text", "") for e in events)  # streamed pieces make an answer


def test_chat_with_an_unknown_model_streams_the_error(ui_client):
    with ui_client.stream(
        "POST", "/api/chat", json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    ) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert "unknown model" in events[-1]["error"]


def test_model_store_list_verify_remove(ui_client, ui_ws):
    from smolora.model.pull import pull_model
    from smolora.model.store import models_dir

    pull_model(str(ui_ws / "tiny-llama"))
    listed = {m["name"]: m for m in ui_client.get("/api/models").json()["models"]}
    assert listed["tiny-llama"]["status"] == "ok" and listed["smollm2-135m"]["status"] == "not pulled yet"
    verified = ui_client.post("/api/models/verify", json={"name": "tiny-llama"}).json()
    assert verified["ok"] and verified["checked"] > 0
    (models_dir() / "tiny-llama" / "planted.bin").write_bytes(b"x")  # a file the manifest does not list
    planted = ui_client.post("/api/models/verify", json={"name": "tiny-llama"}).json()
    assert not planted["ok"] and planted["extra_files"] == ["planted.bin"]
    assert ui_client.post("/api/models/remove", json={"name": "tiny-llama"}).json()["removed"] == "tiny-llama"
    assert "tiny-llama" not in {m["name"] for m in ui_client.get("/api/models").json()["models"]}


def test_export_runs_the_cli():
    from smolora.ui.export import export_argv

    cli = export_argv("gguf", "runs/a", "q8_0", None)
    assert cli[1:] == ["-m", "smolora.cli.main", "export", "runs/a", "--format", "gguf", "--quant", "q8_0"]
    merge = export_argv("merge", "runs/a", "f16", "out")
    assert merge[1:] == ["-m", "smolora.cli.main", "merge", "runs/a", "--out", "out"]


# --- the training subprocess ----------------------------------------------------------------


def test_a_dying_training_process_shows_its_error_and_log(ui_client, ui_ws):
    (ui_ws / "empty.jsonl").write_text("\n")
    r = ui_client.post(
        "/api/train/start", json={"overrides": workspace_overrides("dies", "data.path=empty.jsonl")}
    )
    assert r.status_code == 200, r.text
    deadline = time.time() + 300
    status = ui_client.get("/api/train/status").json()
    while status["state"] in ("queued", "running") and time.time() < deadline:
        time.sleep(0.5)
        status = ui_client.get("/api/train/status").json()
    assert status["state"] == "failed" and status["status"] == "failed"  # the queue's word beside the UI's
    assert "empty.jsonl" in status["error"] and "Training failed" in status["events"][0]["message"]
    assert "empty.jsonl" in status["log_tail"]
    assert (ui_ws / "configs" / "dies.yaml").exists()  # the file the command ran on stays, for the CLI
    assert ui_client.get("/api/info").status_code == 200  # the UI itself carries on


def test_error_line_prefers_the_cli_error():
    assert error_line("INFO x\nerror: no data\n") == "error: no data"
    assert error_line("Traceback\n  File x\nValueError: bad\n") == "ValueError: bad"
    assert error_line("") is None


def test_sigint_saves_a_checkpoint_and_stops(tiny_model_dir, qa_file, tmp_path):
    """What the UI's Stop button relies on: SIGINT -> checkpoint at the step's end -> KeyboardInterrupt."""
    from transformers import TrainerCallback

    import smolora.train.recipe as train_module
    from helpers import tiny_config

    class SignalAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                signal.raise_signal(signal.SIGINT)

    extra = ("train.max_steps=50", "train.save_every=100", "output.name=stopped")
    cfg = tiny_config(tiny_model_dir, qa_file, tmp_path, *extra)
    original = train_module.SmoLoRATrainer.__init__

    def with_signal(self, *a, **kw):
        original(self, *a, **kw)
        self.add_callback(SignalAtStep3())

    train_module.SmoLoRATrainer.__init__ = with_signal
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in the background (nohup, &)
    try:
        with pytest.raises(KeyboardInterrupt):
            train_module.train(cfg, show_progress=False)
    finally:
        train_module.SmoLoRATrainer.__init__ = original
    run = tmp_path / "runs" / "stopped"
    # save_every=100, so the one checkpoint is the stop's own, at the end of the signalled step
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["checkpoint-3"]
    assert not (run / "adapter").exists()  # not a finished run: `--resume` continues it
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_cli_ui_help_has_an_example():
    r = subprocess.run(
        [sys.executable, "-m", "smolora.cli.main", "ui", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "Example: smolora ui" in r.stdout and "127.0.0.1" in r.stdout
