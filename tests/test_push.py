"""`smolora push` against a local fake of the hub's HTTP API that records what was uploaded.

The fake (the `fake_hub` fixture in conftest.py) implements only what `huggingface_hub` calls
for create_repo + create_commit (repos/create, validate-yaml, preupload, commit). It answers
every file as a "regular" upload, so the content arrives inline in the commit; the hub's
LFS/Xet transfer for large files is not exercised here.
"""

from __future__ import annotations

import json

import pytest

from helpers import last_commit, push_cli
from smolora.errors import ExportError
from smolora.export.push import model_card, push_run


def test_push_adapter_uploads_files_and_card(fake_hub, push_run_dir):
    r = push_cli(fake_hub, str(push_run_dir), "--repo", "me/tiny-lora")
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
        == (push_run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    )
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: peft\n") and "AutoPeftModelForCausalLM" in card
    assert "## Training config" in card and "max_steps: 2" in card


def test_push_merged_model(fake_hub, push_run_dir):
    r = push_cli(fake_hub, str(push_run_dir), "--repo", "me/tiny-merged", "--merged")
    assert r.returncode == 0, r.stderr[-2000:]
    files = last_commit(fake_hub)["files"]
    assert {"model.safetensors", "config.json", "generation_config.json", "parity.json", "README.md"} <= set(
        files
    )
    card = files["README.md"].decode()
    assert "library_name: transformers" in card and "## Parity" in card and "AutoModelForCausalLM" in card


def test_card_carries_eval_metrics(push_run_dir):
    from smolora.runs import read_meta

    (push_run_dir / "eval").mkdir(exist_ok=True)
    metrics = {"base": {"exact_match": 0.1}, "fine_tuned": {"exact_match": 0.75}, "n": 12}
    (push_run_dir / "eval" / "metrics.json").write_text(json.dumps(metrics))
    card = model_card(push_run_dir, read_meta(push_run_dir / "adapter"), "me/x", merged=False)
    assert "| exact_match | 0.100 | 0.750 |" in card and "On 12 held-out examples" in card


def test_push_errors_are_actionable(push_run_dir, monkeypatch):
    with pytest.raises(ExportError, match="USER/NAME"):
        push_run(push_run_dir, "no-slash")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="HF_HUB_OFFLINE"):
        push_run(push_run_dir, "me/x")
