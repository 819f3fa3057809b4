"""SDPA with q, k and v upcast to float32, for bf16 training on a CPU.

torch 2.13's CPU flash-attention kernel runs its backward in bf16 1.8x slower than in float32
(SmolLM2-135M, 8 x 9 heads x 140 tokens, 2-core EPYC with avx512_bf16: 620 vs 339 ms a step over
30 layers), while the projections around it are 2-2.5x faster in bf16. So a bf16 model on a CPU
computes attention in float32: three casts in, one out, the same kernel and mask as transformers'
own "sdpa" (and float32's accuracy for the softmax). A whole bench step: 1.11x.

Registered with transformers under its own name, with the sdpa mask builder, so models pick it
with `set_attn_implementation` and nothing else in their code changes.

Run as:
    use_float32_attention(model)   # True when the model ran "sdpa" and now runs "sdpa_float32"
"""

from __future__ import annotations

from torch import nn

NAME = "sdpa_float32"


def sdpa_float32(module: nn.Module, query, key, value, attention_mask, *args, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = query.dtype
    out, weights = sdpa_attention_forward(
        module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs
    )
    return out.to(dtype), weights


def use_float32_attention(model: nn.Module) -> bool:
    """Switch a model that runs transformers' sdpa attention to sdpa_float32; False when it does not
    run sdpa (eager, flash-attention: left as they are) or has no set_attn_implementation."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(
        base, "set_attn_implementation"
    ):
        return False
    AttentionInterface.register(NAME, sdpa_float32)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    base.set_attn_implementation(NAME)
    return True
