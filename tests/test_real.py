"""The real bundled SmolLM2-135M through the CLI, for a few steps (marked `slow`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_real_model_cli_run(use_real_home, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "smolora.cli.main",
        "-q",
        "train",
        str(REPO / "examples" / "quickstart.yaml"),
        "--set",
        "train.max_steps=3",
        "--set",
        "train.batch_size=2",
        "--set",
        "data.max_examples=24",
        "--set",
        "train.eval_every=null",
        "--set",
        f"output.dir={tmp_path}",
        "--set",
        "output.name=real",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=os.environ.copy())
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "real"
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "train.log",
        "adapter/adapter_model.safetensors",
        "adapter/smolora.json",
    ):
        assert (run / name).exists(), name
    meta = json.loads((run / "adapter" / "smolora.json").read_text())
    assert meta["base_model"] == "smollm2-135m" and len(meta["base_sha256"]) == 64

    # The adapter loads in plain PEFT on the cached base; LoRA moved, the base did not.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = use_real_home / "models" / "smollm2-135m"
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, run / "adapter")
    lora = load_file(run / "adapter" / "adapter_model.safetensors")
    assert sum(1 for k, v in lora.items() if "lora_B" in k and v.abs().max() > 0) > 0
    checked = 0
    for name, param in model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, reference[name.replace(".base_layer", "")]), name
            checked += 1
    assert checked >= 30 * 9  # every layer's weights were compared
    tok = AutoTokenizer.from_pretrained(run / "adapter")
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
