"""Causal-LM loss that never builds the full logits tensor.

The plain path computes `batch x seq x vocab` logits (8 x 512 x 49,152 floats = 800 MB,
plus as much again for its gradient) and throws most of them away: prompt and padding
positions have no label. Here the decoder runs once, the hidden states at labelled
positions are gathered, and the lm head + cross-entropy run on them in chunks under
activation checkpointing, so only one chunk of logits is alive at a time.

Run as:
    loss_sum, n = chunked_lm_loss(model, input_ids, attention_mask, labels, chunk=1024)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def split_lm(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(decoder, lm_head) of a causal LM, looking through PEFT wrappers; None if unknown."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder = getattr(base, "get_decoder", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    decoder = get_decoder() if get_decoder else None
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def _head_ce_sum(
    hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, softcap: float | None
) -> torch.Tensor:
    logits = head(hidden)
    if softcap:  # Gemma-style final logit soft-capping
        logits = torch.tanh(logits / softcap) * softcap
    # cross_entropy upcasts internally where it must; no float() copy of the logits here.
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    chunk: int = 1024,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Sum of token losses over labelled positions (next-token shifted) and their count."""
    parts = split_lm(model)
    if parts is None:  # unknown architecture: the plain path, same numbers, more memory
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        targets = labels[:, 1:]
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="sum", ignore_index=-100
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
    selected_targets = targets[keep]
    n = selected.shape[0]
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    total = hidden.new_zeros(())
    for start in range(0, n, chunk):
        h, y = selected[start : start + chunk], selected_targets[start : start + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            # Recompute this chunk's logits in backward instead of keeping them.
            total = total + checkpoint(_head_ce_sum, h, y, head, softcap, use_reentrant=False)
        else:
            total = total + _head_ce_sum(h, y, head, softcap)
    return total, n
