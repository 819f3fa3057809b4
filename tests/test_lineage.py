"""The lineage guard (model/lineage.py): an adapter loaded onto a base whose sha256 differs from the one
in smolora.json warns (one line, both hashes and the base path), and --strict refuses with exit 2, in
generate, chat, eval, serve and the UI's chat."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import smolora_main
from smolora.model.lineage import STRICT_ENV

WRONG = "0" * 64


@pytest.fixture
def moved_run(tiny_run, tmp_path, monkeypatch):
    """The tiny run, its smolora.json claiming a base with another sha256 than the one on disk."""
    monkeypatch.setenv(STRICT_ENV, "0")  # eval/serve --strict set it for the process: undone after the test
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    meta = run / "adapter" / "smolora.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "base_sha256": WRONG}))
    return run


def test_load_warns_once_with_both_hashes_and_refuses_under_strict(moved_run, caplog):
    from smolora.durable import sha256_file
    from smolora.errors import ModelError
    from smolora.model.load import load_for_inference
    from smolora.runs import read_meta

    base = read_meta(moved_run / "adapter").base_model
    _, _, meta = load_for_inference(moved_run)
    actual = sha256_file(__import__("pathlib").Path(base) / "model.safetensors")
    warning = meta["lineage_warning"]
    assert WRONG in warning and actual in warning and base in warning and "\n" not in warning
    assert any(WRONG in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    with pytest.raises(ModelError, match="refused under --strict"):
        load_for_inference(moved_run, strict=True)


def test_same_base_or_unrecorded_hash_is_silent(tiny_run):
    from smolora.model.load import load_for_inference

    _, _, meta = load_for_inference(tiny_run)  # trained on a manifest-less directory: nothing recorded
    assert "lineage_warning" not in meta


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "{run}", "hi", "--max-new-tokens", "2"],
        ["chat", "{run}"],
        ["eval", "{run}", "--set", "eval.max_new_tokens=2", "--set", "eval.max_examples=2"],
        ["serve", "{run}", "--port", "1"],
    ],
)
def test_cli_strict_refuses_with_exit_2(moved_run, command):
    code, output = smolora_main(*[c.format(run=moved_run) for c in command], "--strict")
    assert code == 2, output
    assert "refused under --strict" in output and WRONG in output


@pytest.mark.parametrize("command", [["generate", "{run}", "hi", "--max-new-tokens", "2"], ["chat", "{run}"]])
def test_cli_warns_without_strict(moved_run, command, caplog):
    code, output = smolora_main(*[c.format(run=moved_run) for c in command])
    assert code == 0, output
    assert any(WRONG in r.getMessage() for r in caplog.records)


def test_ui_chat_shows_the_warning(ui_client, moved_run, ui_ws, monkeypatch):
    from smolora.ui import chat

    run = ui_ws / "runs" / "moved"
    shutil.copytree(moved_run, run)
    monkeypatch.setattr(chat, "_models", type(chat._models)())
    r = ui_client.post(
        "/api/chat",
        json={"model": "runs/moved", "messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 2},
    )
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert any(WRONG in e.get("warning", "") for e in events), events


def test_ui_strict_refuses_the_chat(ui_client, moved_run, ui_ws, monkeypatch):
    """`smolora ui --strict` makes the Chat view refuse a run whose base is not its own."""
    import os

    import uvicorn
    from typer.testing import CliRunner

    from smolora.cli.main import app
    from smolora.ui import chat

    monkeypatch.setattr(uvicorn, "run", lambda served, **kw: None)
    monkeypatch.chdir(ui_ws)  # `smolora ui` changes into the workspace; put the test back after
    r = CliRunner().invoke(app, ["ui", "--workspace", str(ui_ws), "--strict"])
    assert r.exit_code == 0, r.output
    assert os.environ[STRICT_ENV] == "1"
    shutil.copytree(moved_run, ui_ws / "runs" / "moved-strict")
    monkeypatch.setattr(chat, "_models", type(chat._models)())
    r = ui_client.post(
        "/api/chat",
        json={
            "model": "runs/moved-strict",
            "messages": [{"role": "user", "content": "hi"}],
            "max_new_tokens": 2,
        },
    )
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert any("refused under --strict" in str(e.get("error", "")) for e in events), events
