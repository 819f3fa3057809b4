"""GRPO: sample a group of answers per prompt, score them with train.rewards, push toward the better ones.

One training step: each of the batch's prompts gets `train.num_generations` sampled answers
(temperature `train.temperature`, at most `train.max_completion_length` tokens, cut after the
first end-of-turn); their rewards are normalised within the group (advantage = (r - mean) /
(std + 1e-4), TRL's scale_rewards="group"); the loss is -advantage x each answer token's
log-probability (at the sampling temperature, as TRL scores it), summed over tokens and divided
by their number (TRL's default loss_type "dapo" when a step is one micro-batch), plus
`train.beta` x the k3 KL to the base (the adapter switched off) x the ratio (TRL's default
use_bias_correction_kl) when beta > 0. With one update per generation the PPO ratio is 1, so
clipping never acts. Evaluation scores one greedy answer per held-out prompt: `eval_reward`.

Run as:
    loss, metrics = grpo_loss(model, batch, cfg.train, rewards, tokenizer)
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import torch

from smolora.config import TrainSection
from smolora.errors import TrainingError
from smolora.eval.rewards import Reward, score_rewards
from smolora.model.loss import token_logps


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """(r - group mean) / (group std + 1e-4), the std unbiased as torch's (and TRL's) default."""
    grouped = rewards.view(-1, group)
    mean = grouped.mean(dim=1).repeat_interleave(group)
    std = grouped.std(dim=1).repeat_interleave(group)
    return (rewards - mean) / (std + 1e-4)


@torch.no_grad()
def sample(model, inputs: dict[str, Any], t: TrainSection, tokenizer, n: int, greedy: bool = False):
    """(prompt ids and mask repeated n times, completion ids, completion mask): cut after the first eos."""
    ids = inputs["prompt_ids"].repeat_interleave(n, dim=0)
    mask = inputs["prompt_mask"].repeat_interleave(n, dim=0)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=not greedy,
            temperature=None if greedy else t.temperature,
            top_p=None if greedy else 1.0,
            top_k=None if greedy else 0,
            max_new_tokens=t.max_completion_length,
            pad_token_id=tokenizer.pad_token_id,
        )
    finally:
        model.train(was_training)
    completion = out[:, ids.shape[1] :]
    stops = _stop_ids(tokenizer, model)
    is_stop = torch.isin(completion, torch.tensor(sorted(stops), device=completion.device))
    # Keep up to and including the first stop token: the answer learns where it ends.
    after = (is_stop.long().cumsum(dim=1) - is_stop.long()) > 0
    return ids, mask, completion, (~after).long()


def _stop_ids(tokenizer, model) -> set[int]:
    stops = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            stops.add(value)
        elif isinstance(value, (list, tuple)):
            stops.update(v for v in value if isinstance(v, int))
    return stops or {tokenizer.pad_token_id}


def completion_texts(tokenizer, completion: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [
        tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True).strip()
        for row, m in zip(completion, mask, strict=True)
    ]


def rewards_of(rewards, inputs, texts: list[str], n: int) -> tuple[torch.Tensor, dict[str, float]]:
    prompts = [p for p in inputs["prompt"] for _ in range(n)]
    columns = [json.loads(c) if isinstance(c, str) else c for c in inputs["columns"] for _ in range(n)]
    total, means = score_rewards(rewards, prompts, texts, columns)
    return torch.tensor(total, dtype=torch.float32), means


def policy_logps(
    model, ids, mask, completion, completion_mask, chunk: int, plain: bool = False, temperature=1.0
):
    """Per-token log-probabilities of the answer tokens, as a (rows, completion length) tensor (0 elsewhere).

    Scored at the sampling temperature (TRL's too): the policy the answers were drawn from."""
    input_ids = torch.cat([ids, completion], dim=1)
    attention = torch.cat([mask, completion_mask], dim=1)
    labels = torch.full_like(input_ids, -100)
    labels[:, ids.shape[1] :] = completion.masked_fill(completion_mask == 0, -100)
    logp, _ = token_logps(model, input_ids, attention, labels, chunk, plain, temperature)
    out = torch.zeros(completion.shape, dtype=logp.dtype, device=logp.device)
    out[completion_mask.bool()] = logp  # labelled positions come out in row-major order, as the mask's
    return out


def grpo_token_loss(logp, advantages, mask, beta: float = 0.0, ref_logp=None) -> torch.Tensor:
    """TRL's GRPO loss (ratio 1, dapo normalisation: the sum over answer tokens / their number).

    The k3 KL is weighted by the ratio, as TRL's default use_bias_correction_kl does: its value
    is 1, but its gradient makes the KL term's gradient the unbiased reverse-KL one."""
    ratio = torch.exp(logp - logp.detach())
    per_token = -ratio * advantages[:, None].to(logp)
    if beta:
        d = ref_logp - logp
        per_token = per_token + beta * (torch.exp(d) - d - 1) * ratio
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def grpo_loss(
    model,
    inputs: dict[str, Any],
    t: TrainSection,
    rewards: list[tuple[str, Reward]],
    tokenizer,
    chunk: int = 1024,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sample, score, and the loss of one batch of prompts (training), or the greedy reward (evaluation)."""
    if not model.training:
        return _evaluate(model, inputs, t, rewards, tokenizer)
    n = t.num_generations
    ids, mask, completion, completion_mask = sample(model, inputs, t, tokenizer, n)
    texts = completion_texts(tokenizer, completion, completion_mask)
    scores, means = rewards_of(rewards, inputs, texts, n)
    advantages = group_advantages(scores, n).to(ids.device)
    logp = policy_logps(model, ids, mask, completion, completion_mask, chunk, temperature=t.temperature)
    ref = None
    if t.strength:
        ref = _base_logps(model, ids, mask, completion, completion_mask, chunk, t.temperature)
    cm = completion_mask.to(logp)
    loss = grpo_token_loss(logp, advantages, cm, t.strength, ref)
    metrics = {
        "reward": scores.mean().item(),
        "reward_std": scores.view(-1, n).std(dim=1).mean().item(),
        "completion_length": completion_mask.sum(dim=1).float().mean().item(),
        **{f"reward_{name}": v for name, v in means.items()},
        "tokens": int(mask.sum() + completion_mask.sum()),  # counted for tokens/s, not logged
    }
    return loss, metrics


def _base_logps(model, ids, mask, completion, completion_mask, chunk, temperature: float = 1.0):
    if not hasattr(model, "disable_adapter"):
        raise TrainingError(
            "grpo with train.beta > 0 compares with the base model, which needs an adapter method "
            "(lora, dora, ...); use train.beta=0 with full or freeze fine-tuning"
        )
    with (
        torch.no_grad(),
        model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext(),
    ):
        return policy_logps(model, ids, mask, completion, completion_mask, chunk, temperature=temperature)


def _evaluate(model, inputs, t, rewards, tokenizer) -> tuple[torch.Tensor, dict[str, float]]:
    ids, mask, completion, completion_mask = sample(model, inputs, t, tokenizer, 1, greedy=True)
    scores, means = rewards_of(rewards, inputs, completion_texts(tokenizer, completion, completion_mask), 1)
    metrics = {"reward": scores.mean().item(), **{f"reward_{k}": v for k, v in means.items()}}
    return -scores.mean(), metrics  # the loss an evaluation reports: lower is better
