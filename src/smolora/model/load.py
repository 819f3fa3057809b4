"""Load a base model for training or a fine-tuned one for inference.

Device: CUDA, then MPS, then CPU. Dtype: bf16 on CUDA that supports it, float32 elsewhere
(this CPU has no bf16 instructions). Layer surgery is applied before any adapter.

Run as:
    model, tokenizer = load_base(cfg.model)
    model, tokenizer, meta = load_for_inference("runs/quickstart")
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from smolora.config import ModelSection
from smolora.errors import ModelError
from smolora.model.store import resolve_model
from smolora.model.surgery import apply_surgery, decoder_layers, surgery_summary

ADAPTER_META = "smolora.json"
log = logging.getLogger("smolora")


def pick_device(pref: str = "auto") -> str:
    if pref != "auto":
        if pref == "cuda" and not torch.cuda.is_available():
            raise ModelError("model.device=cuda but no CUDA device is visible; use model.device=auto")
        return pref
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(pref: str, device: str) -> torch.dtype:
    if pref != "auto":
        return getattr(torch, pref)
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def physical_cores() -> int:
    """Hyper-threads slow fp32 matmuls down; use one thread per physical core."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except ImportError:
        n = None
    return max(
        1,
        min(
            n or os.cpu_count() or 1,
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 999,
        ),
    )


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    from smolora.data.render import ensure_chat_template

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ensure_chat_template(tokenizer)
    return tokenizer


def quantization_config(cfg: ModelSection, device: str) -> Any:
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        return None
    bits = 4 if cfg.load_in_4bit else 8
    if device != "cuda":
        raise ModelError(
            f"model.load_in_{bits}bit needs a CUDA GPU (bitsandbytes kernels); this machine runs on {device}. "
            "Use plain LoRA instead: --set model.load_in_4bit=false --set model.load_in_8bit=false"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            f"model.load_in_{bits}bit needs the bitsandbytes package: pip install 'bitsandbytes>=0.43' "
            f"(or pip install 'smolora[qlora]'), or train plain LoRA with model.load_in_{bits}bit=false"
        )
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base(cfg: ModelSection, device: str | None = None):
    """The base model (surgery applied) and its tokenizer, ready for an adapter."""
    from transformers import AutoModelForCausalLM

    device = device or pick_device(cfg.device)
    quant = quantization_config(cfg, device)  # before any conversion or download: fail fast
    path = resolve_model(cfg.name, cfg.revision)
    kwargs: dict[str, Any] = {
        "dtype": pick_dtype(cfg.dtype, device),
        "trust_remote_code": cfg.trust_remote_code,
    }
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True, **kwargs)
    except OSError as e:
        raise ModelError(f"{path}: cannot load model ({e}); safetensors weights are required") from None
    if quant is None:
        model.to(device)
    apply_surgery(model, cfg.drop_layers, cfg.keep_layers)
    tokenizer = load_tokenizer(path)
    # Keep model and tokenizer agreeing on padding, so generate() and Trainer need not guess.
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def find_adapter_dir(path: str | Path) -> Path | None:
    """A run directory or an adapter directory -> the directory holding smolora.json."""
    p = Path(path)
    for candidate in (p, p / "adapter"):
        if (candidate / ADAPTER_META).exists():
            return candidate
    return None


def read_adapter_meta(adapter_dir: Path) -> dict[str, Any]:
    return json.loads((adapter_dir / ADAPTER_META).read_text())


def load_for_inference(name_or_run: str | Path, device: str | None = None):
    """A run dir, adapter dir or model name -> (model, tokenizer, meta), in eval mode.

    For an adapter, its recorded base model and layer surgery are re-applied first, so no
    flag has to be repeated at inference time.
    """
    from peft import PeftModel

    adapter_dir = find_adapter_dir(name_or_run)
    if adapter_dir is None:
        p = Path(name_or_run)
        if p.is_dir() and ((p / "checkpoints").exists() or (p / "config.yaml").exists()):
            raise ModelError(
                f"{p} has no adapter yet (no {p / 'adapter' / ADAPTER_META}); finish or resume the run: "
                f"smolora train {p / 'config.yaml'} --resume"
            )
        model, tokenizer = load_base(ModelSection(name=str(name_or_run)), device)
        model.eval()
        return model, tokenizer, {"base_model": str(name_or_run), "adapter": None}
    meta = read_adapter_meta(adapter_dir)
    section = ModelSection(
        name=meta["base_model"],
        drop_layers=meta.get("drop_layers", []),
        keep_layers=meta.get("keep_layers"),
    )
    if not (adapter_dir / "adapter_config.json").exists():
        # full / freeze: the directory holds the whole model, already pruned (its config.json
        # lists the surviving layers), so the surgery is not applied a second time.
        from transformers import AutoModelForCausalLM

        device = device or pick_device()
        model = AutoModelForCausalLM.from_pretrained(str(adapter_dir), dtype=pick_dtype("auto", device))
        model.to(device)
        tokenizer = load_tokenizer(adapter_dir)
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        base, tokenizer = load_base(section, device)
        model = PeftModel.from_pretrained(base, str(adapter_dir))
        if (adapter_dir / "tokenizer_config.json").exists():
            tokenizer = load_tokenizer(adapter_dir)
    model.eval()
    log.info(
        "loaded %s (%s) on base %s: %d decoder layers (layer surgery: %s)",
        adapter_dir,
        meta.get("method", "lora"),
        meta["base_model"],
        len(decoder_layers(model)),
        surgery_summary(section.drop_layers, section.keep_layers),
    )
    return model, tokenizer, {**meta, "adapter": str(adapter_dir)}
