"""Base vs fine-tuned, side by side, on the same held-out prompts.

The held-out set is `data.val_path` when the run has one, else the same seeded split the
training used (`--data FILE` replaces it). For both models this computes the loss and
perplexity on the answers (the tokens training learns) and, on batched greedy generations,
every metric in `smolora.eval.metrics.METRICS`; lm-eval tasks are optional. The base model's
numbers come from the very same weights with the adapter switched off, so the only
difference between the two columns is the fine-tune. Results go to `RUN/eval/`
(metrics.json, samples.jsonl, report.md, report.html) and `RUN/plots/loss.png`;
metrics.json and the report carry the diagnosis (smolora.eval.diagnose).
A preference or reward run (train.objective != sft) is read as prompt + chosen answer for the
same metrics and adds its own (eval/preference.py); its base is the run it continued
(model.adapter) when it continued one.

Run as:
    result = evaluate_run("runs/quickstart")
    print(result["metrics"]["fine_tuned"]["exact_match"], result["report"])
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from smolora.config import RunConfig, load_config
from smolora.errors import DatasetError, SmoLoRAError
from smolora.eval.diagnose import eval_diagnosis
from smolora.eval.metrics import LOWER_IS_BETTER, METRICS, exact_match, normalize  # noqa: F401 (re-exported)
from smolora.eval.rewards import load_rewards
from smolora.runs import (
    ADAPTER_DIR,
    ADAPTER_META,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    EVAL_DIR,
    EVAL_METRICS,
    GENERATIONS_FILE,
    find_adapter_dir,
    read_meta,
    require_run,
)

log = logging.getLogger("smolora")

SPLITS = ("validation", "train")


def run_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    return load_config(require_run(run_dir) / CONFIG_FILE, overrides)


def require_adapter(run_dir: Path) -> None:
    """Fail before any data or model is loaded when there is nothing fine-tuned to evaluate."""
    if find_adapter_dir(run_dir) is None:
        config = run_dir / CONFIG_FILE
        fix = (
            f"finish the run with: smolora train {config} --resume"
            if (run_dir / CHECKPOINTS_DIR).is_dir()
            else f"train it first: smolora train {config}"
        )
        raise SmoLoRAError(
            f"{run_dir} has no adapter ({run_dir / ADAPTER_DIR / ADAPTER_META} is missing): {fix}, "
            "or pass a finished run directory"
        )


def held_out_examples(cfg: RunConfig, data_path: str | None = None, split: str = "validation") -> list[dict]:
    """The examples to evaluate on, capped at eval.max_examples (same rows for loss and generation)."""
    from smolora.data.pipeline import split_examples

    if data_path:
        # A saved DatasetDict or hub dataset has named splits; a plain file is read whole.
        examples = _read(data_path, cfg, cfg.data.model_copy(update={"split": split}), any_shape=True)
        return examples[: cfg.eval.max_examples]
    if split == "validation" and cfg.data.task == "memorize" and not cfg.data.val_path:
        split = "train"  # memorizing has no held-out facts: what it is judged on is their recall
    if split not in SPLITS:
        raise SmoLoRAError(
            f"--split {split}: a run's own data has the splits {' and '.join(SPLITS)}; "
            "for another split pass --data DATASET --split NAME"
        )
    if split == "validation" and cfg.data.val_path:
        examples = _read(cfg.data.val_path, cfg)
    elif split == "train" and cfg.data.val_path:
        examples = _read(cfg.data.path, cfg)
    else:
        # the same seeded split as training (pipeline.prepare / prepare_preference)
        train, val = split_examples(_read(cfg.data.path, cfg), cfg.data.val_ratio, cfg.train.seed)
        examples = val if split == "validation" else train
        if not examples:
            raise DatasetError(
                "the run has no held-out split (data.val_ratio=0 and no data.val_path); "
                "pass --data FILE with prompt and answer fields"
            )
    return examples[: cfg.eval.max_examples]


def _read(path: str | list[str], cfg: RunConfig, data=None, any_shape: bool = False) -> list[dict]:
    """SFT examples of a data file; a preference run's pairs / rows / prompts turned into SFT
    examples (prompt + chosen answer, see eval/preference.py), so the answer metrics apply.
    `any_shape` (--data): a preference run may also be scored on plain SFT data (answers only)."""
    from smolora.data.encode import load_examples

    data = data or cfg.data
    if cfg.train.objective == "sft":
        return load_examples(path, data)[0]
    from smolora.eval.preference import read_preference

    try:
        return read_preference(path, data, cfg.train.objective)
    except DatasetError:
        if not any_shape:
            raise
        return load_examples(path, data)[0]  # e.g. a DPO run against the SFT eval set it started from


def data_source(cfg: RunConfig, data_path: str | None, split: str) -> str:
    """Where the evaluated examples came from, in words for metrics.json and the report."""

    def names(p: str | list[str] | None) -> str:
        return ", ".join(p) if isinstance(p, list) else str(p)

    if data_path:
        return data_path
    if cfg.data.task == "memorize" and not cfg.data.val_path:
        return f"{names(cfg.data.path)} (the trained facts, data.task=memorize: exact match is their recall)"
    if cfg.data.val_path:
        return names(cfg.data.val_path if split == "validation" else cfg.data.path)
    return f"{names(cfg.data.path)} ({split} part of the seeded split: val_ratio {cfg.data.val_ratio}, seed {cfg.train.seed})"


def prompt_pairs(examples: list[dict]) -> list[dict[str, Any]]:
    """Prompt/reference pairs: the conversation up to the last answer, and that answer.

    Plain-text examples have no answer to compare with; they still count for the loss.
    """
    pairs = []
    for ex in examples:
        messages = ex.get("messages")
        if not messages or messages[-1]["role"] != "assistant":
            continue
        pairs.append(
            {"messages": messages[:-1], "reference": messages[-1]["content"], "domain": ex.get("domain")}
        )
    return pairs


def held_out(cfg: RunConfig, data_path: str | None = None) -> list[dict[str, Any]]:
    """Prompt/reference pairs of the held-out split (kept for callers of the first version)."""
    pairs = prompt_pairs(held_out_examples(cfg, data_path))
    if not pairs:
        raise DatasetError(
            "no held-out prompt/answer pairs to evaluate; pass --data FILE with prompt and answer fields"
        )
    return pairs


@torch.inference_mode()
def answer_loss(model, tokenizer, examples: list[dict], cfg: RunConfig) -> dict[str, float]:
    """Mean token loss on the trained-on tokens (answers, or all of plain text) and its perplexity.

    Rows are encoded exactly as for training (same template, masking and max_length), so the
    fine-tuned number matches the eval loss logged during training on the same split.
    """
    from smolora.data.collate import pad_batch
    from smolora.data.encode import encode_rows
    from smolora.model.loss import chunked_lm_loss

    rows, _ = encode_rows(examples, tokenizer, cfg.data)
    if not rows:
        return {}
    rows.sort(key=lambda r: r["length"])  # less padding per batch
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(rows), cfg.eval.batch_size):
        batch = pad_batch(rows[start : start + cfg.eval.batch_size], tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        loss_sum, n = chunked_lm_loss(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk=cfg.train.loss_chunk
        )
        total, count = total + float(loss_sum), count + n
    loss = total / max(count, 1)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def generate_answers(model, tokenizer, pairs: list[dict], cfg: RunConfig) -> list[str]:
    """Batched greedy answers (left padding inside generate()), in input order."""
    from smolora.generate import generate

    out: list[str] = [""] * len(pairs)
    # Group by domain so each batch shares one domain tag.
    for domain in dict.fromkeys(p["domain"] for p in pairs):
        idx = [i for i, p in enumerate(pairs) if p["domain"] == domain]
        answers = generate(
            model,
            tokenizer,
            [pairs[i]["messages"] for i in idx],
            max_new_tokens=cfg.eval.max_new_tokens,
            batch_size=cfg.eval.batch_size,
            domain=domain,
            system_prompt=cfg.data.system_prompt,
        )
        for i, a in zip(idx, answers, strict=True):
            out[i] = a
    return out


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    return {name: fn(predictions, references) for name, fn in METRICS.items()}


def base_and_tuned(run_dir: Path, start: str | None = None) -> Iterator[tuple[str, Any, Any]]:
    """("fine_tuned", model, tokenizer), then ("base", ...): the adapter switched off, or the
    base weights loaded anew after a full fine-tune (which has no adapter to switch off).

    `start` (a run's model.adapter: the run it continued, e.g. the SFT run a DPO run started
    from) is the base instead: what the fine-tune is compared with is where it started."""
    from smolora.config import ModelSection
    from smolora.model.load import load_base, load_for_inference

    model, tokenizer, _ = load_for_inference(run_dir)
    yield "fine_tuned", model, tokenizer
    if start:
        del model
        base, base_tokenizer, _ = load_for_inference(start)
        yield "base", base, base_tokenizer
        return
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield "base", model, tokenizer
        return
    del model
    meta = read_meta(find_adapter_dir(run_dir))  # require_adapter found it before anything loaded
    section = ModelSection(name=meta.base_model, drop_layers=meta.drop_layers, keep_layers=meta.keep_layers)
    base, base_tokenizer = load_base(section)
    base.eval()
    yield "base", base, base_tokenizer


def evaluate_run(
    run_dir: str | Path,
    data_path: str | None = None,
    split: str = "validation",
    overrides: list[str] | None = None,
    lm_eval_tasks: list[str] | None = None,
    include_path: str | Path | None = None,
    lm_eval_limit: int | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Score base and fine-tuned model, write RUN/eval/ (and the report), return what was written.

    A grpo run is also scored with its own train.rewards (eval/rewards.py), on greedy answers."""
    run_dir = require_run(run_dir)  # a run, or its adapter/ directory
    cfg = run_config(run_dir, overrides)
    require_adapter(run_dir)
    from smolora.eval.preference import starting_point

    start = starting_point(cfg)
    rewards = load_rewards(cfg.train.rewards) if cfg.train.objective == "grpo" else []
    # Everything that can fail on bad input fails here, before a model is loaded.
    task_manager = None
    if lm_eval_tasks:
        from smolora.eval.harness import find_tasks

        task_manager = find_tasks(lm_eval_tasks, include_path)
    examples = held_out_examples(cfg, data_path, split)
    pairs = prompt_pairs(examples)
    refs = [p["reference"] for p in pairs]
    lm_eval = (lm_eval_tasks, task_manager, lm_eval_limit) if lm_eval_tasks else None
    scores, outputs, seconds = score_both(run_dir, cfg, examples, start, rewards, lm_eval)
    metrics = {
        "run": str(run_dir),
        "data": data_source(cfg, data_path, split),
        "split": split,
        "n": len(pairs),
        "n_examples": len(examples),
        "base": scores["base"],
        "fine_tuned": scores["fine_tuned"],
        "difference": {k: scores["fine_tuned"][k] - scores["base"][k] for k in scores["fine_tuned"]},
        "lower_is_better": sorted(LOWER_IS_BETTER & set(scores["fine_tuned"])),
        "generation": {"max_new_tokens": cfg.eval.max_new_tokens, "greedy": True},
        "lm_eval": {"tasks": lm_eval_tasks, "include_path": str(include_path) if include_path else None}
        if lm_eval_tasks
        else None,
        "seconds": seconds,
        "objective": cfg.train.objective,
        "base_model": start or "the base model (adapter switched off)",
    }
    metrics.update(eval_diagnosis(run_dir, cfg, metrics))  # training's findings + forgetting; best step
    samples = [
        {"prompt": p["messages"][-1]["content"], "reference": r, "base": b, "fine_tuned": t}
        for p, r, b, t in zip(
            pairs, refs, outputs.get("base", []), outputs.get("fine_tuned", []), strict=True
        )
    ]
    out_dir = run_dir / EVAL_DIR
    out_dir.mkdir(exist_ok=True)
    (out_dir / EVAL_METRICS).write_text(json.dumps(metrics, indent=2))
    (out_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    result: dict[str, Any] = {"metrics": metrics, "samples": samples, "dir": out_dir}
    if report:
        from smolora.eval.report import write_report

        result.update(write_report(run_dir, cfg, metrics, samples))
    return result


def score_both(run_dir: Path, cfg: RunConfig, examples, start, rewards, lm_eval) -> tuple[dict, dict, dict]:
    """(scores, greedy answers, seconds) of "fine_tuned" and "base" on the held-out examples."""
    pairs = prompt_pairs(examples)
    refs = [p["reference"] for p in pairs]
    scores: dict[str, dict[str, float]] = {}
    outputs: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    logps: dict[str, list] = {}
    for which, model, tokenizer in base_and_tuned(run_dir, start):
        t0 = time.perf_counter()
        scores[which] = answer_loss(model, tokenizer, examples, cfg)
        if pairs:
            outputs[which] = generate_answers(model, tokenizer, pairs, cfg)
            scores[which].update(score(outputs[which], refs))
        logps[which] = objective_scores(model, tokenizer, examples, cfg, rewards, scores[which])
        if lm_eval:
            from smolora.eval.harness import run_lm_eval

            tasks, task_manager, limit = lm_eval
            scores[which].update(
                run_lm_eval(model, tokenizer, tasks, task_manager, cfg.eval.batch_size, limit)
            )
        seconds[which] = round(time.perf_counter() - t0, 2)
        log.info("%s: %s (%.1f s)", which, _brief(scores[which]), seconds[which])
    if logps["base"] is not None:  # pairs / kto: rewards relative to the starting point, the base
        from smolora.eval.preference import pair_scores

        both = pair_scores(logps["base"], logps["fine_tuned"], examples, cfg.train.strength)
        for which, values in zip(("base", "fine_tuned"), both, strict=True):
            scores[which].update(values)
    return scores, outputs, seconds


def objective_scores(model, tokenizer, examples, cfg: RunConfig, rewards, scores: dict) -> list | None:
    """A preference run's own numbers for one model: grpo's reward (added to `scores`), or the
    answer log-probabilities of pairs / kto rows that pair_scores compares across the two models."""
    from smolora.eval import preference

    shape = preference.shape_of(examples)
    if shape == "prompts" and rewards:
        answer_cfg = cfg.model_copy(
            update={"eval": cfg.eval.model_copy(update={"max_new_tokens": cfg.train.max_completion_length})}
        )
        answers = generate_answers(model, tokenizer, preference.reward_prompts(examples), answer_cfg)
        scores.update(preference.reward_scores(rewards, examples, answers))
    if shape in ("pairs", "kto"):
        return preference.answer_logps(model, tokenizer, examples, cfg)
    return None


def _brief(scores: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in list(scores.items())[:4])


class SampleGenerations(TrainerCallback):
    """eval.generate_every: greedy answers to a few held-out prompts, appended to RUN/generations.jsonl.

    One line per prompt and step (`{"step", "prompt", "reference", "output"}`), so a run shows
    how its answers change while it trains; the report prints them as a table.
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, tokenizer, n_prompts: int = 3):
        self.cfg, self.tokenizer, self.path = cfg, tokenizer, run_dir / GENERATIONS_FILE
        try:
            self.pairs = prompt_pairs(held_out_examples(cfg))[:n_prompts]
        except SmoLoRAError as e:  # no held-out split: nothing to show, training goes on
            log.warning("eval.generate_every: no held-out prompts (%s)", e)
            self.pairs = []

    def on_step_end(self, args, state, control, model=None, **kw):
        every = self.cfg.eval.generate_every
        if not (every and self.pairs and state.is_world_process_zero and state.global_step % every == 0):
            return
        was_training = model.training
        model.eval()
        try:
            answers = generate_answers(model, self.tokenizer, self.pairs, self.cfg)
        finally:
            model.train(was_training)
        with open(self.path, "a", encoding="utf-8") as f:
            for p, a in zip(self.pairs, answers, strict=True):
                row = {"step": state.global_step, "prompt": p["messages"][-1]["content"]}
                f.write(json.dumps({**row, "reference": p["reference"], "output": a}) + "\n")
        log.info("step %d sample: %s", state.global_step, answers[0][:120].replace("\n", " "))
