"""Keep what the decoder layers save for backward in bfloat16 instead of float32.

Without checkpointing, a float32 step keeps about 56 KB per token per decoder layer for
backward (docs/benchmarks.md, "Memory"): the inputs of every LoRA matmul, the SwiGLU's
gate and up outputs, attention's q, k, v and output. Stored as bf16 they take half of that,
and the matmuls still run in float32 on weights that never leave float32: each saved tensor
is rounded once when the forward pass saves it and widened back when backward reads it
(the same rounding bf16 autocast applies to every activation, here only to the stored copy).

Only large float32 tensors inside decoder layers are packed: frozen and trainable weights
(and views of them) are saved as they are, and so is everything of the loss head (its
gradient is computed in the forward pass, model/loss.py). One activation is often saved by
several ops (the normed hidden state by q, k and v): it is packed once per forward pass.

Run as:
    handles, packer = pack_saved_activations(model)   # forward hooks on each decoder layer
    ...train...
    for h in handles: h.remove()
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

MIN_ELEMENTS = 32 * 1024  # smaller tensors (norm statistics, masks) are not worth a cast
PACKED = object()  # tags what pack() rounded, so unpack() widens only those


class _Packer:
    """The saved_tensors_hooks pair, entered for each decoder layer's forward pass; its cache
    lives for one layer (layers run one after another, so depth is 0 or 1 unless one nests)."""

    def __init__(self, min_elements: int = MIN_ELEMENTS) -> None:
        self.min_elements = min_elements
        self.packed = 0  # tensors stored as bf16 so far (what the tests count)
        self.weights: set[int] = set()
        self.cache: dict[tuple, tuple[weakref.ref, torch.Tensor]] = {}
        self.depth = 0
        self.hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def pack(self, t: torch.Tensor) -> Any:
        if (
            t.dtype != torch.float32
            or t.numel() < self.min_elements
            or t.untyped_storage().data_ptr() in self.weights
        ):
            return t
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t._version)
        hit = self.cache.get(key)
        # The weakref proves the cached copy is of this very tensor, not of one that was freed
        # and whose memory now holds another tensor of the same shape.
        if hit is not None and hit[0]() is not None:
            return hit[1]
        packed = (PACKED, t.to(torch.bfloat16))  # marked: a tensor that was bf16 already stays bf16
        self.packed += 1
        self.cache[key] = (weakref.ref(t), packed)
        return packed

    @staticmethod
    def unpack(t: Any) -> torch.Tensor:
        return t[1].float() if isinstance(t, tuple) and t[0] is PACKED else t

    def enter(self, module: nn.Module, args: Any) -> None:
        if not (torch.is_grad_enabled() and module.training):
            return
        if self.depth == 0:
            # The layer's own weights (read each pass: a reload or a merge replaces them).
            self.weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
            self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
            self.hooks.__enter__()
        self.depth += 1

    def leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.depth == 0:
            return
        self.depth -= 1
        if self.depth == 0 and self.hooks is not None:
            self.hooks.__exit__(None, None, None)
            self.hooks = None
            self.cache.clear()  # the autograd graph holds the packed copies from here on


def pack_saved_activations(model: nn.Module, min_elements: int = MIN_ELEMENTS) -> tuple[list[Any], _Packer]:
    """Store the float32 activations each decoder layer saves for backward as bf16; returns
    the hook handles (remove them to undo) and the packer (its `packed` count). No hooks for a
    model whose decoder layers are not found.
    """
    from smolora.errors import ModelError
    from smolora.model.surgery import decoder_layers

    try:
        layers = decoder_layers(model)
    except ModelError:
        return [], _Packer(min_elements)
    packer = _Packer(min_elements)
    handles = []
    for layer in layers:
        handles.append(layer.register_forward_pre_hook(packer.enter))
        handles.append(layer.register_forward_hook(packer.leave))
    return handles, packer
