"""A token pasted into the config never reaches a file: train, push to the local hub, grep everything.

The system prompt carries a token-shaped string (`hf_` + 34 letters and digits); config.yaml
masks it, and so must smolora.json, the model card, the pushed config and every other file the
run directory or the upload holds.
"""

from __future__ import annotations

import json

import torch

from helpers import last_commit, push_cli, tiny_config
from smolora.export.push import model_card
from smolora.runs import AdapterMeta
from smolora.train.recipe import train

TOKEN = "hf_" + "Q7wErTy9UiOp3AsDfGh5JkLzXc1VbNm2Pq"  # 34 letters and digits, like a real one


def files_holding(root, needle: bytes) -> list[str]:
    return [
        str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()
    ]


def test_a_token_in_the_system_prompt_is_in_no_file_and_no_upload(fake_hub, tiny_model_dir, tmp_path):
    assert len(TOKEN) == 37
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"A{i}."}) + "\n" for i in range(24)))
    torch.set_num_threads(1)
    prompt = f"data.system_prompt=You answer briefly. Deploy with {TOKEN} only."
    limits = ("data.max_length=256", "train.max_steps=2", "train.save_every=1", "train.threads=1")
    cfg = tiny_config(tiny_model_dir, data, tmp_path, prompt, *limits, "output.name=secret")
    run = train(cfg, show_progress=False)
    meta = json.loads((run / "adapter" / "smolora.json").read_text())
    assert meta["system_prompt"] == "You answer briefly. Deploy with hf_*** only."  # masked, rest kept
    assert files_holding(run, TOKEN.encode()) == []  # config, smolora.json, checkpoints, logs

    # A run saved before smolora.json was masked: what push uploads is masked all the same.
    meta["system_prompt"] = f"You answer briefly. Deploy with {TOKEN} only."
    (run / "adapter" / "smolora.json").write_text(json.dumps(meta))
    for args in ([], ["--merged"]):
        r = push_cli(fake_hub, str(run), "--repo", "me/secret", *args)
        assert r.returncode == 0, r.stderr[-2000:]
        uploaded = last_commit(fake_hub)["files"]
        assert "README.md" in uploaded and "smolora_config.yaml" in uploaded
        leaked = [name for name, content in uploaded.items() if TOKEN.encode() in content]
        assert leaked == [], leaked
        assert TOKEN not in r.stdout + r.stderr
    assert files_holding(run, TOKEN.encode()) == ["adapter/smolora.json"]  # only the one planted


def test_the_card_masks_an_unmasked_prompt(tmp_path):
    """An older run's smolora.json holds the prompt in clear: the card masks it."""
    (tmp_path / "config.yaml").write_text(f"data:\n  system_prompt: use {TOKEN}\n")
    meta = {"base_model": "tiny", "method": "lora", "system_prompt": f"use {TOKEN}"}
    card = model_card(tmp_path, AdapterMeta.from_dict(meta), "me/x", merged=False)
    assert TOKEN not in card and "hf_***" in card
