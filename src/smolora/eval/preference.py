"""Evaluation of preference and reward runs (train.objective dpo, orpo, simpo, kto, grpo).

Held-out preference data is read with data/preference.py and, so the answer metrics (exact
match, ROUGE, ...) work as for SFT, turned into SFT examples: the prompt and its `chosen`
answer (kto: a good completion; grpo: the prompt and, when the data has one, its reference
column). Each example keeps its preference row under "preference".

On top of the answer metrics, for both models:
- pairs (dpo, orpo, simpo): preference_accuracy, the share (0-100) of pairs where
  logp(chosen) - logp(rejected), summed over the answer tokens, is > 0; preference_margin,
  its mean; reward_margin, beta * ((pc - rc) - (pr - rr)) averaged, with the reference r the
  run's starting point, the base column (so the base's own is 0 by definition).
- kto: preference_margin (mean logp of good rows - of bad rows), reward_chosen and
  reward_rejected (beta * (logp - ref) of good / bad rows) and their difference reward_margin.
- grpo: reward, the mean summed train.rewards of one greedy answer per held-out prompt (at most
  train.max_completion_length tokens, as training's eval_reward), and reward_<name> each.

Run as:
    examples = read_preference("pairs.jsonl", cfg.data, "dpo")
    logps = answer_logps(model, tokenizer, examples, cfg)
    base, tuned = pair_scores(base_logps, logps, examples, cfg.train.strength)
"""

from __future__ import annotations

import json
from typing import Any

import torch

from smolora.config import DataSection, RunConfig
from smolora.data.collate import pad_batch
from smolora.data.preference import SHAPES, load_preference
from smolora.data.render import IGNORE, encode_examples
from smolora.errors import ConfigError
from smolora.runs import find_adapter_dir

# The data columns a grpo prompt's reference answer may be in (eval/rewards.py's built-ins read
# the same ones; eval sits beside train, so the names are repeated rather than imported).
REFERENCE_COLUMNS = ("answer", "reference", "solution", "response", "output", "completion")
OBJECTIVE_CURVES = {
    "pairs": ("reward_margin", "reward_accuracy"),
    "kto": ("reward_chosen", "reward_rejected"),
    "prompts": ("reward",),
}


def _reference(columns: dict[str, Any]) -> str | None:
    name = next((c for c in REFERENCE_COLUMNS if columns.get(c) not in (None, "")), None)
    return str(columns[name]) if name else None


def as_sft(example: dict, shape: str) -> dict:
    """One preference row -> an SFT example (prompt + the good answer), the row kept under "preference"."""
    answer = {
        "pairs": example.get("chosen"),
        "kto": example.get("completion") if example.get("label") else None,
        "prompts": _reference(example.get("columns", {})),
    }[shape]
    turns = list(example["prompt"])
    if answer is not None:
        turns.append({"role": "assistant", "content": answer})
    return {"messages": turns, "preference": {**example, "shape": shape}}


def read_preference(path: str | list[str], data: DataSection, objective: str) -> list[dict]:
    """The rows of a preference / reward data file as SFT examples (see as_sft)."""
    examples, shape, _ = load_preference(path, data, objective)
    return [as_sft(ex, shape) for ex in examples]


def shape_of(examples: list[dict]) -> str | None:
    return examples[0]["preference"]["shape"] if examples and "preference" in examples[0] else None


def starting_point(cfg: RunConfig) -> str | None:
    """The run a run continued (model.adapter): the base of its evaluation. Checked before loading."""
    if not cfg.model.adapter:
        return None
    if find_adapter_dir(cfg.model.adapter) is None:
        raise ConfigError(
            f"model.adapter: {cfg.model.adapter}, the run this one started from and the base it is "
            "compared with, is not a finished run; restore it, or --set model.adapter=null to compare "
            "with the base model"
        )
    return cfg.model.adapter


# --- log-probabilities of answers --------------------------------------------------------


def _answers(examples: list[dict]) -> list[tuple[list[dict], str]]:
    """(prompt, answer) of every answer a pair or kto row is judged on, in order: chosen, rejected."""
    out = []
    for ex in examples:
        p = ex["preference"]
        if p["shape"] == "pairs":
            out += [(p["prompt"], p["chosen"]), (p["prompt"], p["rejected"])]
        elif p["shape"] == "kto":
            out.append((p["prompt"], p["completion"]))
    return out


@torch.inference_mode()
def answer_logps(model, tokenizer, examples: list[dict], cfg: RunConfig) -> list[float | None]:
    """Summed log-probability of each judged answer (see _answers); None where truncation left no token.

    Answers are rendered and masked as training renders them (data/preference.py uses the same
    encode_examples), so the numbers are the ones the objective compared.
    """
    from smolora.model.loss import sequence_logps

    prompts_answers = _answers(examples)
    sft = [{"messages": [*p, {"role": "assistant", "content": a}]} for p, a in prompts_answers]
    rows, _ = encode_examples(sft, tokenizer, cfg.data.max_length, "completion")
    rows = [r[0] for r in rows]
    kept = [i for i, r in enumerate(rows) if len(r["labels"]) > r["labels"].count(IGNORE)]
    out: list[float | None] = [None] * len(rows)
    device = next(model.parameters()).device
    for start in range(0, len(kept), cfg.eval.batch_size):
        idx = kept[start : start + cfg.eval.batch_size]
        batch = {
            k: v.to(device) for k, v in pad_batch([rows[i] for i in idx], tokenizer.pad_token_id).items()
        }
        logps, _ = sequence_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"], cfg.train.loss_chunk
        )
        for i, v in zip(idx, logps.float().cpu().tolist(), strict=True):
            out[i] = v
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def pair_scores(
    base: list[float | None], tuned: list[float | None], examples: list[dict], beta: float
) -> tuple[dict[str, float], dict[str, float]]:
    """(base scores, fine-tuned scores) from both models' answer_logps; the reference is the base."""
    if shape_of(examples) == "kto":
        return _kto_scores(base, tuned, examples, beta)
    # pairs: chosen at even, rejected at odd positions; a pair counts when both kept a token
    pairs = [
        (base[i], base[i + 1], tuned[i], tuned[i + 1])
        for i in range(0, len(base), 2)
        if None not in (base[i], base[i + 1], tuned[i], tuned[i + 1])
    ]
    if not pairs:
        return {}, {}
    out = []
    for col in ((0, 1), (2, 3)):
        margins = [p[col[0]] - p[col[1]] for p in pairs]
        out.append(
            {
                "preference_accuracy": 100.0 * _mean([float(m > 0) for m in margins]),
                "preference_margin": _mean(margins),
            }
        )
    out[0]["reward_margin"] = 0.0  # the base is the reference: its reward is 0 by definition
    out[1]["reward_margin"] = beta * _mean([(tc - bc) - (tr - br) for bc, br, tc, tr in pairs])
    return out[0], out[1]


def _kto_scores(base, tuned, examples, beta) -> tuple[dict[str, float], dict[str, float]]:
    rows = [
        (b, t, ex["preference"]["label"])
        for b, t, ex in zip(base, tuned, examples, strict=True)
        if b is not None and t is not None
    ]
    good = [(b, t) for b, t, label in rows if label]
    bad = [(b, t) for b, t, label in rows if not label]
    if not (good and bad):
        return {}, {}
    scores = []
    for k in (0, 1):
        scores.append({"preference_margin": _mean([r[k] for r in good]) - _mean([r[k] for r in bad])})
    chosen, rejected = beta * _mean([t - b for b, t in good]), beta * _mean([t - b for b, t in bad])
    scores[0].update(reward_chosen=0.0, reward_rejected=0.0, reward_margin=0.0)
    scores[1].update(reward_chosen=chosen, reward_rejected=rejected, reward_margin=chosen - rejected)
    return scores[0], scores[1]


# --- grpo: rewards of greedy answers -------------------------------------------------------


def reward_prompts(examples: list[dict]) -> list[dict[str, Any]]:
    """The prompts of grpo rows, as generate_answers takes them."""
    return [{"messages": ex["preference"]["prompt"], "domain": None} for ex in examples]


def reward_scores(
    rewards: list[tuple[str, Any]], examples: list[dict], answers: list[str]
) -> dict[str, float]:
    """Mean summed reward of `answers` (one per grpo row) and each reward's mean, as reward_<name>:
    eval/rewards.py's score_rewards, the one training uses."""
    from smolora.eval.rewards import score_rewards

    prompts = [ex["preference"]["prompt"][-1]["content"] for ex in examples]
    columns = [json.loads(json.dumps(ex["preference"]["columns"], default=str)) for ex in examples]
    total, means = score_rewards(rewards, prompts, answers, columns)
    return {"reward": _mean(total), **{f"reward_{name}": v for name, v in means.items()}}


# --- the report's curve --------------------------------------------------------------------


def objective_figure(log_rows: list[dict[str, Any]], objective: str):
    """The objective's metrics over steps (train and eval_), a matplotlib Figure for report.py to
    save; None for sft or a log without them."""
    from matplotlib.figure import Figure

    names = OBJECTIVE_CURVES.get(SHAPES.get(objective, ""), ())
    series = []
    for name in names:
        for key, style in ((name, "-"), (f"eval_{name}", "o-")):
            points = [(r["step"], r[key]) for r in log_rows if r.get(key) is not None and "step" in r]
            if points:
                series.append((key, style, points))
    if not series:
        return None
    fig = Figure(figsize=(7, 3.6), dpi=110)
    ax = fig.add_subplot()
    for key, style, points in series:
        ax.plot(*zip(*points, strict=True), style, label=key, linewidth=1.4)
    ax.set_xlabel("step")
    ax.set_ylabel("reward" if objective == "grpo" else "reward: beta x log-ratio (accuracy: 0-1)")
    ax.set_title(f"{objective}: {' and '.join(names)} during training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
