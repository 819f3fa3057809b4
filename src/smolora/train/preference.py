"""The preference objectives' batches and losses: DPO (sigmoid, hinge, IPO), ORPO, SimPO and KTO.

A batch holds chosen and rejected (or, for KTO, each completion and its mismatched KL twin)
as one padded batch, so the policy runs once per step over both; sequence log-probabilities
come from the chunked lm head (model/loss.py), never a full logits tensor. DPO and KTO compare
with a reference: the policy as training found it (the base, or the SFT adapter it continues),
whose log-probabilities `add_reference_logps` computes once before training, so no second
model is held and no reference forward runs per step. The formulas are TRL's (1.16: DPOTrainer,
experimental ORPOTrainer and CPOTrainer with loss_type=simpo, KTOTrainer);
tests/test_objectives.py checks loss and gradients against TRL on the same batch.

Run as:
    collate = PreferenceCollator(tokenizer.pad_token_id, "pairs")
    loss, metrics = preference_loss(model, collate(rows), cfg.train)
"""

from __future__ import annotations

import logging
import time
from typing import Any

import datasets
import torch
import torch.nn.functional as F

from smolora.config import RunConfig, TrainSection
from smolora.data.collate import Collator, pad_batch
from smolora.data.preference import SHAPES
from smolora.model.loss import sequence_logps, token_logps

log = logging.getLogger("smolora")
REFERENCE = {"dpo", "kto"}  # the objectives that compare with a reference model


def _rows(rows: list[dict], prefix: str) -> list[dict]:
    return [{"input_ids": r[f"{prefix}input_ids"], "labels": r[f"{prefix}labels"]} for r in rows]


class PreferenceCollator:
    """Rows of data/preference.py's shapes -> one padded batch (pairs: chosen rows, then rejected)."""

    def __init__(self, pad_id: int, shape: str):
        self.pad_id, self.shape = pad_id, shape

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if self.shape == "prompts":
            return pad_prompts(rows, self.pad_id)
        if self.shape == "pairs":
            batch = pad_batch(_rows(rows, "chosen_") + _rows(rows, "rejected_"), self.pad_id)
            refs = ("ref_chosen", "ref_rejected")
        else:  # kto: each row's own completion, then its mismatched one
            batch = pad_batch(_rows(rows, "") + _rows(rows, "kl_"), self.pad_id)
            batch["label"] = torch.tensor([bool(r["label"]) for r in rows])
            refs = ("ref_logp", "ref_kl")
        for key in refs:
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.float32)
        return batch


def pad_prompts(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """GRPO's prompts, left-padded (generation continues from the right end), and their columns."""
    longest = max(len(r["prompt_ids"]) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["prompt_ids"])
        ids[i, longest - n :] = torch.as_tensor(r["prompt_ids"])
        mask[i, longest - n :] = 1
    return {
        "prompt_ids": ids,
        "prompt_mask": mask,
        "prompt": [r["prompt"] for r in rows],
        "columns": [r["columns"] for r in rows],
    }


# --- the losses, on per-sequence log-probabilities (summed over answer tokens; n = their count) ----


def dpo_losses(pc, pr, rc, rr, beta: float, loss_type: str = "sigmoid", nc=None, nr=None) -> torch.Tensor:
    """Per-pair DPO loss from policy (pc, pr) and reference (rc, rr) log-probabilities."""
    delta = (pc - rc) - (pr - rr)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type == "ipo":  # per-token averages, as TRL (and the IPO authors) normalise it
        ipo = (pc - rc) / nc.clamp(min=1.0) - (pr - rr) / nr.clamp(min=1.0)
        return (ipo - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown DPO loss_type {loss_type!r}")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2."""
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_losses(avg_c, avg_r, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(-beta * log sigmoid(log odds ratio), the log odds) from mean per-token log-probabilities."""
    log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))
    return -beta * F.logsigmoid(log_odds), log_odds


def simpo_losses(avg_c, avg_r, beta: float, gamma: float) -> torch.Tensor:
    """SimPO: -log sigmoid(beta * (avg_c - avg_r) - gamma), no reference."""
    return -F.logsigmoid(beta * ((avg_c - avg_r) - gamma / beta))


def kto_losses(logp, ref_logp, kl_logp, ref_kl, label, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row KTO loss, the KL estimate): good rows pulled above, bad rows pushed below the KL term."""
    kl = (kl_logp - ref_kl).mean().detach().clamp(min=0)
    ratio = logp - ref_logp
    good = 1 - torch.sigmoid(beta * (ratio - kl))
    bad = 1 - torch.sigmoid(beta * (kl - ratio))
    return torch.where(label, good, bad), kl


# --- one step ---------------------------------------------------------------------------------


def preference_loss(
    model, inputs: dict[str, Any], t: TrainSection, chunk: int = 1024, plain: bool = False
) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective's loss on one batch, and what to log (reward accuracy, margin, log-probabilities)."""
    beta = t.strength
    if t.objective == "kto":
        return _kto(model, inputs, beta, chunk, plain)
    if t.objective == "orpo":
        (pc, pr, nc, nr), nll = _orpo_logps(model, inputs, chunk, plain)
    else:
        logps, n = sequence_logps(
            model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"], chunk, plain
        )
        pc, pr = logps.chunk(2)
        nc, nr = n.chunk(2)
    metrics = {"logp_chosen": pc.detach().mean().item(), "logp_rejected": pr.detach().mean().item()}
    if t.objective == "dpo":
        rc, rr = _reference(inputs, "ref_chosen", "ref_rejected", pc, pr)
        loss = dpo_losses(pc, pr, rc, rr, beta, t.loss_type, nc, nr).mean()
        chosen, rejected = beta * (pc - rc).detach(), beta * (pr - rr).detach()
    elif t.objective == "orpo":
        avg_c, avg_r = pc / nc.clamp(min=1), pr / nr.clamp(min=1)
        odds, log_odds = orpo_losses(avg_c, avg_r, beta)
        loss = nll + odds.mean()
        chosen, rejected = beta * avg_c.detach(), beta * avg_r.detach()
        metrics.update(nll=nll.item(), log_odds=log_odds.detach().mean().item())
    elif t.objective == "simpo":
        avg_c, avg_r = pc / nc.clamp(min=1), pr / nr.clamp(min=1)
        loss = simpo_losses(avg_c, avg_r, beta, t.simpo_gamma).mean()
        chosen, rejected = beta * avg_c.detach(), beta * avg_r.detach()
    else:
        raise ValueError(f"preference_loss: {t.objective} is not a preference objective")
    if t.sft_weight and t.objective in ("dpo", "simpo"):  # RPO / CPO: SFT on the chosen answers, per token
        sft = -pc.sum() / nc.sum().clamp(min=1)
        loss = loss + t.sft_weight * sft
        metrics["sft_loss"] = sft.item()
    metrics.update(
        reward_accuracy=(chosen > rejected).float().mean().item(),
        reward_margin=(chosen - rejected).mean().item(),
        reward_chosen=chosen.mean().item(),
        reward_rejected=rejected.mean().item(),
    )
    return loss, metrics


def _orpo_logps(model, inputs, chunk, plain):
    """((chosen, rejected answer log-probabilities, their token counts), ORPO's SFT loss).

    The SFT term is the mean loss over the whole chosen sequence, prompt included, as TRL's ORPO
    (and the ORPO authors' code) train it; the odds ratio only compares the answers. One pass:
    the chosen rows are scored at every real token, the answer tokens picked out of them.
    """
    ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    half = ids.shape[0] // 2
    scored = labels.clone()
    scored[:half] = ids[:half].masked_fill(mask[:half] == 0, -100)
    logp, rows = token_logps(model, ids, mask, scored, chunk, plain)
    answer = (labels[:, 1:] != -100)[scored[:, 1:] != -100]  # row-major, as token_logps returns them
    zeros = torch.zeros(ids.shape[0], dtype=logp.dtype, device=logp.device)
    total = zeros.index_add(0, rows[answer], logp[answer])
    count = zeros.index_add(0, rows[answer], torch.ones_like(logp[answer]))
    chosen = rows < half
    nll = -logp[chosen].sum() / chosen.sum().clamp(min=1)
    return (*total.chunk(2), *count.chunk(2)), nll


def _reference(inputs: dict[str, Any], a: str, b: str, pa, pb) -> tuple[torch.Tensor, torch.Tensor]:
    if a not in inputs:
        raise RuntimeError("reference log-probabilities missing: add_reference_logps runs before training")
    return inputs[a].to(pa), inputs[b].to(pb)


def _kto(model, inputs, beta, chunk, plain) -> tuple[torch.Tensor, dict[str, float]]:
    ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    half = ids.shape[0] // 2
    logp, _ = sequence_logps(model, ids[:half], mask[:half], labels[:half], chunk, plain)
    with torch.no_grad():  # the KL term is an estimate, not something to push on (TRL detaches it too)
        kl_logp, _ = sequence_logps(model, ids[half:], mask[half:], labels[half:], chunk, plain)
    ref_logp, ref_kl = _reference(inputs, "ref_logp", "ref_kl", logp, kl_logp)
    label = inputs["label"].to(logp.device)
    losses, kl = kto_losses(logp, ref_logp, kl_logp, ref_kl, label, beta)
    rewards = beta * (logp - ref_logp).detach()
    metrics = {"kl": kl.item()}
    if label.any():
        metrics["reward_chosen"] = rewards[label].mean().item()
    if (~label).any():
        metrics["reward_rejected"] = rewards[~label].mean().item()
    return losses.mean(), metrics


@torch.no_grad()
def add_reference_logps(
    model, dataset: datasets.Dataset, shape: str, pad_id: int, batch_size: int = 8, chunk: int = 1024
):
    """`dataset` with the reference log-probabilities (ref_chosen/ref_rejected, or ref_logp/ref_kl) of
    the model as it is now: before training, that is the starting policy."""
    if dataset is None or shape not in ("pairs", "kto"):
        return dataset
    was_training = model.training
    model.eval()
    collate = PreferenceCollator(pad_id, shape)
    first, second = [], []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            device = next(model.parameters()).device
            logps, _ = sequence_logps(
                model,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                batch["labels"].to(device),
                chunk,
            )
            a, b = logps.float().cpu().chunk(2)
            first += a.tolist()
            second += b.tolist()
    finally:
        model.train(was_training)
    names = ("ref_chosen", "ref_rejected") if shape == "pairs" else ("ref_logp", "ref_kl")
    for name in names:
        if name in dataset.column_names:
            dataset = dataset.remove_columns(name)
    return dataset.add_column(names[0], first).add_column(names[1], second)


def collator(cfg: RunConfig, pad_id: int, plan: dict[str, Any]):
    if cfg.train.objective == "sft":
        return Collator(pad_id, packed=plan["batching"] == "packed")
    return PreferenceCollator(pad_id, SHAPES[cfg.train.objective])


def reference_logps(model, data, cfg: RunConfig, pad_id: int):
    """DPO / KTO compare with the policy as training finds it: computed here once, not held as a copy."""
    t0 = time.perf_counter()
    for split in ("train", "val"):
        rows = getattr(data, split)
        setattr(
            data,
            split,
            add_reference_logps(model, rows, data.format, pad_id, cfg.train.batch_size, cfg.train.loss_chunk),
        )
    log.info(
        "reference log-probabilities of %d rows in %.1f s",
        data.stats["n_train"] + data.stats["n_val"],
        time.perf_counter() - t0,
    )
    return data
