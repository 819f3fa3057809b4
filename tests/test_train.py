"""The training recipe end to end on a tiny random Llama: run directory, resume, adapter, API."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_config
from smolora.errors import TrainingError
from smolora.train.recipe import last_checkpoint, train


def test_run_directory_and_lora_moves_only_adapters(tiny_model_dir, qa_file, tmp_path):
    run = train(
        tiny_config(tiny_model_dir, qa_file, tmp_path, "train.max_steps=8", "train.eval_every=4"),
        show_progress=False,
    )
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "train.log",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "adapter/smolora.json",
    ):
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 8 and all(r["tokens_per_s"] > 0 for r in rows if "loss" in r)
    assert [r["step"] for r in rows if "eval_loss" in r] == [4, 8]  # no second eval row at the last step
    assert losses[-1] < losses[0]
    meta = json.loads((run / "adapter" / "smolora.json").read_text())
    assert meta["base_model"] == str(tiny_model_dir) and meta["data_fingerprint"]
    assert "im_start" in meta["chat_template"]

    # Plain PEFT loads the adapter; LoRA B matrices moved, base weights did not.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base, run / "adapter")
    lora = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in lora.items())
    merged = peft_model.merge_and_unload()
    after = merged.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("proj" in k for k in changed)  # only LoRA targets differ after merging
    assert not any("embed" in k or "norm" in k for k in changed)


def test_resume_continues_from_last_checkpoint(tiny_model_dir, qa_file, tmp_path):
    cfg = tiny_config(tiny_model_dir, qa_file, tmp_path, "train.max_steps=12")
    full = train(cfg, show_progress=False)
    full_losses = [
        json.loads(x)["loss"] for x in (full / "metrics.jsonl").read_text().splitlines() if '"loss"' in x
    ]

    # Simulate a crash after step 8: keep checkpoints up to 8, drop the adapter and later ones.
    import shutil

    cfg2 = tiny_config(tiny_model_dir, qa_file, tmp_path, "train.max_steps=12", "output.name=crashed")
    shutil.copytree(full, cfg2.run_dir)
    shutil.rmtree(cfg2.run_dir / "adapter")
    shutil.rmtree(cfg2.run_dir / "checkpoints" / "checkpoint-12")
    assert last_checkpoint(cfg2.run_dir).name == "checkpoint-8"
    with pytest.raises(TrainingError, match="--resume"):
        train(cfg2, show_progress=False)
    (cfg2.run_dir / "metrics.jsonl").write_text("")
    resumed = train(cfg2, resume=True, show_progress=False)
    resumed_losses = [
        json.loads(x)["loss"] for x in (resumed / "metrics.jsonl").read_text().splitlines() if '"loss"' in x
    ]
    assert len(resumed_losses) == 4  # steps 9..12 only
    assert resumed_losses == pytest.approx(full_losses[8:], abs=1e-4)


def test_resume_without_checkpoint_is_a_clear_error(tiny_model_dir, qa_file, tmp_path):
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        train(tiny_config(tiny_model_dir, qa_file, tmp_path), resume=True)


def test_python_api(tiny_model_dir, qa_file, tmp_path):
    from smolora import SmoLoRA

    tuner = SmoLoRA(
        str(tiny_model_dir),
        dataset=str(qa_file),
        output_dir=str(tmp_path / "runs" / "api"),
        **{"train.max_steps": 3, "data.max_length": 64},
        train={"batch_size": 4},
    )
    assert tuner.config.train.max_steps == 3 and tuner.config.train.batch_size == 4
    before = tuner.generate("What is 3 plus one?", max_new_tokens=4)
    assert isinstance(before, str)
    run = tuner.train()
    assert (run / "adapter" / "smolora.json").exists()
    outs = tuner.generate(["What is 1 plus one?", "What is 2 plus one?"], max_new_tokens=4)
    assert isinstance(outs, list) and len(outs) == 2
    saved = tuner.save(tmp_path / "saved")
    assert (saved / "adapter_model.safetensors").exists()


def test_cli_train_and_generate(tiny_model_dir, qa_file, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {{name: {tiny_model_dir}}}\ndata: {{path: {qa_file}, max_length: 64}}\n"
        f"train: {{max_steps: 2, batch_size: 4}}\noutput: {{dir: {tmp_path / 'runs'}}}\n"
    )
    smolora = [sys.executable, "-m", "smolora.cli.main"]
    r = subprocess.run([*smolora, "-q", "train", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [
            *smolora,
            "generate",
            str(tmp_path / "runs" / "c"),
            "What is 1 plus one?",
            "--json",
            "--max-new-tokens",
            "3",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert '"prompt"' in r.stdout


def test_cli_errors_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: -1\n")
    r = subprocess.run(
        [sys.executable, "-m", "smolora.cli.main", "train", str(bad)], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "train.lr" in r.stderr
