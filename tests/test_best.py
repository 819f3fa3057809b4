"""The evaluation picks the result: best checkpoint, early stopping (also across a resume), memorize.

A validation set that contradicts the training answers ("Nope, 7 cats" where training says
"It is 2.") makes the tiny model over-fit for real: its validation loss falls while it learns
the answer's shape, then rises as it learns the training answers.
"""

from __future__ import annotations

import json
import os
import signal
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from helpers import tiny_config, write_qa
from smolora.runs import run_summary
from smolora.train.best import BestCheckpoint
from smolora.train.recipe import train

CONFLICT = [
    "train.lr=3e-2",
    "train.epochs=8",
    "train.eval_every=6",
    "train.patience=2",
    "train.keep_checkpoints=1",
]


def contradicting_val(path, n=8):
    rows = [{"question": f"What is {i} plus one?", "answer": f"Nope, {i * 7} cats"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def overfit_config(tiny_model_dir, tmp_path, *extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    qa = write_qa(tmp_path / "qa.jsonl", n=24)
    val = contradicting_val(tmp_path / "val.jsonl")
    return tiny_config(tiny_model_dir, qa, tmp_path, f"data.val_path={val}", *CONFLICT, *extra)


def meta_of(run):
    return json.loads((run / "adapter" / "smolora.json").read_text())


def test_over_fitting_stops_early_and_keeps_the_best_checkpoint(tiny_model_dir, tmp_path):
    run = train(overfit_config(tiny_model_dir, tmp_path), show_progress=False)
    best = meta_of(run)["best"]
    evals = dict(best["evaluations"])
    assert best["metric"] == "eval_loss" and best["stopped_early"]
    assert best["step"] < best["last_step"] < best["max_steps"] == 48
    assert best["value"] == min(evals.values())
    # stopped after exactly `patience` evaluations without a better one
    assert sorted(s for s in evals if s > best["step"]) == [best["step"] + 6, best["step"] + 12]
    assert f"best: step {best['step']} of {best['last_step']}" in (run / "train.log").read_text()
    # keep_checkpoints=1 trims every other checkpoint, never the best
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert f"checkpoint-{best['step']}" in kept and len(kept) == 2
    # the saved adapter holds the best step's weights, not the last step's
    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    at_best = load_file(run / "checkpoints" / f"checkpoint-{best['step']}" / "adapter_model.safetensors")
    assert saved.keys() == at_best.keys()
    assert all(torch.equal(saved[k], at_best[k]) for k in saved)
    # metrics.jsonl says the same as smolora.json
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r} == pytest.approx(evals, abs=1e-5)
    # `smolora runs` and `smolora sweep` report the kept checkpoint's loss, not the last evaluation's
    summary = run_summary(run)
    assert summary["best_step"] == best["step"] and summary["eval_loss"] == pytest.approx(
        best["value"], abs=1e-5
    )


class InterruptAt(TrainerCallback):
    """SIGINT to ourselves at a step: the clean stop a user's Ctrl-C gets (checkpoint, then stop)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_early_stopping_after_a_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    whole = train(overfit_config(tiny_model_dir, tmp_path / "a"), show_progress=False)
    cfg = overfit_config(tiny_model_dir, tmp_path / "b")
    # interrupted after the first evaluations (the best so far is known only from the checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, show_progress=False, callbacks=[InterruptAt(14)])
    resumed = train(cfg, resume=True, show_progress=False)
    a, b = meta_of(whole)["best"], meta_of(resumed)["best"]
    assert (b["step"], b["last_step"], b["stopped_early"]) == (a["step"], a["last_step"], a["stopped_early"])
    assert [s for s, _ in b["evaluations"]] == [s for s, _ in a["evaluations"]]
    assert [v for _, v in b["evaluations"]] == pytest.approx([v for _, v in a["evaluations"]], rel=1e-4)


def test_a_generation_metric_picks_the_best_when_eval_select_says_so(tiny_model_dir, tmp_path):
    cfg = overfit_config(
        tiny_model_dir, tmp_path, "eval.select=rouge1", "eval.select_examples=4", "train.patience=0"
    )
    run = train(cfg, show_progress=False)
    best = meta_of(run)["best"]
    assert best["metric"] == "eval_rouge1" and not best["stopped_early"]  # patience 0: never early
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "eval_rouge1" in r]
    assert [r["step"] for r in scored] == [6, 12, 18, 24, 30, 36, 42, 48]
    assert all(0.0 <= r["eval_rouge1"] <= 100.0 for r in scored)


def test_memorize_trains_on_every_row_and_stops_when_recalled(tiny_model_dir, tmp_path, monkeypatch):
    import smolora.train.best as best_mod

    monkeypatch.setattr(best_mod, "MEMORIZE_TARGET", 0.0)  # the tiny model recalls nothing: any recall stops
    qa = write_qa(tmp_path / "qa.jsonl", n=20)
    cfg = tiny_config(
        tiny_model_dir, qa, tmp_path, "data.task=memorize", "train.epochs=auto", "train.eval_every=auto"
    )
    run = train(cfg, show_progress=False)
    meta = meta_of(run)
    assert meta["task"] == "memorize"
    assert (
        "20 train / 0 val rows" in (run / "train.log").read_text()
    )  # data.val_ratio 0.1 is not applied to facts
    best = meta["best"]
    assert best["metric"] == "eval_recall" and best["stopped_early"]
    assert best["last_step"] == meta["schedule"]["eval_every"] == 10  # the first recall check (2 epochs)
    assert "eval_recall 0.000 reached 0 at step 10" in best["why"]


def test_memorize_without_a_target_runs_its_whole_schedule(tiny_model_dir, tmp_path):
    qa = write_qa(tmp_path / "qa.jsonl", n=8)
    cfg = tiny_config(
        tiny_model_dir, qa, tmp_path, "data.task=memorize", "train.eval_every=4", "train.epochs=3"
    )
    run = train(cfg, show_progress=False)
    best = meta_of(run)["best"]
    assert best["last_step"] == best["max_steps"] == 6 and not best["stopped_early"]
    assert [s for s, _ in best["evaluations"]] == [4, 6]
    # its eval scores the trained facts themselves: exact match is their recall
    from smolora.eval.evaluate import evaluate_run

    result = evaluate_run(run, report=False)
    assert result["metrics"]["n_examples"] == 8 and "exact match is their recall" in result["metrics"]["data"]


# --- BestCheckpoint on its own: the history Trainer keeps --------------------------------------


def state_with(rows, step, max_steps=100):
    return SimpleNamespace(log_history=rows, global_step=step, max_steps=max_steps)


def control():
    return SimpleNamespace(should_save=False, should_training_stop=False)


def test_best_by_loss_saves_at_a_new_best_and_stops_after_patience():
    best = BestCheckpoint("eval_loss", patience=2)
    rows = []
    decisions = []
    for step, loss in [(10, 2.0), (20, 1.5), (30, 1.6), (40, 1.7)]:
        rows.append({"step": step, "eval_loss": loss})
        c = best.on_evaluate(None, state_with(rows, step), control(), metrics={"eval_loss": loss})
        decisions.append((c.should_save, c.should_training_stop))
    assert decisions == [(True, False), (True, False), (False, False), (False, True)]
    assert "since step 20" in best.stop_reason


def test_equal_scores_are_told_apart_by_the_loss_then_by_fewer_steps():
    best = BestCheckpoint("eval_exact_match")
    rows = [
        {"step": 10, "eval_exact_match": 50.0, "eval_loss": 1.2},
        {"step": 20, "eval_exact_match": 50.0, "eval_loss": 0.9},
        {"step": 30, "eval_exact_match": 25.0, "eval_loss": 0.5},
        {"step": 40, "eval_exact_match": 50.0, "eval_loss": 0.9},
    ]
    assert best.best(state_with(rows, 40)) == (20, 50.0)


def test_a_repeated_evaluation_of_a_step_counts_once():
    best = BestCheckpoint("eval_loss", patience=1)
    rows = [{"step": 10, "eval_loss": 1.0}, {"step": 20, "eval_loss": 2.0}, {"step": 20, "eval_loss": 0.5}]
    assert best.history(state_with(rows, 20)) == [(10, 1.0), (20, 0.5)]
    c = best.on_evaluate(None, state_with(rows, 20, max_steps=20), control(), metrics={"eval_loss": 0.5})
    assert not c.should_save  # the last step: the weights in memory are the best, no checkpoint needed
    assert not c.should_training_stop
