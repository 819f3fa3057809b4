"""Write a merged Llama / Qwen2 model as one GGUF file in llama.cpp's layout, and read it back.

Hyperparameters go under `llama.*` / `qwen2.*`, the byte-level BPE tokenizer under
`tokenizer.ggml.*` (tokens, types, merges, special ids, pre-tokenizer name), the chat
template under `tokenizer.chat_template`; tensors get llama.cpp's names (gguf's own
tensor-name map). Llama's q/k rows are permuted into llama.cpp's rotary layout, exactly the
permutation transformers' GGUF loader undoes. f32, f16 or q8_0 (`gguf.quants.quantize`);
1-D tensors (norms, biases) stay f32.

Run as:
    write_gguf(merged_model, tokenizer, Path("out/model-f16.gguf"), "f16", "my-run", meta)
    model, tokenizer = load_gguf(Path("out/model-f16.gguf"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smolora.errors import ExportError
from smolora.generate import end_token_ids
from smolora.runs import AdapterMeta

GGUF_ARCHS = {"llama": "LLAMA", "qwen2": "QWEN2"}


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for Llama q/k rows (interleaved pairs, not two halves).

    transformers' GGUF loader (LlamaTensorProcessor._reverse_permute_weights) undoes exactly this.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def pre_tokenizer_name(tok_json: dict[str, Any]) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for the way this tokenizer splits text before BPE."""
    pre = tok_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    try:  # the splits transformers' GGUF loader knows; naming one of them makes the reload match
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:
        GGUF_PRE_TOKENIZER_SPLITS = {}
    for step in pre.get("pretokenizers", []):
        regex = (step.get("pattern") or {}).get("Regex")
        for name, split in GGUF_PRE_TOKENIZER_SPLITS.items():
            if regex == split:
                return name
    return "default"


def byte_level_vocab(tokenizer: Any, n_vocab: int) -> dict[str, Any]:
    """Tokens (id order, padded to the embedding rows), their types, merges and the pre-tokenizer."""
    import gguf

    tok_json = json.loads(tokenizer.backend_tokenizer.to_str())
    model = tok_json.get("model", {})
    uses_byte_level = "ByteLevel" in json.dumps(tok_json.get("pre_tokenizer")) + json.dumps(
        tok_json.get("decoder")
    )
    if model.get("type") != "BPE" or not uses_byte_level:
        raise ExportError(
            f"GGUF export writes byte-level BPE tokenizers (GPT-2 style); this one is {model.get('type')} "
            "without byte-level pre-tokenization. Merge with `smolora merge` and convert with llama.cpp's "
            "convert_hf_to_gguf.py"
        )
    vocab = tokenizer.get_vocab()
    if len(vocab) > n_vocab:
        raise ExportError(f"the tokenizer has {len(vocab)} tokens but the model only {n_vocab} embeddings")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:  # padded embedding rows, as llama.cpp's converter names them
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            if i in added:
                types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
            else:
                types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre_tokenizer_name(tok_json)}


def gguf_tensor_type(name: str, data: np.ndarray, quant: str):
    """(array, raw ggml type or None) as llama.cpp stores it: 1-D tensors always in f32."""
    import gguf

    if data.ndim == 1 or quant == "f32":
        return data.astype(np.float32), None
    if quant == "q8_0" and data.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data.astype(np.float32), qtype), qtype
    return data.astype(np.float16), None  # f16, or q8_0 rows that do not split into 32-blocks


def adds_bos(tokenizer: Any) -> bool:
    """Whether encoding puts a BOS first by itself (llama.cpp must then do the same)."""
    probe = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id


def check_supported(cfg: Any) -> None:
    """ExportError, before anything is written, for a model this writer would get wrong."""
    if cfg.model_type not in GGUF_ARCHS:
        raise ExportError(
            f"GGUF export supports {sorted(GGUF_ARCHS)} models, not {cfg.model_type}; use `smolora merge` "
            "and llama.cpp's convert_hf_to_gguf.py"
        )
    rope = getattr(cfg, "rope_parameters", None) or {}
    if (rope.get("rope_type") or "default") != "default":
        raise ExportError(f"GGUF export does not write rope scaling ({rope}); only plain RoPE models")
    if cfg.model_type == "llama" and (
        getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False)
    ):
        raise ExportError("GGUF export of Llama models with attention/MLP biases is not supported")


def heads(cfg: Any) -> tuple[int, int, int]:
    """(attention heads, key/value heads, head dim)."""
    n_head = cfg.num_attention_heads
    return (
        n_head,
        cfg.num_key_value_heads or n_head,
        getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head,
    )


def add_hyperparameters(w: Any, cfg: Any, quant: str, name: str, n_vocab: int) -> None:
    """general.* and the architecture's own keys (llama.* / qwen2.*)."""
    import gguf

    n_head, n_kv, head_dim = heads(cfg)
    rope = getattr(cfg, "rope_parameters", None) or {}
    w.add_name(name)
    w.add_file_type(
        {
            "f32": gguf.LlamaFileType.ALL_F32,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        }[quant]
    )
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(n_vocab)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))


def add_tokenizer(w: Any, tokenizer: Any, vocab: dict[str, Any], meta: AdapterMeta) -> None:
    """tokenizer.ggml.* (tokens, types, merges, special ids) and the chat template the run trained with."""
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    for setter, token_id in (
        (w.add_bos_token_id, tokenizer.bos_token_id),
        (w.add_eos_token_id, tokenizer.eos_token_id),
        (w.add_pad_token_id, tokenizer.pad_token_id),
        (w.add_unk_token_id, tokenizer.unk_token_id),
    ):
        if token_id is not None:
            setter(token_id)
    eot = [i for i in end_token_ids(tokenizer) if i != tokenizer.eos_token_id]
    if eot:
        w.add_eot_token_id(eot[0])  # llama.cpp stops at end-of-turn as well as end-of-text
    w.add_add_bos_token(adds_bos(tokenizer))
    w.add_add_eos_token(False)
    template = meta.chat_template or tokenizer.chat_template
    if template:
        w.add_chat_template(template)


def add_tensors(w: Any, cfg: Any, arch: Any, state: dict[str, np.ndarray], quant: str) -> None:
    """Every weight under llama.cpp's name, Llama q/k permuted into its rotary layout."""
    import gguf

    n_head, n_kv, _ = heads(cfg)
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    tied = getattr(cfg, "tie_word_embeddings", False)
    for key, data in state.items():
        if key == "lm_head.weight" and tied:
            continue  # no output.weight in the file means "tied" to transformers and llama.cpp
        base, _, suffix = key.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ExportError(f"GGUF export: no llama.cpp name for tensor {key}")
        if cfg.model_type == "llama" and base.endswith("self_attn.q_proj"):
            data = permute_qk(data, n_head)
        elif cfg.model_type == "llama" and base.endswith("self_attn.k_proj"):
            data = permute_qk(data, n_kv)
        array, raw = gguf_tensor_type(key, data, quant)
        w.add_tensor(f"{gguf_name}.{suffix}", array, raw_dtype=raw)


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: Path,
    quant: str,
    name: str,
    meta: AdapterMeta,
    state: dict | None = None,
) -> Path:
    """Write a merged Llama/Qwen2 model with its tokenizer and chat template as one GGUF file.

    `state`: the weights to write when they are not the model's own (the base under a PEFT adapter).
    """
    import gguf

    cfg = model.config
    check_supported(cfg)
    arch = getattr(gguf.MODEL_ARCH, GGUF_ARCHS[cfg.model_type])
    if state is None:
        state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    n_vocab = state["model.embed_tokens.weight"].shape[0]
    vocab = byte_level_vocab(tokenizer, n_vocab)

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".gguf.partial")
    w = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[arch])
    add_hyperparameters(w, cfg, quant, name, n_vocab)
    add_tokenizer(w, tokenizer, vocab, meta)
    w.add_string("smolora.base_model", str(meta.base_model))
    add_tensors(w, cfg, arch, state, quant)
    return finish(w, partial, path)


def finish(w: Any, partial: Path, path: Path) -> Path:
    """Write out a GGUFWriter opened on `partial` and give the file its real name once complete."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    partial.replace(path)
    return path


def load_gguf(path: Path):
    """A GGUF reloaded by transformers (dequantized to float32) and the tokenizer it describes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model.eval()
    return model, tokenizer
