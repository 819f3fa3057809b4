"""Causal-LM loss that never builds the full logits tensor.

The plain path computes `batch x seq x vocab` logits (8 x 512 x 49,152 floats = 800 MB,
plus as much again for its gradient) and throws most of them away: prompt and padding
positions have no label. Here the decoder runs once, the hidden states at labelled
positions are gathered, and the lm head + cross-entropy run on them in chunks. Each
chunk's gradient (softmax - one-hot, times the head) is computed right away in the
forward pass, so backward is one multiplication and only one chunk of logits is ever
alive: no recomputation (as activation checkpointing would need) and no upcast copy of
the logits (float32 stays float32; bf16 logits are upcast one chunk at a time).

Run as:
    loss_sum, n = chunked_lm_loss(model, input_ids, attention_mask, labels, chunk=1024)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# A chunk's float32 logits stay under glibc's 32 MiB mmap ceiling, so each chunk reuses the heap
# block the previous one freed; a fresh mmap per chunk page-faults its way in (SmolLM2's lm head,
# 574 labelled rows, bf16 on a 2-core EPYC: 372 ms at 1,024 rows a chunk, 258 ms at 128).
CHUNK_BYTES = 24 << 20


def split_lm(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(decoder, lm_head) of a causal LM, looking through PEFT wrappers; None if unknown."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder = getattr(base, "get_decoder", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    decoder = get_decoder() if get_decoder else None
    if decoder is None or head is None or decoder is base or not isinstance(head, nn.Linear):
        return None
    return decoder, head


class _HeadCrossEntropy(torch.autograd.Function):
    """sum_i CE(softcap(h_i W^T + b), y_i), with the gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int, softcap: float | None):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        # float32 or wider for the softmax and the sums; bf16/fp16 are upcast one chunk at a time.
        acc = torch.promote_types(hidden.dtype, torch.float32)
        grad_w = torch.zeros_like(weight, dtype=acc) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=acc) if need_b else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        chunk = chunk_rows(chunk, weight.shape[0])
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start : start + chunk], targets[start : start + chunk]
            logits, capped = _logits(h, weight, bias, softcap, acc)
            probs, logp = _softmax_logp(logits, y)
            total -= logp.sum()
            if not (need_h or need_w or need_b):
                continue
            # d(sum CE)/d logits = softmax - one_hot, built in the softmax buffer.
            grad = probs
            grad[torch.arange(len(y), device=y.device), y] -= 1.0
            if softcap:
                grad *= 1.0 - capped.to(acc) ** 2
            grad = grad.to(hidden.dtype)
            if need_h:
                grad_h[start : start + chunk] = grad @ weight
            if need_w:
                grad_w += (grad.t() @ h).to(acc)
            if need_b:
                grad_b += grad.sum(0).to(acc)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.param_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_out
        return (
            (grad_h * scale.to(grad_h.dtype)) if grad_h is not None else None,
            (grad_w * scale).to(ctx.param_dtype) if grad_w is not None else None,
            (grad_b * scale).to(ctx.param_dtype) if grad_b is not None else None,
            None,
            None,
            None,
        )


def head_cross_entropy(
    hidden: torch.Tensor,
    head: nn.Linear,
    targets: torch.Tensor,
    chunk: int = 1024,
    softcap: float | None = None,
) -> torch.Tensor:
    """Summed cross-entropy of `head(hidden)` against `targets` (rows: positions), in chunks.

    Float32 (or wider) whatever the hidden dtype: a bf16 sum of a batch's token losses (~10^3)
    keeps 8 bits, so the logged loss would move in steps of ~0.3%."""
    return _HeadCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk, softcap)


def chunked_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    chunk: int = 1024,
    position_ids: torch.Tensor | None = None,
    plain: bool = False,
) -> tuple[torch.Tensor, int]:
    """Sum of token losses over labelled positions (next-token shifted) and their count.

    `plain=True` runs the model's own forward: FSDP and DeepSpeed gather sharded weights in the
    wrapper's forward hooks, which calling the decoder directly would skip.
    """
    parts = None if plain else split_lm(model)
    if parts is None:  # unknown architecture: the plain path, same numbers, more memory
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        targets = labels[:, 1:]
        # float32 logits: a bf16 sum of the token losses would move the loss in steps of ~0.3%
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="sum", ignore_index=-100
        )
        return loss, int((targets != -100).sum())
    decoder, head = parts
    # A batch without padding needs no mask: SDPA then takes its faster causal kernel.
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    hidden = decoder(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    selected = hidden[:, :-1][keep]
    n = selected.shape[0]
    if n == 0:  # nothing to learn in this batch; keep the graph so backward() still works
        return hidden.sum() * 0.0, 0
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return head_cross_entropy(selected, head, targets[keep], chunk, softcap), n


class _HeadLogProb(torch.autograd.Function):
    """log softmax(h_i W^T + b)[y_i] per row i, for the preference objectives' sequence log-probabilities.

    Their loss weighs each row's log-probability differently, so unlike _HeadCrossEntropy the
    gradient needs the incoming per-row weights. With the head frozen (every adapter) the
    per-row gradient of h is computed in forward, chunk by chunk, and only scaled in backward;
    with a trainable head (full fine-tuning) backward recomputes each chunk's logits instead.
    `temperature` divides the (soft-capped) logits: GRPO scores answers under the distribution
    it sampled them from, as TRL does.
    """

    @staticmethod
    def forward(
        ctx, hidden, weight, bias, targets, chunk: int, softcap: float | None, temperature: float = 1.0
    ):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = torch.promote_types(hidden.dtype, torch.float32)
        early = need_h and not (need_w or need_b)
        grad_h = torch.empty_like(hidden) if early else None
        out = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)
        chunk = chunk_rows(chunk, weight.shape[0])
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start : start + chunk], targets[start : start + chunk]
            logits, capped = _logits(h, weight, bias, softcap, acc, temperature)
            probs, out[start : start + chunk] = _softmax_logp(logits, y)
            if early:
                grad_h[start : start + chunk] = (
                    _dlogp_dlogits(probs, y, capped, acc, temperature).to(hidden.dtype) @ weight
                )
        ctx.early, ctx.chunk, ctx.softcap, ctx.temperature = early, chunk, softcap, temperature
        ctx.save_for_backward(grad_h if early else hidden, weight, bias, targets)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        saved, weight, bias, targets = ctx.saved_tensors
        if ctx.early:
            return saved * grad_out[:, None].to(saved.dtype), None, None, None, None, None, None
        hidden, acc = saved, torch.promote_types(saved.dtype, torch.float32)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=acc) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=acc) if need_b and bias is not None else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            h, y = hidden[start : start + ctx.chunk], targets[start : start + ctx.chunk]
            logits, capped = _logits(h, weight, bias, ctx.softcap, acc, ctx.temperature)
            grad = _dlogp_dlogits(torch.softmax(logits, dim=-1), y, capped, acc, ctx.temperature)
            grad = grad * grad_out[start : start + ctx.chunk, None]
            grad = grad.to(hidden.dtype)
            if need_h:
                grad_h[start : start + ctx.chunk] = grad @ weight
            if grad_w is not None:
                grad_w += (grad.t() @ h).to(acc)
            if grad_b is not None:
                grad_b += grad.sum(0).to(acc)

        def cast(g):
            return g.to(weight.dtype) if g is not None else None

        return grad_h, cast(grad_w), cast(grad_b), None, None, None, None


def _logits(h, weight, bias, softcap, acc, temperature: float = 1.0):
    logits = F.linear(h, weight, bias)
    capped = None
    if softcap:
        capped = torch.tanh(logits / softcap)
        logits = capped * softcap
    logits = logits.to(acc)
    return (logits / temperature if temperature != 1.0 else logits), capped


def chunk_rows(chunk: int, vocab: int) -> int:
    """At most `chunk` rows, and few enough that a chunk's float32 logits fit CHUNK_BYTES."""
    return max(1, min(chunk, CHUNK_BYTES // (4 * vocab)))


def _softmax_logp(logits, y):
    """(softmax of each row, log p(y) of each row) in one pass over the chunk's logits.

    log p(y) is read off the softmax (exact to float32's rounding) except where p(y) underflows
    to (near) zero: those rows take logit - logsumexp, so a confidently wrong token still counts."""
    probs = torch.softmax(logits, dim=-1)
    rows = torch.arange(len(y), device=y.device)
    p_y = probs[rows, y]
    logp = torch.log(p_y)
    tiny = p_y < torch.finfo(p_y.dtype).tiny * 2**20
    if bool(tiny.any()):
        logp[tiny] = logits[tiny, y[tiny]] - torch.logsumexp(logits[tiny], dim=-1)
    return probs, logp


def _dlogp_dlogits(probs, y, capped, acc, temperature: float = 1.0):
    """d log p(y) / d logits = (one_hot(y) - softmax) / T, built in the softmax buffer (its last use)."""
    grad = probs.neg_()
    grad[torch.arange(len(y), device=y.device), y] += 1.0
    if temperature != 1.0:
        grad /= temperature
    if capped is not None:
        grad *= 1.0 - capped.to(acc) ** 2
    return grad


def token_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    chunk: int = 1024,
    plain: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each labelled token, the row it belongs to): labelled positions only, in order.

    The preference objectives sum these per row (`sequence_logps`); GRPO weighs them per token,
    under its sampling temperature (the logits divided by it, after any soft-capping).
    """
    targets = labels[:, 1:]
    keep = targets != -100
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)[keep]
    parts = None if plain else split_lm(model)
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        logp = (
            torch.log_softmax(logits.float() / temperature, dim=-1)
            .gather(2, targets.clamp(min=0)[..., None])
            .squeeze(2)
        )
        return logp[keep], rows
    decoder, head = parts
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    selected = hidden[:, :-1][keep]
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    logp = _HeadLogProb.apply(selected, head.weight, head.bias, targets[keep], chunk, softcap, temperature)
    return logp, rows


def sequence_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    chunk: int = 1024,
    plain: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's labelled tokens, their count), one value per row."""
    logp, rows = token_logps(model, input_ids, attention_mask, labels, chunk, plain, temperature)
    n = labels.shape[0]
    total = torch.zeros(n, dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)
    count = torch.zeros(n, dtype=logp.dtype, device=logp.device).index_add(0, rows, torch.ones_like(logp))
    return total, count
