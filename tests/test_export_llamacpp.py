"""GGUF exports judged by llama.cpp itself (llama-cpp-python): load, greedy agreement, k-quants, broken parity.

Skipped without llama_cpp (`make llamacpp` builds it, ~16 min on 2 cores).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from smolora.errors import ExportError
from smolora.export.merge import export_run
from test_export import one_thread  # noqa: F401  (autouse: tiny matmuls on one thread)

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama.cpp not installed: `make llamacpp` or pip install 'smolora[llamacpp]'"
)


def parity(out) -> dict:
    return json.loads((out / "parity.json").read_text())


def test_f16_judged_by_llamacpp_matches_the_adapter(tiny_run, tmp_path):
    report = parity(export_run(tiny_run, "gguf", "f16", tmp_path / "f16"))
    row = report["checks"]["llamacpp-f16"]
    assert report["passed"] and row["broken"] == [] and row["tokenizer_match"]
    assert row["greedy_match"] == 1.0 and row["token_agreement"] >= 0.95
    assert row["ppl_rel_diff"] < 0.01


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_quantized_types_load_in_llamacpp_and_report_drift(tiny_run, tmp_path, quant):
    out = export_run(tiny_run, "gguf", quant, tmp_path / quant)
    report = parity(out)
    row = report["checks"][f"llamacpp-{quant}"]
    assert report["passed"] and row["broken"] == []  # reported, not judged
    assert row["max_logit_diff"] > 0 and row["ppl"] > 0
    types = report["checks"][f"gguf-{quant}"]["tensor_types"]
    if quant == "q4_k_m":
        # the tiny model's 32/64-wide rows do not split into 256-wide super-blocks: llama.cpp's
        # fallback types (q5_0 for q4_K, q8_0 for q6_K), never a k-quant block that does not fit
        assert not any(t.endswith("_K") for t in types) and {"Q5_0"} <= types.keys(), types
    else:
        assert "Q8_0" in types
    assert not list(out.glob("*.partial")) and not list(out.glob("*f32-source*"))


def test_k_quants_where_rows_fit_super_blocks(tmp_path, tiny_tokenizer):
    """A model 256 wide gets real Q4_K / Q6_K tensors from llama.cpp's quantizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    src = tmp_path / "wide"
    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=256, intermediate_size=256,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    types = parity(export_run(str(src), "gguf", "q4_k_m", tmp_path / "out"))["checks"]["gguf-q4_k_m"][
        "tensor_types"
    ]
    assert "Q4_K" in types and "Q6_K" in types, types


def test_broken_weights_fail_the_export(tiny_run, tmp_path, monkeypatch):
    """A corrupt tensor in the file (embedding rows shifted by one) must fail f16, not ship."""
    import numpy as np

    import smolora.export.gguf as gguf_export

    write = gguf_export.gguf_tensor_type
    corrupt = lambda name, data, quant: write(name, np.roll(data, 1, 0) if "embed" in name else data, quant)  # noqa: E731
    monkeypatch.setattr(gguf_export, "gguf_tensor_type", corrupt)
    with pytest.raises(ExportError, match="parity check failed.*llamacpp-f16"):
        export_run(tiny_run, "gguf", "f16", tmp_path / "bad")
    assert parity(tmp_path / "bad")["passed"] is False


def test_bad_quant_exits_2_naming_the_choices(tiny_run, monkeypatch, capsys):
    from smolora.cli.main import main

    monkeypatch.setattr(sys, "argv", ["smolora", "export", str(tiny_run), "--quant", "q4_k_s"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr()
    assert "q4_k_m" in err.out + err.err and "q4_k_s" in err.out + err.err


def strong(run, root):
    """The run's adapter with B x -20 (helpers.other_adapter): a fine-tune whose answers differ from
    the base's, so a LoRA that llama.cpp applied wrongly (or not at all) cannot pass."""
    from helpers import other_adapter

    out = other_adapter(run, root)
    (out / "config.yaml").write_text((run / "config.yaml").read_text())
    return out


# rsLoRA in f32: its B carries sqrt(r), and in f16 the rounding of that stronger B on the tiny model's
# small logits (largest 0.6) measured 2.1% (transformers) and 5.2% (llama.cpp) of the largest logit,
# over f16's 2% although greedy tokens and perplexity agreed; f32 judges the scale exactly.
@pytest.mark.parametrize("method, quant", [("lora", "f16"), ("rslora", "f32")])
def test_base_plus_lora_in_llamacpp_matches_the_adapter(
    tmp_path_factory, tiny_model_dir, tmp_path, method, quant
):
    """`-m base.gguf --lora x-lora.gguf` in llama.cpp answers as the PEFT adapter model does (rsLoRA:
    its alpha / sqrt(r) folded into B, since llama.cpp scales by alpha / r)."""
    from helpers import tiny_config, write_qa
    from smolora.train.recipe import train

    root = tmp_path_factory.mktemp(method)
    cfg = tiny_config(tiny_model_dir, write_qa(root / "qa.jsonl", 24), root, "train.max_steps=2",
                      "train.threads=1", f"lora.method={method}", "lora.r=4")  # fmt: skip
    run = strong(train(cfg, show_progress=False), root)
    report = parity(export_run(run, "gguf-lora", quant, tmp_path / "lora"))
    row = report["checks"][f"llamacpp-lora-{quant}"]
    assert report["passed"] and row["broken"] == [] and row["tokenizer_match"], row
    assert row["greedy_match"] == 1.0 and row["token_agreement"] >= 0.95 and row["ppl_rel_diff"] < 0.01


@pytest.mark.parametrize("factor", [0.5, 0.0], ids=["half-scale", "no-lora"])
def test_a_lora_applied_wrongly_fails_in_llamacpp(tiny_run, tmp_path, monkeypatch, factor):
    """The check has teeth: B written at half its scale, or zero (the base alone), fails the f16 export."""
    import smolora.export.gguf_lora as gguf_lora

    run = strong(tiny_run, tmp_path)
    real = gguf_lora.lora_tensors

    def wrong(cfg, pairs, alpha):
        return {k: v * factor if k.endswith("lora_b") else v for k, v in real(cfg, pairs, alpha).items()}

    monkeypatch.setattr(gguf_lora, "lora_tensors", wrong)
    with pytest.raises(ExportError, match="parity check failed.*llamacpp-lora-f16"):
        export_run(run, "gguf-lora", "f16", tmp_path / "bad")
