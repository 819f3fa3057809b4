"""Fine-tuning methods: one function each, in one dict. Adding a method is one function.

Each takes the base model (layer surgery already applied) and the `lora` config section and
returns the model to train: a PEFT model, or the base with `requires_grad` set. The key in
`METHODS` is what `lora.method` accepts (the names are also `config.MethodName`, so the config
need not import models; a test keeps the two equal). Two more knobs live elsewhere because they
are not a different model: LoRA+ (`lora.plus_ratio`, an optimizer with a higher lr for B, built in
train/trainer.py) and QLoRA (`model.load_in_4bit` / `load_in_8bit`, a quantized base from load.py,
which any PEFT method here then trains).

Run as:
    model = METHODS[cfg.lora.method](model, cfg.lora)
    save_weights(model, "runs/x/adapter")   # PEFT adapter, or full weights for full/freeze
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from torch import nn

from smolora.config import LoraSection, ModelSection
from smolora.errors import ConfigError
from smolora.model.surgery import decoder_layers
from smolora.runs import AdapterMeta, find_adapter_dir, read_meta

# PiSSA and OLoRA rewrite the base weights at init; the starting adapter is kept here so the
# final save can turn the trained adapter into a plain LoRA that fits the untouched base.
INITIAL_ADAPTER_ATTR = "smolora_initial_adapter"


def find_target_modules(model: nn.Module) -> list[str]:
    """Leaf names of the linear layers inside the decoder blocks (q_proj, ..., down_proj).

    The lm head and embeddings stay frozen: they are large and rarely worth adapting.
    """
    names: set[str] = set()
    for layer in decoder_layers(model):
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear) or type(module).__name__ in {"Linear4bit", "Linear8bitLt"}:
                names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise ConfigError("no linear layers found in the decoder blocks; set lora.targets explicitly")
    return sorted(names)


def _targets(model: nn.Module, cfg: LoraSection) -> list[str] | str:
    if cfg.targets == "auto":
        return find_target_modules(model)
    return cfg.targets  # "all-linear" or explicit names, as PEFT understands them


def _peft(model: nn.Module, cfg: LoraSection, **extra) -> nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=_targets(model, cfg),
        task_type="CAUSAL_LM",
        **extra,
    )
    return get_peft_model(model, config)


def _keep_initial_adapter(model: nn.Module) -> nn.Module:
    """Save the freshly initialised adapter (PiSSA/OLoRA) for the conversion at save time."""
    path = Path(tempfile.mkdtemp(prefix="smolora-init-")) / "initial"
    atexit.register(shutil.rmtree, path.parent, True)
    model.save_pretrained(str(path), safe_serialization=True)
    setattr(model, INITIAL_ADAPTER_ATTR, str(path))
    return model


def lora(model: nn.Module, cfg: LoraSection) -> nn.Module:
    return _peft(model, cfg)


def rslora(model: nn.Module, cfg: LoraSection) -> nn.Module:
    # Scale alpha/sqrt(r) instead of alpha/r: stable updates at high rank.
    return _peft(model, cfg, use_rslora=True)


def dora(model: nn.Module, cfg: LoraSection) -> nn.Module:
    # Weight-decomposed LoRA: a learned magnitude per output row plus a LoRA direction.
    return _peft(model, cfg, use_dora=True)


def pissa(model: nn.Module, cfg: LoraSection) -> nn.Module:
    # Fast SVD init from the principal singular vectors; converges faster than random A.
    return _keep_initial_adapter(_peft(model, cfg, init_lora_weights="pissa_niter_4"))


def olora(model: nn.Module, cfg: LoraSection) -> nn.Module:
    # Orthonormal init from a QR decomposition of the base weights.
    return _keep_initial_adapter(_peft(model, cfg, init_lora_weights="olora"))


def full(model: nn.Module, cfg: LoraSection) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def freeze(model: nn.Module, cfg: LoraSection) -> nn.Module:
    """Train only the last N decoder layers and/or modules whose name contains a given string."""
    if not cfg.freeze_last_n and not cfg.trainable_modules:
        raise ConfigError(
            "lora.method=freeze needs lora.freeze_last_n (e.g. 2) or lora.trainable_modules (e.g. [mlp])"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    layers = decoder_layers(model)
    if cfg.freeze_last_n:
        for layer in layers[-cfg.freeze_last_n :]:
            for p in layer.parameters():
                p.requires_grad_(True)
    for name, p in model.named_parameters():
        if any(key in name for key in cfg.trainable_modules):
            p.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"lora.trainable_modules {cfg.trainable_modules} matches no parameter name; "
            "names look like model.layers.3.mlp.down_proj.weight"
        )
    return model


METHODS: dict[str, Callable[[nn.Module, LoraSection], nn.Module]] = {
    "lora": lora,
    "rslora": rslora,
    "dora": dora,
    "pissa": pissa,
    "olora": olora,
    "full": full,
    "freeze": freeze,
}


def save_weights(model: nn.Module, out_dir: str | Path, state_dict: dict | None = None) -> None:
    """A PEFT adapter (plain LoRA format, loadable on the original base), or full weights.

    full and freeze save the whole model: it loads in plain transformers, layer surgery
    included (the saved config already has the surviving layers). `state_dict`: weights
    gathered from FSDP / ZeRO-3 shards (the model's own parameters are only this rank's shard).
    """
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    initial = getattr(model, INITIAL_ADAPTER_ATTR, None)
    if initial is not None:
        # PiSSA/OLoRA trained on a modified base; save the difference to the initial adapter
        # as a rank-2r LoRA, so the adapter fits the unmodified base model.
        model.save_pretrained(
            str(out_dir), safe_serialization=True, path_initial_model_for_weight_conversion=initial, **extra
        )
    else:
        model.save_pretrained(str(out_dir), safe_serialization=True, **extra)


def trainable_summary(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def start_adapter(cfg: ModelSection) -> tuple[Path, AdapterMeta]:
    """The adapter `model.adapter` names, checked against this config's base before any model loads."""
    adapter_dir = find_adapter_dir(cfg.adapter) if cfg.adapter else None
    if adapter_dir is None:
        raise ConfigError(
            f"model.adapter: {cfg.adapter} is not a finished run or adapter directory (no adapter/smolora.json)"
        )
    meta = read_meta(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise ConfigError(
            f"model.adapter: {adapter_dir} holds a whole model ({meta.method} fine-tuning), not an adapter; "
            f"start from it with model.name={adapter_dir}"
        )
    ours = (cfg.name, list(cfg.drop_layers), cfg.keep_layers)
    theirs = (meta.base_model, list(meta.drop_layers), meta.keep_layers)
    if ours != theirs:
        raise ConfigError(
            f"model.adapter: {adapter_dir} was trained on {meta.base_model} (drop_layers {meta.drop_layers}, "
            f"keep_layers {meta.keep_layers}), this config has {cfg.name} (drop_layers {cfg.drop_layers}, "
            f"keep_layers {cfg.keep_layers}); set model.name={meta.base_model} and the same layers"
        )
    return adapter_dir, meta


def continue_adapter(model: nn.Module, cfg: ModelSection) -> nn.Module:
    """The base with `model.adapter`'s trained adapter loaded, its weights trainable."""
    from peft import PeftModel

    adapter_dir, _ = start_adapter(cfg)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
