"""A GGUF file -> a plain float32 Hugging Face model (safetensors) with its tokenizer.

A GGUF-loaded model cannot be saved nor trained by transformers, so we rebuild a plain
model from its config and state dict and save that. The store calls this once per GGUF
(model/store.py, convert_gguf) and keeps the result.

Run as:
    dequantize_gguf(Path("SmolLM2-135M-Instruct.Q4_1.gguf"), Path("out"))   # out/config.json, ...
"""

from __future__ import annotations

from pathlib import Path

from smolora.errors import ModelError


def dequantize_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Save `gguf_path` dequantized into `out_dir`: config, float32 safetensors, tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as e:  # transformers raises many types for an unreadable GGUF
        raise ModelError(f"{gguf_path}: cannot read this GGUF ({type(e).__name__}: {e})") from None
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
