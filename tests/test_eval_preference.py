"""`smolora eval` on preference and reward runs: preference accuracy, margins and rewards, base vs tuned.

A tiny dpo run is evaluated on its held-out pairs (the seeded split training used); a dpo run
that continued a tiny SFT run is compared with that SFT run, not the raw base; a grpo run
reports the reward of greedy answers, through the CLI as a user runs it. The report plots the
objective's curves.

Run as:
    pytest -q tests/test_eval_preference.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from helpers import tiny_config
from smolora.errors import ConfigError
from smolora.eval.evaluate import evaluate_run, held_out_examples, run_config
from smolora.eval.preference import answer_logps, pair_scores
from smolora.train.recipe import train

FAST = ["train.max_steps=3", "train.threads=1", "data.val_ratio=0.25", "eval.max_new_tokens=6"]


def write_pairs(path: Path, n: int = 16) -> Path:
    rows = [
        {"prompt": f"What is {i} plus one?", "chosen": f"It is {i + 1}.", "rejected": f"No, {i}."}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("dpo")
    cfg = tiny_config(tiny_model_dir, write_pairs(root / "pairs.jsonl"), root, "train.objective=dpo", *FAST)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMOLORA_HOME", str(root / "home"))
        return train(cfg, show_progress=False)


def test_pair_scores_reward_margin_is_relative_to_the_base():
    examples = [{"preference": {"shape": "pairs"}}] * 2
    base, tuned = pair_scores([-5.0, -4.0, -3.0, -6.0], [-4.0, -6.0, -3.0, -7.0], examples, beta=0.5)
    assert base == {"preference_accuracy": 50.0, "preference_margin": 1.0, "reward_margin": 0.0}
    # pair 1: (-4 - -5) - (-6 - -4) = 3; pair 2: 0 - (-1) = 1; beta x mean = 0.5 x 2
    assert tuned == {"preference_accuracy": 100.0, "preference_margin": 3.0, "reward_margin": 1.0}


def test_dpo_eval_reports_preference_accuracy_and_margins(dpo_run):
    cfg = run_config(dpo_run)
    examples = held_out_examples(cfg)
    # the held-out pairs are training's val split (4 of 16), read as prompt + chosen answer
    assert len(examples) == 4 and examples[0]["messages"][-1]["content"].startswith("It is")
    m = evaluate_run(dpo_run)["metrics"]
    assert m["objective"] == "dpo" and m["n"] == 4
    for which in ("base", "fine_tuned"):
        assert {
            "exact_match",
            "eval_loss",
            "preference_accuracy",
            "preference_margin",
            "reward_margin",
        } <= set(m[which])
    assert m["base"]["reward_margin"] == 0.0
    moved = m["fine_tuned"]["preference_margin"] - m["base"]["preference_margin"]
    assert m["fine_tuned"]["reward_margin"] == pytest.approx(cfg.train.strength * moved, abs=1e-4)
    assert m["fine_tuned"]["preference_margin"] > m["base"]["preference_margin"]  # DPO pushed the pairs apart
    md = (dpo_run / "eval" / "report.md").read_text()
    assert "preference_accuracy" in md and "objective.png" in md and "dpo, beta 0.1" in md
    assert (dpo_run / "plots" / "objective.png").stat().st_size > 0
    assert "reward_margin" in (dpo_run / "eval" / "report.html").read_text()


def test_a_continued_run_is_compared_with_the_sft_run_it_started_from(tmp_path, tiny_model_dir, tiny_run):
    from smolora.model.load import load_for_inference

    sft = shutil.copytree(tiny_run, tmp_path / "sft")
    extra = ["train.objective=dpo", f"model.adapter={sft}", "output.name=dpo-from-sft", *FAST]
    run = train(
        tiny_config(tiny_model_dir, write_pairs(tmp_path / "pairs.jsonl"), tmp_path, *extra),
        show_progress=False,
    )
    m = evaluate_run(run, report=False)["metrics"]
    assert m["base_model"] == str(sft)

    cfg = run_config(run)
    examples = held_out_examples(cfg)
    model, tokenizer, _ = load_for_inference(sft)
    from_sft = answer_logps(model, tokenizer, examples, cfg)
    with model.disable_adapter():
        from_base = answer_logps(model, tokenizer, examples, cfg)
    margin = pair_scores(from_sft, from_sft, examples, 0.1)[0]["preference_margin"]
    raw = pair_scores(from_base, from_base, examples, 0.1)[0]["preference_margin"]
    assert m["base"]["preference_margin"] == pytest.approx(margin, abs=1e-3)
    assert abs(margin - raw) > 1e-3  # so the check above tells the SFT run from the raw base

    shutil.rmtree(sft)  # the starting point is gone: a one-line error before any model loads
    with pytest.raises(ConfigError, match="model.adapter"):
        evaluate_run(run, report=False)


def test_grpo_eval_reports_the_reward_of_greedy_answers(tmp_path, tiny_model_dir, monkeypatch, capsys):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"What is {i} plus one?", "answer": f"It is {i + 1}."} for i in range(12)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = [
        "train.objective=grpo",
        "train.rewards=[exact_match,length:3]",
        "train.max_completion_length=6",
        "train.num_generations=2",
        *FAST,
    ]
    run = train(tiny_config(tiny_model_dir, prompts, tmp_path, *extra), show_progress=False)

    from smolora.cli.main import main

    monkeypatch.setattr(sys, "argv", ["smolora", "eval", str(run), "--samples", "1"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0, capsys.readouterr().err
    m = json.loads((run / "eval" / "metrics.json").read_text())
    for which in ("base", "fine_tuned"):
        assert {"reward", "reward_exact_match", "reward_length:3", "exact_match"} <= set(m[which])
        assert m[which]["reward"] == pytest.approx(
            m[which]["reward_exact_match"] + m[which]["reward_length:3"], abs=1e-6
        )
    assert (run / "plots" / "objective.png").stat().st_size > 0
    # the Python API scores a grpo run with its own rewards too
    assert "reward" in evaluate_run(run, report=False)["metrics"]["fine_tuned"]


def test_kto_eval_scores_good_and_bad_rows_and_takes_data(tmp_path, tiny_model_dir):
    extra = ["train.objective=kto", "train.beta=0.5", *FAST]
    run = train(
        tiny_config(tiny_model_dir, write_pairs(tmp_path / "pairs.jsonl"), tmp_path, *extra),
        show_progress=False,
    )
    m = evaluate_run(run, report=False)["metrics"]
    assert m["base"]["reward_margin"] == 0.0
    tuned = m["fine_tuned"]
    assert tuned["reward_margin"] == pytest.approx(tuned["reward_chosen"] - tuned["reward_rejected"])
    # --data: labelled rows of another file; the good ones are the answer metrics' references
    rows = [
        {"prompt": "What is 40 plus one?", "completion": "It is 41.", "label": True},
        {"prompt": "What is 50 plus one?", "completion": "No, 50.", "label": False},
        {"prompt": "What is 60 plus one?", "completion": "It is 61.", "label": True},
    ]
    other = tmp_path / "kto.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate_run(run, data_path=str(other), report=False)
    assert result["metrics"]["n"] == 2 and result["samples"][0]["reference"] == "It is 41."
    assert "preference_margin" in result["metrics"]["fine_tuned"]
