"""model/layout.py: frozen weights stored transposed give the same numbers, and the choice is what was asked or measured."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from helpers import arch_config, smolora_main
from smolora.model import layout
from smolora.model.layout import choose_layout, linears, relayout

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_lora():
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(arch_config("llama"), dtype=torch.float32)
    settings = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    return get_peft_model(base, settings).eval()


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_transposed_weights_give_the_same_logits_merged_and_unmerged():
    model = tiny_lora()
    ids = torch.randint(0, 300, (3, 9), generator=torch.Generator().manual_seed(1))
    before = logits(model, ids)
    values = {n: p.detach().clone() for n, p in model.named_parameters()}
    moved = relayout(model)
    assert moved == len(linears(model))  # every 2-D Linear weight, LoRA A/B and the head too
    q = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert not q.is_contiguous() and q.t().is_contiguous()
    for name, p in model.named_parameters():  # same values and shapes, only the strides differ
        assert torch.equal(p, values[name]), name
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-5, atol=1e-5)
    model.merge_adapter()  # PEFT's in-place merge keeps the layout and the numbers
    assert not q.is_contiguous()
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    assert torch.allclose(
        q, values["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"], atol=1e-6
    )
    # the tied input embedding reads the same rows from the transposed buffer
    emb = model.get_input_embeddings()
    assert torch.equal(emb(ids), torch.nn.functional.embedding(ids, emb.weight.contiguous()))


def test_an_adapter_saved_after_relayout_loads_in_plain_peft(tmp_path):
    model = tiny_lora()
    relayout(model)
    ids = torch.randint(0, 300, (2, 7), generator=torch.Generator().manual_seed(2))
    expected = logits(model, ids)
    model.save_pretrained(tmp_path / "adapter")
    torch.manual_seed(0)
    fresh = AutoModelForCausalLM.from_config(arch_config("llama"), dtype=torch.float32)
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(loaded, ids), expected, rtol=1e-5, atol=1e-5)


def test_choose_layout_does_what_was_asked_or_measured(monkeypatch):
    model = tiny_lora()
    q = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert choose_layout(model, "row") == "row-major (asked for)" and q.is_contiguous()
    monkeypatch.setattr(layout, "column_speedup", lambda *a: 1.0)  # measured: no gain
    assert (
        choose_layout(model, "auto").startswith("row-major (column-major measured 1.00x")
        and q.is_contiguous()
    )
    seen = []
    monkeypatch.setattr(
        layout, "column_speedup", lambda out_f, in_f, dtype: seen.append((out_f, in_f)) or 2.0
    )
    reason = choose_layout(model, "auto")
    assert reason.startswith("column-major: 2.00x faster") and not q.is_contiguous()
    # measured on the shape holding the most weight: gate/up (64x32, 8 of them), not the more
    # numerous LoRA A/B's nor the 300x32 embedding/head (tied: one tensor)
    assert seen == [(64, 32)]
    assert choose_layout(tiny_lora(), "column") == "column-major (asked for)"
    with pytest.raises(ValueError, match="weight layout 'sideways': use one of auto, row, column"):
        choose_layout(model, "sideways")


def test_column_speedup_is_a_real_measurement():
    ratio = layout.column_speedup(64, 32, torch.float32, reps=2)
    assert ratio > 0 and ratio != 1.0  # two timings, not a constant


def test_serve_rejects_an_unknown_weight_layout():
    code, out = smolora_main("serve", "runs/none", "--weight-layout", "sideways")
    assert code == 2 and "--weight-layout" in out and "sideways" in out
