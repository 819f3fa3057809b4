"""llama.cpp as the judge of a GGUF export: its own quantizer, and its own forward pass for parity.

`llama-cpp-python` compiles llama.cpp from source (about 16 minutes on 2 cores), so it is an
optional extra (`make llamacpp` or `pip install 'smolora[llamacpp]'`). Without it f32/f16/q8_0
are still written (q8_0 by the `gguf` library) and checked through transformers only.

Run as:
    quantize(Path("m-f32.gguf"), Path("m-q4_k_m.gguf"), "q4_k_m")
    rows = llama_outputs(Path("m-q4_k_m.gguf"), prompts, eos_ids, seqs)   # same shape as model_outputs
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from smolora.errors import ExportError

INSTALL_HINT = "install llama.cpp with `make llamacpp` or `pip install 'smolora[llamacpp]'` (a ~16 min build)"

# llama.cpp's file types. A tensor whose rows do not split into 256-wide super-blocks gets
# llama.cpp's own fallback (q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0), as llama-quantize does.
FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
          "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}  # fmt: skip


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError):  # OSError: a broken shared library
        return False
    return True


def require(why: str) -> Any:
    if not available():
        raise ExportError(f"{why} needs llama.cpp: {INSTALL_HINT}")
    import llama_cpp

    return llama_cpp


def quantize(src: Path, dst: Path, quant: str) -> Path:
    """llama.cpp's quantizer (`llama_model_quantize`), into a temp name renamed once complete."""
    llama_cpp = require(f"--quant {quant}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[quant])
    params.nthread = max(1, min(4, os.cpu_count() or 1))
    partial = dst.with_suffix(".gguf.partial")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), params)
    if rc != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        raise ExportError(f"llama.cpp could not quantize {src.name} to {quant} (code {rc})")
    partial.replace(dst)
    return dst


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each ggml type the file holds (shows the k-quant fallbacks)."""
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return dict(sorted(counts.items()))


def load(path: Path, n_ctx: int, lora: Path | None = None) -> Any:
    """A llama.cpp model with every position's logits and an f32 KV cache (f16 would blur f32 parity)."""
    llama_cpp = require("checking a GGUF with llama.cpp")
    import llama_cpp.llama as high_level

    # Without llama.cpp's CPU "extra buffer types" (weights repacked for AVX-512): with them this
    # build (ggml 0.25.3) segfaults in decode on the tiny test model's q8_0 file. Llama() has no
    # argument for it, so its default model params are swapped for the duration of the load.
    default_params = high_level.llama_cpp.llama_model_default_params

    def no_repack():
        params = default_params()
        params.use_extra_bufts = False
        return params

    high_level.llama_cpp.llama_model_default_params = no_repack
    try:
        return llama_cpp.Llama(
            model_path=str(path),
            lora_path=str(lora) if lora else None,
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_ubatch=n_ctx,
            logits_all=True,
            type_k=llama_cpp.GGML_TYPE_F32,
            type_v=llama_cpp.GGML_TYPE_F32,
            n_threads=max(1, min(2, os.cpu_count() or 1)),
            verbose=False,
        )
    except Exception as e:  # llama.cpp reports a file it rejects as a bare ValueError
        raise ExportError(f"llama.cpp cannot load {path.name}: {e}") from None
    finally:
        high_level.llama_cpp.llama_model_default_params = default_params


def logits_of(llm: Any, ids: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(llm.scores[: len(ids)].copy()).float()


def llama_outputs(
    path: Path, prompts: list[dict], eos_ids: list[int], seqs: list[list[int]], lora: Path | None = None
) -> tuple[list[dict], bool]:
    """merge.model_outputs' rows computed by llama.cpp, and whether its tokenizer splits the prompts alike."""
    longest = max(max(len(s) for s in seqs), max(len(p["full_ids"]) for p in prompts)) + 32
    llm = load(path, n_ctx=max(64, longest), lora=lora)
    rows, same_tokens = [], True
    for p, seq in zip(prompts, seqs, strict=True):
        ids = list(p["prompt_ids"])
        same_tokens &= llm.tokenize(p["text"].encode(), add_bos=False, special=True) == ids
        continuation: list[int] = []
        llm.reset()
        llm.eval(ids)
        for _ in range(24):  # greedy, as model_outputs generates: argmax of the last position
            token = int(llm.scores[llm.n_tokens - 1].argmax())
            continuation.append(token)
            if token in eos_ids:
                break
            llm.eval([token])
        full = p["full_ids"]
        full_logits = logits_of(llm, full)[:-1]
        nll = torch.nn.functional.cross_entropy(full_logits, torch.tensor(full[1:]), reduction="sum").item()
        rows.append(
            {"continuation": continuation, "seq": seq, "logits": logits_of(llm, seq), "nll": nll,
             "n": len(full) - 1}
        )  # fmt: skip
    llm.close()
    return rows, same_tokens


def perplexity(rows: list[dict]) -> float:
    return math.exp(sum(r["nll"] for r in rows) / sum(r["n"] for r in rows))
