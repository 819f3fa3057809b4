"""Every fine-tuning method combines with every objective: a short run of each pairing on the tiny model.

The reference of DPO and KTO is the policy training starts from, so at the first step (logged
before any update) the policy's log-ratio to it is exactly zero, whatever the method: PiSSA and
OLoRA rewrite the base weights at init, full fine-tuning has no adapter to switch off, and the
reference is still right.

Run as:
    pytest -q tests/test_objective_methods.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import tiny_config
from smolora.train.recipe import train


def write_data(root: Path) -> dict[str, Path]:
    pairs = [
        {"prompt": f"What is {i} plus one?", "chosen": f"It is {i + 1}.", "rejected": f"No, {i}."}
        for i in range(16)
    ]
    prompts = [{"prompt": p["prompt"], "answer": p["chosen"]} for p in pairs]
    out = {}
    for name, rows in {"pairs": pairs, "prompts": prompts}.items():
        out[name] = root / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "r.py").write_text(
        "def letters(prompts, completions, **columns):\n    return [float(len(set(c))) for c in completions]\n"
    )
    return out


PAIRINGS = [
    ("dpo", "lora"),
    ("dpo", "pissa"),
    ("dpo", "full"),
    ("kto", "olora"),
    ("kto", "freeze"),
    ("orpo", "dora"),
    ("simpo", "rslora"),
    ("grpo", "lora"),
    ("grpo", "full"),
]


@pytest.mark.parametrize("objective, method", PAIRINGS)
def test_objective_with_method(tmp_path, tiny_model_dir, objective, method):
    data = write_data(tmp_path)
    extra = [
        f"train.objective={objective}",
        f"lora.method={method}",
        "lora.freeze_last_n=1",
        "train.max_steps=2",
        "train.lr=1e-3",
        "train.threads=1",
    ]
    if objective == "grpo":
        extra += [
            f"train.rewards=[{tmp_path}/r.py:letters]",
            "train.max_completion_length=6",
            "train.num_generations=2",
        ]
    source = data["prompts" if objective == "grpo" else "pairs"]
    run = train(tiny_config(tiny_model_dir, source, tmp_path, *extra), show_progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if "loss" in r)
    assert (run / "adapter" / "smolora.json").exists()
    if objective == "dpo":
        assert first["reward_margin"] == pytest.approx(0.0, abs=1e-4)
        assert first["loss"] == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0)
    elif objective == "kto":
        assert first["reward_chosen"] == pytest.approx(0.0, abs=1e-4)
    elif objective == "grpo":
        assert first["reward"] > 0 and "reward_letters" in first
    else:
        assert "reward_accuracy" in first
