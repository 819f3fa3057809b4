"""The adapter alone as a llama.cpp LoRA GGUF, beside the unmerged base model as a GGUF.

`llama-cli -m base.gguf --lora adapter-lora.gguf` (and Ollama's `ADAPTER`) then runs the
fine-tune without a merged copy of the base. The layout is llama.cpp's own (its
convert_lora_to_gguf.py and src/llama-adapter.cpp): `general.type = adapter`,
`adapter.type = lora`, `adapter.lora.alpha` (float32), `general.architecture` equal to the
base's, and for every adapted base tensor `<name>.lora_a` (PEFT's A, r x in) and
`<name>.lora_b` (PEFT's B, out x r). llama.cpp adds `alpha / r * B (A x)` with r read off
lora_b, so a module whose PEFT scaling is not lora_alpha / r (rsLoRA's alpha / sqrt(r),
alpha_pattern, rank_pattern) gets the ratio folded into B. Llama's q/k rows are permuted into
llama.cpp's rotary layout in the base, so B's rows (the output side) are permuted alike.

What a plain LoRA file cannot express is refused before anything loads: DoRA (magnitude
vectors), layer surgery (the base the adapter fits is a pruned one), modules_to_save and
trainable tokens (whole trained copies), LoRA on embeddings or the lm head, lora_bias.

Run as:
    refusal = lora_refusal("runs/quickstart")             # None: exportable
    write_lora_pair(peft_model, tokenizer, base_path, lora_path, "f16", "quickstart", meta)
    model = load_folded(base_path, lora_path)              # transformers' reading, for parity
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smolora.errors import ExportError
from smolora.export.gguf import (
    GGUF_ARCHS,
    check_supported,
    finish,
    heads,
    load_gguf,
    permute_qk,
    write_gguf,
)
from smolora.runs import AdapterMeta, find_adapter_dir, read_meta

QUANTS = ("f32", "f16", "q8_0")  # the base file's type; the LoRA tensors are f32 for f32, else f16
USE_MERGED = "use --format gguf (the merged model) instead"
# Module names whose LoRA is not a plain linear pair on a decoder weight.
NOT_DECODER = ("embed_tokens", "lm_head", "wte", "embed_out")


def lora_refusal(run: str | Path) -> str | None:
    """Why this run's adapter cannot be a plain LoRA GGUF (one line), or None; reads only JSON."""
    adapter_dir = find_adapter_dir(run)
    if adapter_dir is None:
        return f"{run} has no adapter to export as a LoRA GGUF; {USE_MERGED}"
    meta = read_meta(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.exists():
        return f"lora.method={meta.method} saved whole weights, not an adapter; {USE_MERGED}"
    config = json.loads(config_path.read_text())
    if meta.drop_layers or meta.keep_layers is not None:
        return (
            f"layer surgery (drop_layers {meta.drop_layers}, keep_layers {meta.keep_layers}): the adapter "
            f"fits only the pruned base, not {meta.base_model}; {USE_MERGED}"
        )
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    reasons = [
        why
        for why, bad in (
            (f"peft_type {config.get('peft_type')} is not LoRA", config.get("peft_type") != "LORA"),
            ("DoRA's magnitude vectors have no place in a LoRA GGUF", config.get("use_dora")),
            ("modules_to_save trains whole copies of modules", config.get("modules_to_save")),
            ("trainable_token_indices trains embedding rows", config.get("trainable_token_indices")),
            ("lora_bias trains a bias on B", config.get("lora_bias")),
            ("LoRA on the embeddings or the lm head", any(t in NOT_DECODER for t in targets)),
        )
        if bad
    ]
    return f"{adapter_dir}: {'; '.join(reasons)}; {USE_MERGED}" if reasons else None


def lora_pairs(peft_model: Any) -> dict[str, dict[str, Any]]:
    """{base module name: A (r x in), B (out x r), PEFT's scaling}, from the loaded PEFT model.

    Checked again here on the modules themselves: a regex target_modules can reach what the
    JSON check could not see.
    """
    from peft.tuners.lora import LoraLayer

    adapter = peft_model.active_adapter
    pairs = {}
    for name, module in peft_model.get_base_model().named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            if isinstance(module, LoraLayer) and adapter in module.lora_embedding_A:
                raise ExportError(f"LoRA on the embeddings ({name}) has no LoRA GGUF form; {USE_MERGED}")
            continue
        if module.use_dora.get(adapter) or module.lora_bias.get(adapter) or name.endswith(NOT_DECODER):
            raise ExportError(f"{name}: DoRA, lora_bias or a LoRA on the lm head; {USE_MERGED}")
        pairs[name] = {
            "A": module.lora_A[adapter].weight.detach().float().cpu().numpy(),
            "B": module.lora_B[adapter].weight.detach().float().cpu().numpy(),
            "scaling": float(module.scaling[adapter]),
        }
    if not pairs:
        raise ExportError(f"the adapter has no LoRA layers to export; {USE_MERGED}")
    return pairs


def base_state(peft_model: Any) -> dict[str, np.ndarray]:
    """The base model's weights without the adapter (PEFT keeps them as `<module>.base_layer.*`)."""
    state = {}
    for key, value in peft_model.get_base_model().state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value.detach().float().cpu().numpy()
    return state


def lora_tensors(cfg: Any, pairs: dict[str, dict[str, Any]], alpha: float) -> dict[str, np.ndarray]:
    """llama.cpp's tensor names and arrays: `<gguf name>.weight.lora_a/lora_b`, scale folded, q/k permuted."""
    import gguf

    n_head, n_kv, _ = heads(cfg)
    names = gguf.get_tensor_name_map(
        getattr(gguf.MODEL_ARCH, GGUF_ARCHS[cfg.model_type]), cfg.num_hidden_layers
    )
    out = {}
    for module, p in pairs.items():
        gguf_name = names.get_name(module)
        if gguf_name is None:
            raise ExportError(f"LoRA GGUF export: no llama.cpp name for {module}")
        a, b = p["A"], p["B"]
        llama_scale = alpha / a.shape[0]  # what llama.cpp applies: alpha / r
        if not math.isclose(p["scaling"], llama_scale, rel_tol=1e-9):
            b = b * (p["scaling"] / llama_scale)  # rsLoRA, alpha_pattern, rank_pattern
        if cfg.model_type == "llama" and module.endswith("self_attn.q_proj"):
            b = permute_qk(b, n_head)
        elif cfg.model_type == "llama" and module.endswith("self_attn.k_proj"):
            b = permute_qk(b, n_kv)
        out[f"{gguf_name}.weight.lora_a"], out[f"{gguf_name}.weight.lora_b"] = a, b
    return out


def write_lora_gguf(
    cfg: Any, pairs: dict, path: Path, quant: str, name: str, meta: AdapterMeta, alpha: float
):
    """The adapter file alone: general/adapter keys and the lora_a/lora_b tensors."""
    import gguf

    arch = getattr(gguf.MODEL_ARCH, GGUF_ARCHS[cfg.model_type])
    dtype = np.float32 if quant == "f32" else np.float16
    partial = path.with_suffix(".gguf.partial")
    w = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[arch])
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))  # llama.cpp reads it as f32
    w.add_name(f"{name} (LoRA)")
    w.add_string("smolora.base_model", str(meta.base_model))
    if meta.base_sha256:
        w.add_string("smolora.base_sha256", meta.base_sha256)
    for tensor_name, array in lora_tensors(cfg, pairs, alpha).items():
        w.add_tensor(tensor_name, np.ascontiguousarray(array.astype(dtype)))
    return finish(w, partial, path)


def write_lora_pair(
    peft_model: Any,
    tokenizer: Any,
    base_path: Path,
    lora_path: Path,
    quant: str,
    name: str,
    meta: AdapterMeta,
) -> tuple[Path, Path]:
    """The unmerged base as a GGUF and the adapter as a LoRA GGUF; neither is left behind if one fails."""
    if quant not in QUANTS:
        raise ExportError(
            f"--format gguf-lora --quant {quant}: the base is written as {', '.join(QUANTS)}; quantize it "
            f"further with llama.cpp's llama-quantize, or {USE_MERGED}"
        )
    cfg = peft_model.get_base_model().config
    check_supported(cfg)
    pairs = lora_pairs(peft_model)
    alpha = float(peft_model.peft_config[peft_model.active_adapter].lora_alpha) or 1.0
    try:
        base, base_name = peft_model.get_base_model(), Path(str(meta.base_model)).name
        write_gguf(base, tokenizer, base_path, quant, base_name, meta, base_state(peft_model))
        write_lora_gguf(cfg, pairs, lora_path, quant, name, meta, alpha)
    except BaseException:
        for p in (base_path, lora_path):
            p.unlink(missing_ok=True)
            p.with_suffix(".gguf.partial").unlink(missing_ok=True)
        raise
    return base_path, lora_path


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of gguf.permute_qk: llama.cpp's rotary row order back to transformers'."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@torch.no_grad()
def load_folded(base_path: Path, lora_path: Path):
    """The base GGUF reloaded by transformers with the LoRA GGUF added as llama.cpp adds it.

    An independent reading of both files (names, shapes, alpha / r, the q/k row order), for the
    parity check where llama.cpp is not installed.
    """
    import gguf

    model, tokenizer = load_gguf(base_path)
    reader = gguf.GGUFReader(lora_path)
    alpha = float(reader.fields[gguf.Keys.Adapter.LORA_ALPHA].contents())
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    cfg = model.config
    n_head, n_kv, _ = heads(cfg)
    names = gguf.get_tensor_name_map(
        getattr(gguf.MODEL_ARCH, GGUF_ARCHS[cfg.model_type]), cfg.num_hidden_layers
    )
    applied = 0
    for module_name, module in model.named_modules():
        gguf_name = names.get_name(module_name) if isinstance(module, torch.nn.Linear) else None
        a = tensors.get(f"{gguf_name}.weight.lora_a")
        if a is None:
            continue
        b = tensors[f"{gguf_name}.weight.lora_b"]
        if cfg.model_type == "llama" and module_name.endswith(("self_attn.q_proj", "self_attn.k_proj")):
            b = unpermute_qk(b, n_head if module_name.endswith("q_proj") else n_kv)
        module.weight += torch.from_numpy((alpha / a.shape[0]) * (b @ a))
        applied += 2
    if applied != len(tensors):
        raise ExportError(f"{lora_path.name}: {len(tensors) - applied} LoRA tensors match no base weight")
    return model, tokenizer
