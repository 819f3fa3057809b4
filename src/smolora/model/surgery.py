"""Layer surgery before LoRA (seed 003): drop decoder layers, or keep only the first N.

The surgery is recorded in the adapter's `smolora.json` and re-applied wherever the
adapter is loaded, so a pruned model is never paired with the wrong base.

Run as:
    model = apply_surgery(model, drop_layers=[10, 20])   # 30 -> 28 layers
"""

from __future__ import annotations

from torch import nn

from smolora.errors import ModelError


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of a Llama / Qwen2 / Gemma-style causal LM (PEFT-wrapped or not)."""
    inner = model
    for attr in ("base_model", "model"):  # PeftModel -> LoraModel -> *ForCausalLM
        while hasattr(inner, attr) and not hasattr(inner, "layers"):
            inner = getattr(inner, attr)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelError(f"layer surgery: cannot find the decoder layers of {type(model).__name__}")
    return layers


def layers_to_keep(n_layers: int, drop_layers: list[int], keep_layers: int | None) -> list[int]:
    bad = [i for i in drop_layers if i >= n_layers]
    if bad:
        raise ModelError(f"model.drop_layers {bad}: the model has {n_layers} layers (0..{n_layers - 1})")
    keep = [i for i in range(n_layers) if i not in set(drop_layers)]
    if keep_layers is not None:
        keep = keep[:keep_layers]
    if not keep:
        raise ModelError("layer surgery would remove every layer; keep at least one")
    return keep


def apply_surgery(model: nn.Module, drop_layers: list[int], keep_layers: int | None) -> nn.Module:
    """Remove layers in place and keep config and per-layer indices consistent."""
    if not drop_layers and keep_layers is None:
        return model
    layers = decoder_layers(model)
    keep = layers_to_keep(len(layers), drop_layers, keep_layers)
    new = nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(new):
        # The KV cache is indexed by layer_idx; stale indices would read another layer's cache.
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    layers_parent = model
    while not (hasattr(layers_parent, "layers") and layers_parent.layers is layers):
        layers_parent = next(m for m in layers_parent.children() if layers is m or _contains(m, layers))
    layers_parent.layers = new
    config = model.config
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        cfg.num_hidden_layers = len(keep)
        # Gemma 3 / Qwen2 describe each layer's attention type; keep the surviving entries.
        if getattr(cfg, "layer_types", None) is not None and len(cfg.layer_types) > len(keep):
            cfg.layer_types = [cfg.layer_types[i] for i in keep]
    return model


def _contains(module: nn.Module, target: nn.Module) -> bool:
    return any(m is target for m in module.modules())
