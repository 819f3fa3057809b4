"""The fast training path, chosen per device, and the tricks it is made of.

What the profiler shows on a CPU (fp32, SmolLM2-135M, LoRA r=16 on all 7 projections):
after the base matmuls, the largest single cost of a PEFT training step is `nn.Dropout`
on the LoRA inputs: `bernoulli_` draws one random number per input element (~25 ms for a
4 x 150 x 576 tensor on one core, 210 times per step). `sparse_dropout` draws only the
*positions* of the dropped elements: with a Poisson(-n log(1-p)) count of uniform positions,
each element is dropped independently with probability exactly p (Poisson splitting), for
about p of the random numbers.

`fast_path(cfg, device)` decides, per device, how batches are built, whether to compute in
bf16 and which optional kernels are used, and returns a plain dict: the recipe logs it and
builds its TrainingArguments from it, so each of these is decided here once.

Run as:
    plan = fast_path(cfg, "cpu")     # {"batching": "bucketed", "dropout": "sparse", ...}
    model = apply_fast_path(model, plan)
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from typing import Any

import torch
from torch import nn

from smolora.config import RunConfig
from smolora.model.activations import pack_saved_activations
from smolora.model.attention import use_float32_attention
from smolora.model.fused import fuse_projections
from smolora.model.load import pick_dtype

log = logging.getLogger("smolora")
# Where `train.fuse_projections: auto` fuses in float32: only where measured not slower
# (docs/benchmarks.md); in bf16 on a CPU it does (pick_fusion). Float32 nowhere yet: on a 2-core AVX-512 Xeon (no bf16) the whole bench step ran 0.84-1.0x unfused
# (three idle pairs: 176.6 vs 177.0, 161.9 vs 188.4, 175.5 vs 208.5 real tokens/s), CUDA unmeasured.
FUSE_AUTO_DEVICES: tuple[str, ...] = ()


# --- dropout that draws p*n random numbers instead of n ----------------------------------------


class _DropAt(torch.autograd.Function):
    """x * scale with the elements at flat positions `idx` set to zero (and their gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, idx: torch.Tensor, scale: float) -> torch.Tensor:
        out = (x * scale).contiguous()
        out.view(-1).index_fill_(0, idx, 0.0)
        ctx.save_for_backward(idx)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        out = (grad * ctx.scale).contiguous()
        out.view(-1).index_fill_(0, idx, 0.0)
        return out, None, None


def dropped_positions(n: int, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Flat positions to drop so that each of n elements is dropped independently with prob. p.

    A Poisson(lam) number of uniform draws hits each position Poisson(lam/n) times,
    independently; with lam = -n log(1-p) a position is hit at least once with prob. p.
    Repeated positions are harmless (index_fill).
    """
    lam = -n * math.log1p(-p)
    k = int(torch.poisson(torch.tensor([lam], dtype=torch.float64)).item())
    return torch.randint(0, n, (k,), device=device)


def sparse_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Same distribution as `F.dropout(x, p, training)`, cheaper on CPU for small p."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    return _DropAt.apply(x, dropped_positions(x.numel(), p, x.device), 1.0 / (1.0 - p))


class SparseDropout(nn.Module):
    """Drop-in for nn.Dropout (same `p`, same train/eval behaviour)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_sparse_dropout(model: nn.Module) -> int:
    """Replace the nn.Dropout modules of PEFT's LoRA layers; returns how many were replaced.

    Only `lora_dropout` dicts are touched (dropout has no weights, saved adapters are the
    same). With dropout 0 PEFT already uses nn.Identity, so nothing is replaced.
    """
    replaced = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, nn.ModuleDict):
            continue
        for name, d in list(drops.items()):
            if type(d) is nn.Dropout and d.p > 0:
                drops[name] = SparseDropout(d.p).train(d.training)
                replaced += 1
    return replaced


# --- the plan ----------------------------------------------------------------------------------


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def flash_attention_ready(cfg: RunConfig, device: str) -> bool:
    """Packing pays off where attention reads row boundaries from position_ids without a mask."""
    return device == "cuda" and cfg.model.attn_implementation == "flash_attention_2"


def pick_batching(cfg: RunConfig, device: str) -> str:
    """bucketed unless flash-attention on CUDA allows packed.

    transformers' sdpa/eager attention honour packed rows only through a dense block-diagonal
    mask over the whole packed row (correct, but slower than bucketed padding on a CPU:
    measured, see docs/benchmarks.md), so `auto` never picks packed there; grouped
    (transformers' LengthGroupedSampler) and padded (random order) remain available by name.
    """
    if cfg.train.batching != "auto":
        return cfg.train.batching
    return "packed" if flash_attention_ready(cfg, device) else "bucketed"


def trains_adapter(cfg: RunConfig) -> bool:
    """An adapter on a frozen base: `model.dtype: auto` may then store the base in bf16 (full and
    freeze train the base's own weights, which stay float32 unless model.dtype says otherwise)."""
    return cfg.lora.method not in ("full", "freeze")


def compute_dtype(cfg: RunConfig, device: str) -> torch.dtype:
    return pick_dtype(cfg.model.dtype, device, training=trains_adapter(cfg))


def pick_fusion(cfg: RunConfig, device: str) -> bool:
    """train.fuse_projections: true fuses wherever it can be exact (model/fused.py falls back per
    module); auto on FUSE_AUTO_DEVICES and on a CPU computing in bf16 (measured faster there). Never for methods that
    are not vanilla LoRA, quantized or Unsloth models, compiled layers, or several processes."""
    setting = cfg.train.fuse_projections
    plain = cfg.lora.method in ("lora", "rslora") and cfg.model.backend == "hf"
    plain = plain and not (cfg.model.load_in_4bit or cfg.model.load_in_8bit or cfg.train.compile)
    alone = int(os.environ.get("WORLD_SIZE", "1")) <= 1  # FSDP/ZeRO reshape the weights: not measured
    if setting is False or not (plain and alone):
        return False
    bf16_cpu = device == "cpu" and compute_dtype(cfg, device) == torch.bfloat16
    return setting is True or device in FUSE_AUTO_DEVICES or bf16_cpu


def fast_path(cfg: RunConfig, device: str) -> dict[str, Any]:
    """What this run uses to go fast on `device`, as a plain dict (the recipe logs it)."""
    cuda = device == "cuda"
    dtype = compute_dtype(cfg, device)
    if cfg.lora.dropout == 0 or cfg.lora.method in ("full", "freeze"):
        dropout = "none"  # PEFT puts nn.Identity there when lora.dropout is 0
    elif cuda or cfg.train.compile:
        dropout = "native"  # one fused kernel on CUDA and inside a compiled graph
    else:
        dropout = "sparse"  # on CPU the eager dropout's random numbers are the bottleneck
    return {
        "device": device,
        "batching": pick_batching(cfg, device),
        "loss": "lm head + cross-entropy on labelled positions only, fused chunks",
        "dropout": dropout,
        "threads": torch.get_num_threads() if device == "cpu" else None,
        "compile": cfg.train.compile,
        "liger": cuda and cfg.train.liger and installed("liger_kernel"),
        "backend": cfg.model.backend,
        "fuse": pick_fusion(cfg, device),
        # Trainer's bf16 autocast: on a GPU with bf16 kernels, when the weights load in bf16.
        "bf16": cuda and torch.cuda.is_bf16_supported() and dtype == torch.bfloat16,
        "compute": str(dtype).removeprefix("torch."),
        # bf16 on a CPU: attention in float32 (torch's bf16 SDPA backward is slower there, model/attention.py)
        "attention": "sdpa_float32" if device == "cpu" and dtype == torch.bfloat16 else None,
        # Checkpointing is asked for to save memory: then also stop glibc's heap from keeping the
        # holes between activations (costs page faults, so only in this mode).
        "malloc": "mmap>=1MiB" if device == "cpu" and cfg.model.gradient_checkpointing else None,
        # Memory at full speed: fewer rows alive at once, and what they save kept in bf16.
        "micro_batch": cfg.train.micro_batch,
        "saved_activations": "bf16" if cfg.train.saved_activations == "bf16" else None,
    }


def apply_fast_path(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """Apply the model-side tricks of `plan` in place (batching is the trainer's business)."""
    if plan["dropout"] == "sparse":
        use_sparse_dropout(model)
    if plan.get("attention") == "sdpa_float32" and not use_float32_attention(model):
        plan["attention"] = None  # not an sdpa model (eager, flash-attention): left as it is
    if plan.get("fuse"):
        log.info("fused projections: %d groups (q,k,v and gate,up share an input)", fuse_projections(model))
    if plan["liger"]:
        use_liger(model)
    if plan["compile"]:
        compile_layers(model)
    if plan.get("malloc"):
        return_freed_memory()
    if plan.get("saved_activations") == "bf16":
        pack_saved_activations(model)
    return model


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """glibc: serve allocations >= `threshold` bytes with mmap, so freed activations go back to
    the OS at once instead of leaving holes in the heap (measured: peak RSS of one SmoLoRA step
    at 8 x 431 tokens with checkpointing 5.1 -> 1.8 GB; without checkpointing 10.2 -> 6.6 GB,
    but 40% more CPU time from page faults, hence only in the memory-saving mode).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD (fixed: no dynamic raise)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False


def compile_layers(model: nn.Module) -> int:
    """torch.compile each decoder layer in place; returns how many.

    The layers, not the whole model: our loss calls the decoder directly (see loss.py), which
    would bypass a compiled wrapper. Sequence lengths change from batch to batch, so the
    layers are compiled for dynamic shapes once instead of once per length.
    """
    from smolora.model.surgery import decoder_layers

    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def use_liger(model: nn.Module) -> bool:
    """Liger's Triton kernels for RMSNorm, RoPE and SwiGLU (CUDA only); our own loss stays."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        _apply_liger_kernel_to_instance(
            model=base,
            rms_norm=True,
            rope=True,
            swiglu=True,
            cross_entropy=False,
            fused_linear_cross_entropy=False,
        )
    except Exception as e:  # an architecture Liger does not know: keep the plain modules
        log.warning("liger kernels not applied (%s)", e)
        return False
    return True
