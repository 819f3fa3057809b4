"""The evaluation picks the result: the best checkpoint, early stopping, and recall for memorizing.

At every evaluation `BestCheckpoint` looks at all evaluations so far (Trainer's log_history,
which a checkpoint carries, so a resumed run knows them too), and
- when this one is the best: asks Trainer to checkpoint now (that checkpoint is never trimmed
  by keep_checkpoints: the trainer asks `best_step` and passes it to checkpoints.publish);
- when `patience` evaluations in a row were no better: stops the run early;
- when memorizing and the recall reached MEMORIZE_TARGET: stops, the facts are learnt.
At the end the recipe loads the best checkpoint's weights (`load_best`) before saving the
adapter, and records `best` (step, metric, value, why) in adapter/smolora.json.

The metric is the validation loss, or a generation metric (`eval.select: exact_match`, ...)
computed on held-out rows by `GenerationScorer`; memorizing scores recall, the exact match of
greedy answers to training prompts.

Run as:
    best = BestCheckpoint("eval_loss", patience=3)
    trainer.add_callback(best)
    trainer.train()
    summary = best.summary(trainer.state)   # {"step": 40, "metric": "eval_loss", "value": 0.81, ...}
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from smolora.config import RunConfig
from smolora.eval.metrics import LOWER_IS_BETTER, METRICS
from smolora.runs import CHECKPOINTS_DIR

log = logging.getLogger("smolora")

# Recall (percent) at which memorizing stops: the last few stubborn facts are not worth twice the time.
MEMORIZE_TARGET = 95.0
MEMORIZE_SAMPLE = 300  # training rows whose recall is checked when memorizing (all of a 300-fact set)
SELECT_SAMPLE = 64  # held-out rows generated per evaluation when eval.select is a generation metric


def selection_metric(cfg: RunConfig) -> str:
    """The key in Trainer's eval metrics that picks the best checkpoint."""
    if cfg.data.task == "memorize":
        return "eval_recall"
    return "eval_loss" if cfg.eval.select == "loss" else f"eval_{cfg.eval.select}"


class BestCheckpoint(TrainerCallback):
    def __init__(self, metric: str, patience: int = 0, target: float | None = None):
        self.metric = metric
        self.patience = patience
        self.target = target  # stop once the metric reaches this (memorizing: recall)
        self.stop_reason: str | None = None

    def history(self, state) -> list[tuple[int, float]]:
        """(step, value) of every evaluation so far; the last of a step counts (a repeat at the end)."""
        return [(s, v) for s, v, _ in self._rows(state)]

    def _rows(self, state) -> list[tuple[int, float, float]]:
        seen: dict[int, tuple[int, float, float]] = {}
        for row in state.log_history:
            if self.metric in row:
                step = int(row["step"])
                seen[step] = (step, float(row[self.metric]), float(row.get("eval_loss", 0.0)))
        return sorted(seen.values())

    def best(self, state) -> tuple[int, float] | None:
        rows = self._rows(state)
        if not rows:
            return None
        sign = 1.0 if self.metric in LOWER_IS_BETTER else -1.0
        # Equal scores (exact match moves in whole rows) are told apart by the loss, then by fewer steps.
        step, value, _ = min(rows, key=lambda r: (sign * r[1], r[2], r[0]))
        return step, value

    def best_step(self, state) -> int | None:
        """The step whose checkpoint is never trimmed (read by the trainer when it publishes one)."""
        best = self.best(state)
        return best[0] if best else None

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        value = (metrics or {}).get(self.metric)
        best = self.best(state)
        if value is None or best is None:
            return control
        step = state.global_step
        later = sum(1 for s, _ in self.history(state) if s > best[0])
        if best[0] == step and step < state.max_steps:
            control.should_save = True  # the best so far gets a checkpoint to come back to
            log.info("step %d: best so far (%s %.4f)", step, self.metric, value)
        if self.target is not None and value >= self.target:
            self.stop_reason = f"{self.metric} {value:.3f} reached {self.target:g} at step {step}"
            control.should_training_stop = True
        elif self.patience and later >= self.patience:
            self.stop_reason = f"no better {self.metric} in {later} evaluations since step {best[0]} (train.patience={self.patience})"
            control.should_training_stop = True
        if control.should_training_stop and self.stop_reason and step < state.max_steps:
            log.info("stopping early at step %d of %d: %s", step, state.max_steps, self.stop_reason)
        return control

    def summary(self, state) -> dict[str, Any] | None:
        """What adapter/smolora.json records under `best`; None without any evaluation."""
        best = self.best(state)
        if best is None:
            return None
        step, value = best
        last = state.global_step
        why = (
            "the last step"
            if step == last
            else f"better than the {len(self.history(state)) - 1} other evaluation(s)"
        )
        return {
            "step": step,
            "metric": self.metric,
            "value": round(value, 6),
            "last_step": last,
            "max_steps": state.max_steps,
            "stopped_early": last < state.max_steps,
            "why": self.stop_reason or why,
            "evaluations": [[s, round(v, 6)] for s, v in self.history(state)],
        }


class GenerationScorer:
    """Greedy answers to a few prompts scored with a metric of eval/metrics.py (recall: exact match)."""

    def __init__(self, cfg: RunConfig, tokenizer, examples: list[dict], name: str):
        from smolora.eval.evaluate import prompt_pairs

        self.cfg = cfg
        self.tokenizer = tokenizer
        self.pairs = prompt_pairs(examples)
        self.name = name  # "recall" or a key of METRICS
        self.fn = METRICS["exact_match" if name == "recall" else name]

    def __call__(self, model) -> dict[str, float]:
        from smolora.eval.evaluate import generate_answers

        if not self.pairs:
            return {}
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                answers = generate_answers(model, self.tokenizer, self.pairs, self.cfg)
        finally:
            model.train(was_training)
        return {self.name: self.fn(answers, [p["reference"] for p in self.pairs])}


def load_best(model, checkpoint: Path) -> None:
    """Put the weights of `checkpoint` (a Trainer checkpoint of this very model) back into `model`."""
    from safetensors.torch import load_file

    adapter = checkpoint / "adapter_model.safetensors"
    if adapter.exists():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(adapter))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise RuntimeError(f"{adapter}: {len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
        return
    files = sorted(checkpoint.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{checkpoint} holds no weights (adapter_model.safetensors, model.safetensors)"
        )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    _, unexpected = model.load_state_dict(state, strict=False)  # tied weights are saved once
    if unexpected:
        raise RuntimeError(f"{checkpoint}: {len(unexpected)} unexpected keys, e.g. {unexpected[0]}")


def evaluation(cfg: RunConfig, data, tokenizer) -> tuple[Any, GenerationScorer | None, BestCheckpoint | None]:
    """What each evaluation runs on, the generation metric it adds, and the callback that keeps the best.

    Memorizing has no validation split: its evaluations score recall on a sample of the training rows.
    """
    memorize = cfg.data.task == "memorize"
    eval_set = data.val
    if memorize and eval_set is None and not cfg.data.streaming:
        eval_set = data.train.select(range(min(len(data.train), MEMORIZE_SAMPLE)))
    if eval_set is None or not cfg.train.eval_every:
        return eval_set, None, None
    metric = selection_metric(cfg)
    scorer = None
    if metric != "eval_loss":
        from smolora.eval.evaluate import held_out_examples

        if memorize:
            every_row = cfg.eval.model_copy(update={"max_examples": None})
            examples = held_out_examples(cfg.model_copy(update={"eval": every_row}), split="train")
            n = cfg.eval.select_examples or MEMORIZE_SAMPLE
            examples = random.Random(cfg.train.seed).sample(examples, min(n, len(examples)))
        else:
            examples = held_out_examples(cfg)[: cfg.eval.select_examples or SELECT_SAMPLE]
        scorer = GenerationScorer(cfg, tokenizer, examples, metric.removeprefix("eval_"))
    patience = 0 if memorize else cfg.train.patience
    best = BestCheckpoint(metric, patience, target=MEMORIZE_TARGET if memorize else None)
    return eval_set, scorer, best


def keep_best(trainer, best: BestCheckpoint | None, run_dir: Path) -> dict | None:
    """Load the best checkpoint's weights into the model when a later step was worse; what won and why."""
    summary = best.summary(trainer.state) if best is not None else None
    if summary is None:
        return None
    log.info(
        "best: step %d of %d by %s %.4f (%s)",
        summary["step"],
        summary["last_step"],
        summary["metric"],
        summary["value"],
        summary["why"],
    )
    if summary["step"] == trainer.state.global_step:
        return summary
    checkpoint = run_dir / CHECKPOINTS_DIR / f"checkpoint-{summary['step']}"
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled or not checkpoint.is_dir():
        why = "sharded weights" if checkpoint.is_dir() else f"{checkpoint} is missing"
        log.warning("keeping the last step's weights, not the best (%s)", why)
        return {**summary, "kept": "last"}
    load_best(trainer.model, checkpoint)
    return summary
