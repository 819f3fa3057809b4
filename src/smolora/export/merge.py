"""Deployable artifacts from a run: merged safetensors, GGUF, an Ollama Modelfile, each with a parity check.

Merging happens in float32 on the CPU (never into a quantized base): `merge_and_unload()` folds
the adapter into the base weights, layer surgery included, so the result loads in plain
transformers. The GGUF is written by `gguf.py` (llama.cpp's layout, Llama and Qwen2), the
adapter alone as a LoRA GGUF beside the unmerged base by `gguf_lora.py`, the Modelfile by
`ollama.py`. Every artifact is checked against the adapter model on held-out prompts
(`parity.json` next to it): greedy-token agreement, max logit difference, perplexity difference.
Beyond tolerance an f32/f16 export fails with `ExportError`; quantized types report their drift.
With llama-cpp-python installed, llama.cpp itself loads the GGUF and judges it too
(`export/llamacpp.py`), and quantizes the k-quants.

Run as:
    merge_run("runs/quickstart")                                  # -> runs/quickstart/merged/
    export_run("runs/quickstart", fmt="gguf", quant="q8_0")       # -> runs/quickstart/gguf/
    export_run("runs/quickstart", fmt="ollama")                   # -> runs/quickstart/ollama/
    export_run("runs/quickstart", fmt="gguf-lora")                # -> runs/quickstart/gguf-lora/
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from smolora.errors import ExportError, SmoLoRAError
from smolora.export import llamacpp
from smolora.export.gguf import load_gguf, write_gguf
from smolora.export.gguf_lora import QUANTS as LORA_QUANTS
from smolora.export.gguf_lora import load_folded, lora_refusal, write_lora_pair
from smolora.export.ollama import modelfile_text
from smolora.generate import end_token_ids, plain_generation, to_messages
from smolora.redact import mask_text
from smolora.runs import MERGED_DIR, PARITY_FILE, AdapterMeta, find_adapter_dir, is_run, read_meta, run_dir_of

log = logging.getLogger("smolora")

QUANTS = ("f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m")
FORMATS = ("safetensors", "gguf", "gguf-lora", "ollama")
# f16 for gguf keeps the file parity-checked exactly; Ollama users expect Q4_K_M (what `ollama pull` serves).
DEFAULT_QUANT = {"gguf": "f16", "gguf-lora": "f16", "ollama": "q4_k_m", "safetensors": "f32"}

# What "the same model" means per precision. Logit differences are judged relative to the
# largest reference logit, so the bound holds for small and large models alike. f32 and merged
# differ from the adapter model only by summation order (SmolLM2-135M: 2e-4 absolute, under
# 1e-5 relative); f16 rounds every weight (relative error ~5e-4), so logits move a little
# (SmolLM2-135M: 0.06, perplexity +0.1%) and a near-tie may flip a greedy token, but
# perplexity must stay put. q8_0 is reported, not judged: its drift is the price the user chose.
TOLERANCES: dict[str, dict[str, float] | None] = {
    "f32": {"max_logit_diff_rel": 1e-4, "ppl_rel_diff": 1e-4, "token_agreement": 1.0},
    "f16": {"max_logit_diff_rel": 0.02, "ppl_rel_diff": 0.01, "token_agreement": 0.95},
    "q8_0": None,
    "q6_k": None,
    "q5_k_m": None,
    "q4_k_m": None,
}

FIXED_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about rivers.",
    "Extract the product and the city: order 3 lamps to Lisbon.",
    "Summarize in one sentence: the meeting moved from Monday to Tuesday.",
]

# --- parity ------------------------------------------------------------------------------


def parity_prompts(run_dir: Path, tokenizer: Any, meta: AdapterMeta, n: int = 4) -> list[dict]:
    """Token ids of held-out prompts (the run's eval split when there is one) and prompt+answer."""
    from smolora.data.render import render_prompt

    pairs: list[dict] = []
    if is_run(run_dir):
        from smolora.eval.evaluate import held_out, run_config

        try:
            pairs = held_out(run_config(run_dir))[:n]
        except SmoLoRAError as e:
            log.info("parity: held-out data unavailable (%s); using fixed prompts", e)
    if not pairs:
        pairs = [
            {"messages": [{"role": "user", "content": p}], "reference": "", "domain": None}
            for p in FIXED_PROMPTS
        ]
    out = []
    for p in pairs[:n]:
        text = render_prompt(tokenizer, to_messages(p["messages"], meta.system_prompt), p.get("domain"))
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(text + p["reference"], add_special_tokens=False)["input_ids"]
        out.append({"text": text, "prompt_ids": prompt_ids, "full_ids": full_ids})
    return out


@torch.inference_mode()
def model_outputs(model: Any, prompts: list[dict], eos_ids: list[int], pad_id: int, seqs=None) -> list[dict]:
    """Greedy continuation, logits over prompt+continuation, and NLL of prompt+reference.

    With `seqs` (the reference model's sequences) the logits are taken on those, so two models
    are compared on identical inputs.
    """
    results = []
    for i, p in enumerate(prompts):
        ids = torch.tensor([p["prompt_ids"]])
        with plain_generation(model):
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=24,
                do_sample=False,
                eos_token_id=eos_ids,
                pad_token_id=pad_id,
            )
        continuation = out[0, ids.shape[1] :].tolist()
        seq = seqs[i] if seqs is not None else p["prompt_ids"] + continuation
        logits = model(torch.tensor([seq])).logits[0].float()
        full = torch.tensor([p["full_ids"]])
        full_logits = model(full).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(full_logits, full[0, 1:], reduction="sum").item()
        results.append(
            {"continuation": continuation, "seq": seq, "logits": logits, "nll": nll, "n": full.shape[1] - 1}
        )
    return results


def compare(reference: list[dict], candidate: list[dict]) -> dict[str, float]:
    """Numbers for parity.json: how far `candidate` is from `reference` on the same inputs."""
    agree = total = same = 0
    max_diff = scale = 0.0
    for r, c in zip(reference, candidate, strict=True):
        same += r["continuation"] == c["continuation"]
        scale = max(scale, float(r["logits"].abs().max()))
        agree += int((r["logits"].argmax(-1) == c["logits"].argmax(-1)).sum())
        total += r["logits"].shape[0]
        max_diff = max(max_diff, float((r["logits"] - c["logits"]).abs().max()))
    n_tokens = sum(r["n"] for r in reference)
    ppl_ref = math.exp(sum(r["nll"] for r in reference) / n_tokens)
    ppl = math.exp(sum(c["nll"] for c in candidate) / n_tokens)
    return {
        "greedy_match": same / len(reference),
        "token_agreement": agree / total,
        "max_logit_diff": max_diff,
        "max_logit_diff_rel": max_diff / max(scale, 1e-6),
        "ppl_reference": ppl_ref,
        "ppl": ppl,
        "ppl_rel_diff": abs(ppl - ppl_ref) / ppl_ref,
    }


def judge(stats: dict[str, Any], precision: str) -> list[str]:
    """Which tolerances `stats` breaks (empty: parity holds, or `precision` is only reported)."""
    tol = TOLERANCES[precision]
    if tol is None:
        return []
    broken = []
    if stats["max_logit_diff_rel"] > tol["max_logit_diff_rel"]:
        broken.append(
            f"max logit diff {stats['max_logit_diff']:.3g} is {stats['max_logit_diff_rel']:.2g} of the largest "
            f"logit > {tol['max_logit_diff_rel']}"
        )
    if stats["ppl_rel_diff"] > tol["ppl_rel_diff"]:
        broken.append(f"perplexity differs by {stats['ppl_rel_diff']:.2%} > {tol['ppl_rel_diff']:.2%}")
    if stats["token_agreement"] < tol["token_agreement"]:
        broken.append(f"greedy tokens agree {stats['token_agreement']:.1%} < {tol['token_agreement']:.0%}")
    if stats.get("tokenizer_match") is False:
        broken.append("the reloaded tokenizer splits the prompts differently")
    return broken


def write_parity(out_dir: Path, report: dict[str, Any]) -> Path:
    """parity.json next to the artifact; raise ExportError (after writing it) if parity is broken."""
    failures = {name: row["broken"] for name, row in report["checks"].items() if row["broken"]}
    report["passed"] = not failures
    path = out_dir / PARITY_FILE
    path.write_text(json.dumps(report, indent=2))
    if failures:
        what = "; ".join(f"{name}: {', '.join(b)}" for name, b in failures.items())
        raise ExportError(f"parity check failed ({what}); details in {path}. Do not deploy this artifact")
    return path


# --- merge -------------------------------------------------------------------------------


def load_reference(run: str | Path):
    """The adapter model in float32 on the CPU, its tokenizer and meta; never a quantized base."""
    from smolora.model.load import load_for_inference

    model, tokenizer, _ = load_for_inference(run, device="cpu")
    adapter_dir = find_adapter_dir(run)
    meta = read_meta(adapter_dir) if adapter_dir else AdapterMeta(base_model=str(run))  # a plain model
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        raise ExportError("refusing to merge into a quantized base; merging needs float weights")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model.float()  # merge in full precision whatever the run trained in
    if meta.chat_template:
        tokenizer.chat_template = meta.chat_template  # the template the model was trained with
    return model, tokenizer, meta


def merge_model(model: Any) -> Any:
    """Fold a PEFT adapter into the base weights; full-weight models pass through."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def save_merged(model: Any, tokenizer: Any, out_dir: Path) -> Path:
    """safetensors + tokenizer + a generation config that stops at the end-of-turn token."""
    out_dir.mkdir(parents=True, exist_ok=True)
    eos = end_token_ids(tokenizer)
    gen = model.generation_config
    gen.eos_token_id = eos if len(eos) > 1 else eos[0]
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def prepare(run: str | Path) -> tuple[Any, Any, AdapterMeta, list[dict], list[dict], dict]:
    """Load the adapter model and record its outputs on the parity prompts."""
    model, tokenizer, meta = load_reference(run)
    prompts = parity_prompts(run_dir_of(run), tokenizer, meta)
    eos, pad = end_token_ids(tokenizer), tokenizer.pad_token_id
    reference = model_outputs(model, prompts, eos, pad)
    report = {
        "source": str(run),
        "base_model": meta.base_model,
        "reference": "adapter model" if hasattr(model, "merge_and_unload") else "model",
        "prompts": [mask_text(p["text"]) for p in prompts],  # pushed with the model: no tokens
        "tolerances": TOLERANCES,
        "checks": {},
    }
    return model, tokenizer, meta, prompts, reference, report


def merge_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Merge a run's adapter into its base, save it, check parity; returns the output directory."""
    out_dir = Path(out) if out else run_dir_of(run) / MERGED_DIR
    model, tokenizer, meta, prompts, reference, report = prepare(run)
    merged = merge_model(model)
    eos, seqs = end_token_ids(tokenizer), [r["seq"] for r in reference]
    stats = compare(reference, model_outputs(merged, prompts, eos, tokenizer.pad_token_id, seqs))
    report["checks"]["merged"] = {**stats, "precision": "f32", "broken": judge(stats, "f32")}
    save_merged(merged, tokenizer, out_dir)
    write_parity(out_dir, report)
    log.info("merged model written to %s", out_dir)
    return out_dir


# --- export ------------------------------------------------------------------------------


def write_quantized(
    merged: Any, tokenizer: Any, path: Path, quant: str, name: str, meta: AdapterMeta
) -> None:
    """f32/f16 (and q8_0 without llama.cpp) by the gguf library; other types by llama.cpp's quantizer.

    The quantizer reads an f32 GGUF, not f16: quantizing from f16 would round every weight twice.
    """
    if quant in ("f32", "f16") or (quant == "q8_0" and not llamacpp.available()):
        write_gguf(merged, tokenizer, path, quant, name, meta)
        return
    llamacpp.require(f"--quant {quant}")
    source = path.with_name(path.stem + ".f32-source.gguf")
    try:
        write_gguf(merged, tokenizer, source, "f32", name, meta)
        llamacpp.quantize(source, path, quant)
    finally:
        source.unlink(missing_ok=True)


def check_with_llamacpp(
    report: dict, path: Path, quant: str, prompts, reference, eos: list[int], lora: Path | None = None
) -> None:
    """parity.json's `llamacpp-QUANT` row (`llamacpp-lora-QUANT`: `-m path --lora lora`): the file as
    llama.cpp itself runs it (the program users run)."""
    if not llamacpp.available():
        report["llamacpp"] = f"not checked by llama.cpp: {llamacpp.INSTALL_HINT}"
        log.warning("%s is not checked by llama.cpp (%s)", path.name, llamacpp.INSTALL_HINT)
        return
    rows, same_tokens = llamacpp.llama_outputs(path, prompts, eos, [r["seq"] for r in reference], lora)
    stats = {**compare(reference, rows), "tokenizer_match": same_tokens}
    report["checks"][f"llamacpp-lora-{quant}" if lora else f"llamacpp-{quant}"] = {
        **stats,
        "precision": quant,
        "file": (lora or path).name,
        "broken": judge(stats, quant),
    }


def export_lora_pair(
    model, tokenizer, meta, paths: tuple[Path, Path], quant: str, name: str, prompts, reference, report
):
    """The unmerged base GGUF + the LoRA GGUF (gguf_lora.py), judged like the merged file: reloaded by
    transformers with the LoRA added as llama.cpp adds it (`gguf-lora-QUANT`), and by llama.cpp."""
    base_path, lora_path = write_lora_pair(model, tokenizer, *paths, quant, name, meta)
    eos, seqs = end_token_ids(tokenizer), [r["seq"] for r in reference]
    folded, _ = load_folded(base_path, lora_path)
    stats = compare(reference, model_outputs(folded, prompts, eos, tokenizer.pad_token_id, seqs))
    del folded
    report["checks"][f"gguf-lora-{quant}"] = {
        **stats,
        "precision": quant,
        "file": lora_path.name,
        "size_bytes": lora_path.stat().st_size,
        "base_file": base_path.name,
        "base_size_bytes": base_path.stat().st_size,
        "broken": judge(stats, quant),
    }
    check_with_llamacpp(report, base_path, quant, prompts, reference, eos, lora=lora_path)


def export_run(
    run: str | Path, fmt: str = "gguf", quant: str | None = None, out: str | Path | None = None
) -> Path:
    """Write the artifact for `fmt` (safetensors, gguf, ollama) with parity.json; returns its directory."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    quant = quant or DEFAULT_QUANT[fmt]
    if quant not in QUANTS:
        raise ExportError(f"--quant {quant}: choose one of {', '.join(QUANTS)}")
    if fmt == "safetensors":
        return merge_run(run, out)
    refusal = lora_refusal(run)  # before any model loads
    if fmt == "gguf-lora" and (refusal or quant not in LORA_QUANTS):
        raise ExportError(refusal or f"--format gguf-lora --quant {quant}: choose {', '.join(LORA_QUANTS)}")
    out_dir = Path(out) if out else run_dir_of(run) / fmt
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer, meta, prompts, reference, report = prepare(run)
    name = run_dir_of(run).name
    if fmt == "gguf-lora":
        base = f"{Path(str(meta.base_model)).name}-{quant}.gguf"
        paths = (out_dir / base, out_dir / f"{name}-lora-{quant}.gguf")
        export_lora_pair(model, tokenizer, meta, paths, quant, name, prompts, reference, report)
        write_parity(out_dir, report)
        return out_dir
    if fmt == "ollama" and not refusal:  # the Modelfile.adapter variant: FROM the base, ADAPTER the LoRA
        paths = (out_dir / "base.gguf", out_dir / "adapter-lora.gguf")
        try:
            export_lora_pair(model, tokenizer, meta, paths, "f16", name, prompts, reference, report)
        except ExportError as e:  # what only the loaded modules show (a regex target_modules)
            refusal = str(e)
    if fmt == "ollama" and refusal:
        report["ollama_adapter"] = f"no Modelfile.adapter: {refusal}"
        log.info("ollama: no Modelfile.adapter (%s)", refusal)
    eos, pad = end_token_ids(tokenizer), tokenizer.pad_token_id
    seqs = [r["seq"] for r in reference]
    has_adapter = hasattr(model, "merge_and_unload")
    merged = merge_model(model)
    if has_adapter:
        stats = compare(reference, model_outputs(merged, prompts, eos, pad, seqs))
        report["checks"]["merged"] = {**stats, "precision": "f32", "broken": judge(stats, "f32")}
    gguf_path = out_dir / ("model.gguf" if fmt == "ollama" else f"{name}-{quant}.gguf")
    write_quantized(merged, tokenizer, gguf_path, quant, name, meta)
    n_ctx = min(int(merged.config.max_position_embeddings), 4096)
    del merged, model

    reloaded, gguf_tokenizer = load_gguf(gguf_path)
    stats = compare(reference, model_outputs(reloaded, prompts, eos, pad, seqs))
    stats["tokenizer_match"] = all(
        gguf_tokenizer(p["text"], add_special_tokens=False)["input_ids"] == p["prompt_ids"] for p in prompts
    )
    stats["chat_template_match"] = gguf_tokenizer.chat_template == (
        meta.chat_template or tokenizer.chat_template
    )
    report["checks"][f"gguf-{quant}"] = {
        **stats,
        "precision": quant,
        "file": gguf_path.name,
        "size_bytes": gguf_path.stat().st_size,
        "tensor_types": llamacpp.tensor_types(gguf_path),
        "broken": judge(stats, quant),
    }
    del reloaded
    check_with_llamacpp(report, gguf_path, quant, prompts, reference, eos)
    if fmt == "ollama":
        template = meta.chat_template or tokenizer.chat_template
        (out_dir / "Modelfile").write_text(
            modelfile_text(tokenizer, template, meta.system_prompt, gguf_path.name, n_ctx)
        )
        if not refusal:
            text = modelfile_text(
                tokenizer, template, meta.system_prompt, "base.gguf", n_ctx, "adapter-lora.gguf"
            )
            (out_dir / "Modelfile.adapter").write_text(text)
    write_parity(out_dir, report)
    log.info("%s written to %s", fmt, out_dir)
    return out_dir
