"""bf16 training on a CPU that has it (CPU flags injected, so the suite means the same on any machine):
the plan `model.dtype: auto` makes, the fused bf16 LoRA path against PEFT's own bf16 path, its
adapter in plain PEFT, float32 attention and the float32 loss sum.

Tolerances: bf16 keeps 8 bits of mantissa, so the fused path is held to PEFT's bf16 path, not to
float32: loss within 1e-3 relative, each LoRA gradient within 10% (relative norm) of PEFT bf16's,
and no farther from the float32 gradients than 1.5x PEFT bf16's own distance (0.05, 0.09 and 0.08
measured on this tiny Llama).

Run as:
    pytest -q tests/test_bf16.py
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from helpers import arch_config
from smolora.config import load_config
from smolora.model import attention, precision
from smolora.model.fused import fuse_projections
from smolora.model.loss import chunked_lm_loss, head_cross_entropy
from smolora.train.speed import apply_fast_path, fast_path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def models(dtype: torch.dtype, n: int = 2, attn: str = "sdpa"):
    """`n` equal LoRA models of a tiny Llama, base in `dtype` (PEFT keeps LoRA in float32)."""
    torch.manual_seed(0)
    state = AutoModelForCausalLM.from_config(arch_config("llama"), dtype=torch.float32).state_dict()
    out = []
    for _ in range(n):
        copy = AutoModelForCausalLM.from_config(
            arch_config("llama"), dtype=torch.float32, attn_implementation=attn
        )
        copy.load_state_dict(state)
        torch.manual_seed(1)
        settings = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
        out.append(get_peft_model(copy.to(dtype), settings))
    return out


def ids_and_labels():
    torch.manual_seed(2)
    ids = torch.randint(0, 300, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100
    return ids, labels


def loss_and_grads(model):
    ids, labels = ids_and_labels()
    model.zero_grad()
    total, n = chunked_lm_loss(model, ids, None, labels)
    (total / n).backward()
    return float(total.detach() / n), {
        k: p.grad.float() for k, p in model.named_parameters() if p.requires_grad
    }


def distance(got: dict, want: dict) -> float:
    return max(float((got[k] - want[k]).norm() / want[k].norm()) for k in want)


@pytest.mark.parametrize(
    ("flags", "overrides", "compute", "fuse", "attn"),
    [
        ({"avx512f", "avx512_bf16"}, [], "bfloat16", True, "sdpa_float32"),
        ({"amx_bf16"}, [], "bfloat16", True, "sdpa_float32"),
        ({"avx2", "fma"}, [], "float32", False, None),  # no native bf16: today's float32 path
        ({"avx512_bf16"}, ["model.dtype=float32"], "float32", False, None),  # the user's word wins
        ({"avx512_bf16"}, ["lora.method=full"], "float32", False, None),  # trains the base itself
        ({"avx512_bf16"}, ["train.fuse_projections=false"], "bfloat16", False, "sdpa_float32"),
    ],
)
def test_plan_per_detected_cpu_flags(monkeypatch, flags, overrides, compute, fuse, attn):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    plan = fast_path(load_config(None, overrides), "cpu")
    assert (plan["compute"], plan["fuse"], plan["attention"]) == (compute, fuse, attn)
    assert plan["bf16"] is False  # the Trainer's autocast is for CUDA; a CPU stores the base in bf16
    dtype, why = precision.choose_dtype("auto", "cpu", training=True)
    assert (dtype == torch.bfloat16) == bool(precision.cpu_bf16(flags)) and "auto: CPU" in why
    assert precision.choose_dtype("auto", "cpu")[0] == torch.float32  # inference: float32 everywhere on a CPU


def test_fused_bf16_path_matches_peft_bf16():
    (want32,) = models(torch.float32, n=1)
    plain, fused = models(torch.bfloat16)
    assert {p.dtype for p in fused.parameters() if p.requires_grad} == {torch.float32}  # LoRA masters
    assert fuse_projections(fused) == 16
    loss32, grads32 = loss_and_grads(want32.train())
    loss, grads = loss_and_grads(plain.train())
    got, got_grads = loss_and_grads(fused.train())
    assert got == pytest.approx(loss, rel=1e-3) and got == pytest.approx(loss32, rel=1e-2)
    assert distance(got_grads, grads) < 0.1
    assert distance(got_grads, grads32) < 1.5 * distance(grads, grads32)
    assert all(p.grad.dtype == torch.float32 for p in fused.parameters() if p.requires_grad)  # AdamW's


def test_adapter_from_fused_bf16_path_loads_in_plain_peft(tmp_path):
    (fused,) = models(torch.bfloat16, n=1)
    fuse_projections(fused)
    opt = torch.optim.SGD([p for p in fused.parameters() if p.requires_grad], lr=0.1)
    loss_and_grads(fused.train())
    opt.step()  # trained through the fused bf16 path
    fused.save_pretrained(str(tmp_path / "adapter"))
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(arch_config("llama"), dtype=torch.float32).to(torch.bfloat16)
    fresh = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    ids, _ = ids_and_labels()
    with torch.no_grad():
        want = fused.eval()(input_ids=ids).logits.float()
        got = fresh(input_ids=ids).logits.float()
    # PEFT computes LoRA in float32 where the fused path used bf16: one bf16 rounding apart
    assert torch.allclose(got, want, atol=0.05 * float(want.abs().max()))
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9


def test_float32_attention_equals_float32_sdpa_and_keeps_bf16_out():
    (m32,) = models(torch.float32, n=1)
    (m16,) = models(torch.bfloat16, n=1)
    ids, labels = ids_and_labels()
    with torch.no_grad():
        want = m32(input_ids=ids).logits
        before = m16(input_ids=ids).logits.float()
    assert attention.use_float32_attention(m16) is True
    assert m16.get_base_model().config._attn_implementation == attention.NAME
    from transformers.integrations import sdpa_attention

    seen = []
    real = sdpa_attention.sdpa_attention_forward
    with pytest.MonkeyPatch.context() as mp:  # transformers' own sdpa runs, on float32 q, k, v
        mp.setattr(
            sdpa_attention, "sdpa_attention_forward", lambda *a, **k: seen.append(a[1].dtype) or real(*a, **k)
        )
        out = m16(input_ids=ids, labels=labels)
    assert seen == [torch.float32] * 4 and out.logits.dtype == torch.bfloat16  # once per layer
    assert float((out.logits.float() - want).abs().max()) <= float((before - want).abs().max()) * 1.5 + 1e-2
    out.loss.backward()
    assert all(p.grad is not None for p in m16.parameters() if p.requires_grad)
    (eager,) = models(torch.bfloat16, n=1, attn="eager")
    assert attention.use_float32_attention(eager) is False  # not sdpa: left as it is


def test_apply_fast_path_drops_float32_attention_where_the_model_is_not_sdpa(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    plan = fast_path(load_config(None, ["train.fuse_projections=false"]), "cpu")
    (eager,) = models(torch.bfloat16, n=1, attn="eager")
    apply_fast_path(eager, plan)
    assert plan["attention"] is None


def test_loss_sum_is_float32_for_bf16_hidden():
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 300, bias=False).to(torch.bfloat16)
    hidden = torch.randn(1000, 32, dtype=torch.bfloat16)
    targets = torch.randint(0, 300, (1000,))
    total = head_cross_entropy(hidden, head, targets)
    want = torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum")
    # a bf16 sum of ~5,700 would move in steps of 32: float32 keeps the logged loss exact
    assert total.dtype == torch.float32 and float(total) == pytest.approx(float(want), rel=1e-4)
