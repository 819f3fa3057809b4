"""Load a model through Unsloth (`model.backend: unsloth`): its kernels, with LoRA added in one go.

Untested here (it needs CUDA and the unsloth package); the errors say what to change. The
same safetensors-unless-opted-in rule as load.py applies before Unsloth opens anything.

Run as:
    model, tokenizer = load_unsloth(cfg, "cuda")   # cfg.model.backend == "unsloth"
"""

from __future__ import annotations

from smolora.config import RunConfig
from smolora.errors import ConfigError
from smolora.model.load import pick_dtype, pickle_allowed_by_env, weights_format
from smolora.model.store import resolve_model


def load_unsloth(cfg: RunConfig, device: str):
    """(model with LoRA, tokenizer) through unsloth.FastLanguageModel (seed 003's loader)."""
    if device != "cuda":
        raise ConfigError(
            f"model.backend=unsloth needs a CUDA GPU (this run is on {device}); use model.backend=hf"
        )
    if cfg.lora.method not in ("lora", "rslora"):
        raise ConfigError(f"model.backend=unsloth supports lora.method lora or rslora, not {cfg.lora.method}")
    try:
        from unsloth import FastLanguageModel
    except ImportError:
        raise ConfigError("model.backend=unsloth: pip install unsloth, or use model.backend=hf") from None
    path = resolve_model(cfg.model.name, cfg.model.revision)
    weights_format(path, cfg.model.allow_pickle or pickle_allowed_by_env())  # safetensors unless opted in
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(path),
        max_seq_length=cfg.data.max_length,
        # auto: Unsloth's own choice (bf16 where supported, else float16), not pick_dtype's float32
        dtype=None if cfg.model.dtype == "auto" else pick_dtype(cfg.model.dtype, device, training=True),
        load_in_4bit=cfg.model.load_in_4bit,
    )
    targets = cfg.lora.targets
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=(
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            if targets in ("auto", "all-linear")
            else targets
        ),
        use_gradient_checkpointing="unsloth" if cfg.model.gradient_checkpointing else False,
        use_rslora=cfg.lora.method == "rslora",
        random_state=cfg.train.seed,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
