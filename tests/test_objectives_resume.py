"""A DPO run and a GRPO run interrupted after a checkpoint and resumed end where the uninterrupted run ends.

The interruption is simulated as in test_train.py: the finished run is copied, its adapter and
the checkpoints after step 4 are deleted, and `train(cfg, resume=True)` continues from
checkpoint-4 under the same config (same schedule). DPO's reference log-probabilities are
computed again from the starting policy before the checkpoint is loaded, so they must be the
same; GRPO's answers are sampled, so the resumed run must restore the RNG state to draw the same
ones. The final adapters are allclose and the metrics rows after step 4 are equal (time and
throughput columns aside).

Run as:
    pytest -q tests/test_objectives_resume.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import tiny_config
from smolora.train.recipe import train

KEPT = 4  # the checkpoint the "crashed" run still has; save_every=4, max_steps=8
TIMING = ("time", "second", "elapsed", "per_s", "tokens", "eta", "wall")  # differ from run to run


def write_pairs(root: Path) -> Path:
    rows = [
        {"prompt": f"What is {i} plus one?", "chosen": f"It is {i + 1}.", "rejected": f"Maybe {i * 7 % 10}."}
        for i in range(16)
    ]
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_prompts(root: Path) -> tuple[Path, Path]:
    rows = [{"prompt": f"What is {i} plus one?", "answer": f"It is {i + 1}."} for i in range(16)]
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward = root / "reward.py"  # varies with each sampled answer: the group has a spread to learn from
    reward.write_text(
        "def digits(prompts, completions, **columns):\n"
        "    return [float(sum(ch.isdigit() for ch in c)) + 0.1 * len(c) for c in completions]\n"
    )
    return path, reward


def rows_of(run: Path) -> dict[int, dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return {r["step"]: r for r in rows if "loss" in r}


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not any(t in k for t in TIMING)}


def interrupt_and_resume(cfg_of, full: Path) -> Path:
    crashed = cfg_of("output.name=crashed")
    shutil.copytree(full, crashed.run_dir)
    shutil.rmtree(crashed.run_dir / "adapter")
    for checkpoint in (crashed.run_dir / "checkpoints").glob("checkpoint-*"):
        if int(checkpoint.name.split("-")[-1]) > KEPT:
            shutil.rmtree(checkpoint)
    return train(crashed, resume=True, show_progress=False)


def assert_resumed_like_full(full: Path, resumed: Path):
    want, got = rows_of(full), rows_of(resumed)
    assert sorted(want) == sorted(got) == list(range(1, 9))  # the crashed run's later rows were trimmed
    for step in range(KEPT + 1, 9):
        a, b = comparable(want[step]), comparable(got[step])
        assert a.keys() == b.keys() and "loss" in a
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5), f"step {step}"
    a = load_file(full / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("lora_B" in k and v.abs().sum() > 0 for k, v in a.items())
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-5 + 1e-4 * a[key].abs().max(), key


def test_dpo_resumed_matches_uninterrupted(tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path)

    def cfg_of(*extra):
        every = ("train.objective=dpo", "train.max_steps=8", "train.threads=1", "train.lr=5e-3")
        return tiny_config(tiny_model_dir, data, tmp_path, *every, *extra)

    full = train(cfg_of(), show_progress=False)
    first = rows_of(full)[1]
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)  # the reference is the starting policy
    assert rows_of(full)[8]["loss"] < first["loss"]  # and it learned something to resume into
    assert_resumed_like_full(full, interrupt_and_resume(cfg_of, full))


def test_grpo_resumed_matches_uninterrupted(tiny_model_dir, tmp_path):
    data, reward = write_prompts(tmp_path)

    def cfg_of(*extra):
        every = (
            "train.objective=grpo",
            f"train.rewards=[{reward}:digits,length:4]",
            "train.num_generations=2",
            "train.max_completion_length=6",
            "train.batch_size=2",
            "train.max_steps=8",
            "train.threads=1",
            "train.beta=0.05",
        )
        return tiny_config(tiny_model_dir, data, tmp_path, *every, *extra)

    full = train(cfg_of(), show_progress=False)
    assert any(r["reward_std"] > 0 for r in rows_of(full).values())  # something to learn from
    assert_resumed_like_full(full, interrupt_and_resume(cfg_of, full))
