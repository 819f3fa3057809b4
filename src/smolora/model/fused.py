"""Fewer, larger matmuls: the LoRA projections that read the same input, computed as one group.

q, k and v (and gate and up) read the same hidden states, and PEFT runs each as its own frozen
matmul plus its own LoRA pair. `fuse_projections` keeps each group's frozen weights in one
tensor (each module's weight becomes a view of its rows, so memory does not double) and lets
the first member called compute the whole group: one base matmul; one matmul for the stacked
LoRA A's when the LoRA dropout is the identity (p=0, or eval mode), else each A on its own
dropped-out input (independent masks, drawn in PEFT's order, so the same seed gives the same
masks); then each module's own B and scale, in one addmm on its slice of the base result (no
separate multiply and add passes; o_proj and down_proj get this as groups of one). The other
members take their result when they are called with the very same input tensor (anything
else: the group is computed again for it).
The parameters stay the modules' own: gradients land in each lora_A / lora_B, and the saved
adapter is PEFT's, key for key.

With a bf16 base the LoRA matmuls run in bf16 on casts of the float32 LoRA weights (autocast's
numbers, not PEFT's float32 LoRA path): 1.16x a bf16 step on a 2-core EPYC (docs/benchmarks.md).

Only what is exactly PEFT's vanilla LoRA is fused. DoRA and other variants, lora_bias, fan_in_fan_out,
quantized or non-Linear base layers, trainable base weights and mixed dtypes are never grouped;
a merged or disabled adapter, several active adapters, extra forward arguments, or a weight that
no longer sits in the group tensor (moved by .to(), replaced by a merge) run PEFT's own forward.

Element-wise fusion is not here: torch 2.13's F.rms_norm on a CPU runs the same pow/mean/rsqrt/mul
ops as the model's own RMSNorm (same op counts in the profile, the same numbers bit for bit, no
time saved), and torch has no fused SiLU-and-multiply for CPU tensors.

Run as:
    groups = fuse_projections(model)     # after get_peft_model; 0 when there is nothing to fuse
    unfuse_projections(model)            # plain PEFT modules again, each weight its own tensor
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Sibling projections that read the same input in the decoder blocks of Llama, Qwen, Mistral, Gemma.
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
GROUP_ATTR = "smolora_fused_group"


@dataclass
class Group:
    """One fused group: its members in call order, the fused frozen weight/bias, and the results
    computed for `x` that members not yet called will take."""

    modules: list[nn.Module]
    adapter: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    sizes: list[int]
    x: torch.Tensor | None = None
    pending: dict[int, torch.Tensor] = field(default_factory=dict)


def _lora_linear(module: nn.Module) -> str | None:
    """The adapter name when `module` is PEFT's plain LoRA Linear that can be grouped, else None."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if type(module) is not LoraLinear or type(module.base_layer) is not nn.Linear:
        return None
    active = list(module.active_adapters)
    if len(active) != 1 or module.fan_in_fan_out or module.merged:
        return None
    name = active[0]
    if name not in module.lora_A or name in module.lora_variant or module.use_dora.get(name, False):
        return None
    if module.lora_B[name].bias is not None or module.base_layer.weight.requires_grad:
        return None  # lora_bias, or a base being trained (its gradient would need the views)
    return name


def _make_group(members: list[nn.Module], adapter: str) -> Group | None:
    weights = [m.base_layer.weight for m in members]
    biases = [m.base_layer.bias for m in members]
    sizes = [w.shape[0] for w in weights]
    if len(members) == 1:  # a group of one keeps its own parameters
        return Group(members, adapter, weights[0], biases[0], sizes)
    same = {(w.dtype, w.device, w.shape[1]) for w in weights}
    if len(same) != 1 or len({b is None for b in biases}) != 1:
        return None  # one tensor needs one dtype, device and input size; bias on all or none
    with torch.no_grad():
        weight = torch.cat([w.detach() for w in weights])
        bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
    start = 0
    for m, n in zip(members, sizes, strict=True):
        # Each module's weight becomes a view of its rows of the fused tensor: the old ones are freed.
        m.base_layer.weight = nn.Parameter(weight[start : start + n], requires_grad=False)
        if bias is not None:
            m.base_layer.bias = nn.Parameter(bias[start : start + n], requires_grad=False)
        start += n
    return Group(members, adapter, weight, bias, sizes)


def fuse_projections(model: nn.Module) -> int:
    """Group the sibling LoRA projections of every block in place (every other plain LoRA Linear
    becomes a group of one); returns how many groups."""
    fused = 0
    for parent in list(model.modules()):
        children = dict(parent.named_children())
        for names in GROUPS:
            found = [children[n] for n in names if n in children and not hasattr(children[n], GROUP_ATTR)]
            members = [m for m in found if _lora_linear(m) is not None]  # k_proj may not be a target
            adapters = {_lora_linear(m) for m in members}
            if len(members) < 2 or len(adapters) != 1:
                continue
            group = _make_group(members, adapters.pop())
            if group is None:
                continue
            _install(group)
            fused += 1
    for module in list(model.modules()):  # o_proj, down_proj, ...: a group of one still saves two passes
        adapter = None if hasattr(module, GROUP_ATTR) else _lora_linear(module)
        if adapter is not None and (group := _make_group([module], adapter)) is not None:
            _install(group)
            fused += 1
    return fused


def _install(group: Group) -> None:
    for i, m in enumerate(group.modules):
        setattr(m, GROUP_ATTR, group)
        m.forward = functools.partial(_member_forward, group, i)  # the instance's own forward


def unfuse_projections(model: nn.Module) -> int:
    """Undo `fuse_projections`: PEFT's forward and a weight of its own (a copy) for each module;
    returns how many groups there were."""
    groups = {id(g): g for m in model.modules() if (g := getattr(m, GROUP_ATTR, None)) is not None}
    for group in groups.values():
        for m in group.modules:
            del m.forward  # the class's forward again
            delattr(m, GROUP_ATTR)
            base = m.base_layer
            if len(group.modules) == 1:
                continue  # its parameters were never replaced
            base.weight = nn.Parameter(base.weight.detach().clone(), requires_grad=False)
            if base.bias is not None:
                base.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        group.x, group.pending = None, {}
    return len(groups)


def _in_place(group: Group) -> bool:
    """Every member still plain, on this adapter, its weight still the view of the group tensor."""
    start = 0
    item = group.weight.element_size() * group.weight.shape[1]
    for m, n in zip(group.modules, group.sizes, strict=True):
        w = m.base_layer.weight
        if m.disable_adapters or m.merged or list(m.active_adapters) != [group.adapter]:
            return False
        if w.data_ptr() != group.weight.data_ptr() + start * item or w.shape != (n, group.weight.shape[1]):
            return False
        start += n
    return True


def _member_forward(group: Group, index: int, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    module = group.modules[index]
    if args or kwargs or not _in_place(group):
        group.x, group.pending = None, {}
        return type(module).forward(module, x, *args, **kwargs)  # PEFT's own path
    if group.x is x and index in group.pending:
        out = group.pending.pop(index)
        if not group.pending:
            group.x = None
        return out
    outs = _group_forward(group, x)
    group.x, group.pending = x, {i: o for i, o in enumerate(outs) if i != index}
    return outs[index]


def _identity(dropout: nn.Module) -> bool:
    return isinstance(dropout, nn.Identity) or not dropout.training or getattr(dropout, "p", None) == 0


def _group_forward(group: Group, x: torch.Tensor) -> list[torch.Tensor]:
    """Each member's PEFT result, base(x) + B(A(dropout(x))) * scale, with one base matmul.

    B and its scale go into one addmm on the base's slice: no separate multiply and add passes
    over the output (PEFT's `lora_B(...) * scaling`, then `result + ...`).
    """
    a, mods = group.adapter, group.modules
    lead, x = x.shape[:-1], x.reshape(-1, x.shape[-1])
    base = F.linear(x, group.weight, group.bias)
    # split, not slicing: its backward is one cat instead of one zero-filled full tensor per member.
    parts = base.split(group.sizes, dim=-1) if len(mods) > 1 else (base,)
    # A bf16 base computes the LoRA pair in bf16 too, on casts of its float32 weights (as autocast
    # would; their gradients and AdamW stay float32): the float32 LoRA path cost 16% of a bf16 step
    # in casts of x and skinny float32 matmuls. PEFT's own forward casts x to float32 instead.
    low16 = x.dtype in (torch.bfloat16, torch.float16)
    dtype = x.dtype if low16 else mods[0].lora_A[a].weight.dtype
    xa = x if low16 else mods[0]._cast_input_dtype(x, dtype)
    if all(_identity(m.lora_dropout[a]) for m in mods):
        weights = [m.lora_A[a].weight for m in mods]
        stacked = torch.cat(weights) if len(weights) > 1 else weights[0]  # r_i x in each: tiny
        lows = F.linear(xa, stacked.to(dtype)).split([w.shape[0] for w in weights], dim=-1)
    else:  # each A sees its own dropout mask, drawn in the order PEFT draws them
        lows = [F.linear(m.lora_dropout[a](xa), m.lora_A[a].weight.to(dtype)) for m in mods]
    outs = []
    for m, part, low in zip(mods, parts, lows, strict=True):
        b = m.lora_B[a].weight.t().to(dtype)
        out = torch.addmm(part.to(low.dtype), low, b, alpha=m.scaling[a])
        outs.append(out.to(base.dtype).view(*lead, -1))
    return outs
