"""Layer surgery before LoRA (seed 003): drop decoder layers, or keep only the first N.

The surgery is recorded in the adapter's `smolora.json` and re-applied wherever the
adapter is loaded, so a pruned model is never paired with the wrong base. It works on
the Llama, Qwen2 and Gemma 3 families (and any causal LM whose decoder keeps its blocks
in a `layers` ModuleList): the config's `num_hidden_layers` and per-layer lists
(`layer_types`: full vs sliding-window attention) follow the surviving layers, and every
`layer_idx` is renumbered so the KV cache built from the config lines up with the layers.

Run as:
    model = apply_surgery(model, drop_layers=[10, 20], keep_layers=None)   # 30 -> 28 layers
"""

from __future__ import annotations

from torch import nn

from smolora.errors import ModelError

# Config attributes holding one entry per decoder layer (Gemma 3 / Qwen2 `layer_types`,
# SmolLM3 `no_rope_layers`); they must shrink with the layer list.
PER_LAYER_CONFIG = ("layer_types", "no_rope_layers")


def decoder_owner(model: nn.Module) -> nn.Module:
    """The module holding the decoder-layer list (`LlamaModel`, ...), through PEFT wrappers."""
    inner = model
    for attr in ("base_model", "model"):  # PeftModel -> LoraModel -> *ForCausalLM -> *Model
        while hasattr(inner, attr) and not isinstance(getattr(inner, "layers", None), nn.ModuleList):
            inner = getattr(inner, attr)
    if not isinstance(getattr(inner, "layers", None), nn.ModuleList):
        raise ModelError(
            f"layer surgery: cannot find the decoder layers of {type(model).__name__}; "
            "it works on Llama, Qwen2, Gemma 3 and similar architectures"
        )
    return inner


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of a Llama / Qwen2 / Gemma-style causal LM (PEFT-wrapped or not)."""
    return decoder_owner(model).layers


def layers_to_keep(n_layers: int, drop_layers: list[int], keep_layers: int | None) -> list[int]:
    """Indices of the original layers that survive: drops first, then the first `keep_layers`."""
    bad = sorted(i for i in set(drop_layers) if i >= n_layers)
    if bad:
        raise ModelError(f"model.drop_layers {bad}: the model has {n_layers} layers (0..{n_layers - 1})")
    keep = [i for i in range(n_layers) if i not in set(drop_layers)]
    if keep_layers is not None:
        if keep_layers > len(keep):
            raise ModelError(
                f"model.keep_layers={keep_layers}, but only {len(keep)} of the model's {n_layers} layers "
                "are left; lower keep_layers or remove it"
            )
        keep = keep[:keep_layers]
    if not keep:
        raise ModelError("layer surgery would remove every layer; keep at least one")
    return keep


def apply_surgery(model: nn.Module, drop_layers: list[int], keep_layers: int | None) -> nn.Module:
    """Remove layers in place and keep config and per-layer indices consistent."""
    if not drop_layers and keep_layers is None:
        return model
    owner = decoder_owner(model)
    n_before = len(owner.layers)
    keep = layers_to_keep(n_before, drop_layers, keep_layers)
    new = nn.ModuleList([owner.layers[i] for i in keep])
    for new_idx, layer in enumerate(new):
        # The KV cache is indexed by layer_idx; stale indices would read another layer's cache
        # (or run past the end of a cache sized from the new num_hidden_layers).
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    owner.layers = new
    configs = {id(c): c for c in (getattr(model, "config", None), getattr(owner, "config", None)) if c}
    for config in list(configs.values()):
        text = getattr(config, "text_config", None)  # multimodal wrappers keep the decoder's here
        if text is not None and text is not config:
            configs[id(text)] = text
    for config in configs.values():
        if getattr(config, "num_hidden_layers", None) != n_before:
            continue  # a vision tower's config, or one already updated
        config.num_hidden_layers = len(keep)
        for attr in PER_LAYER_CONFIG:
            values = getattr(config, attr, None)
            if isinstance(values, list) and len(values) == n_before:
                # Gemma 3 interleaves sliding-window and full attention; the cache and the
                # attention masks are built from this list, so it must follow the layers.
                setattr(config, attr, [values[i] for i in keep])
    return model


def surgery_summary(drop_layers: list[int], keep_layers: int | None) -> str:
    """'drop [10, 20]' / 'keep the first 12' / 'none', for log lines and tables."""
    parts = []
    if drop_layers:
        parts.append(f"drop {sorted(set(drop_layers))}")
    if keep_layers is not None:
        parts.append(f"keep the first {keep_layers}")
    return ", ".join(parts) or "none"
