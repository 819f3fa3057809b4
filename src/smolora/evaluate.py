"""Base vs fine-tuned, side by side, on the same held-out prompts.

The held-out set is `data.val_path` when the run has one, else the same seeded split the
training used. The base model's answers come from the very same weights with the adapter
switched off, so the only difference between the two columns is the fine-tune.

Run as:
    result = evaluate_run("runs/quickstart")
    print(result["metrics"]["fine_tuned"]["exact_match"])
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from smolora.config import RunConfig, load_config
from smolora.errors import DatasetError, SmoLoRAError


def normalize(text: str) -> str:
    return " ".join(text.strip().split()).lower()


def exact_match(predictions: list[str], references: list[str]) -> float:
    if not references:
        return 0.0
    return sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)) / len(
        references
    )


METRICS = {"exact_match": exact_match}


def held_out(cfg: RunConfig, data_path: str | None = None) -> list[dict[str, Any]]:
    """Prompt/reference pairs: the conversation up to the last answer, and that answer."""
    from smolora.data.pipeline import load_examples, split_examples

    if data_path or cfg.data.val_path:
        examples, *_ = load_examples(data_path or cfg.data.val_path, cfg.data)
    else:
        examples, *_ = load_examples(cfg.data.path, cfg.data)
        _, examples = split_examples(examples, cfg.data.val_ratio, cfg.train.seed)
    pairs = []
    for ex in examples:
        messages = ex.get("messages")
        if not messages or messages[-1]["role"] != "assistant":
            continue
        pairs.append(
            {"messages": messages[:-1], "reference": messages[-1]["content"], "domain": ex.get("domain")}
        )
    if not pairs:
        raise DatasetError(
            "no held-out prompt/answer pairs to evaluate; pass --data FILE with prompt and answer fields"
        )
    return pairs[: cfg.eval.max_examples]


def run_config(run_dir: Path) -> RunConfig:
    if not (run_dir / "config.yaml").exists():
        raise SmoLoRAError(
            f"{run_dir} is not a run directory (no config.yaml); train one with: smolora train CONFIG"
        )
    return load_config(run_dir / "config.yaml")


def _generate_all(model, tokenizer, pairs: list[dict], cfg: RunConfig) -> list[str]:
    from smolora.generate import generate

    out: list[str] = [""] * len(pairs)
    # Group by domain so each batch shares one domain tag.
    for domain in {p["domain"] for p in pairs}:
        idx = [i for i, p in enumerate(pairs) if p["domain"] == domain]
        answers = generate(
            model,
            tokenizer,
            [pairs[i]["messages"] for i in idx],
            max_new_tokens=cfg.eval.max_new_tokens,
            batch_size=cfg.eval.batch_size,
            domain=domain,
            system_prompt=cfg.data.system_prompt,
        )
        for i, a in zip(idx, answers, strict=True):
            out[i] = a
    return out


def evaluate_run(run_dir: str | Path, data_path: str | None = None) -> dict[str, Any]:
    """Generate with base and fine-tuned model, score both, write eval/metrics.json."""
    from smolora.model.load import load_for_inference

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    pairs = held_out(cfg, data_path)
    model, tokenizer, meta = load_for_inference(run_dir)
    tuned = _generate_all(model, tokenizer, pairs, cfg)
    # Same weights, adapter off: the base model exactly as training started from it.
    off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    with off:
        base = _generate_all(model, tokenizer, pairs, cfg)
    refs = [p["reference"] for p in pairs]
    metrics = {
        "base": {name: fn(base, refs) for name, fn in METRICS.items()},
        "fine_tuned": {name: fn(tuned, refs) for name, fn in METRICS.items()},
        "n": len(pairs),
    }
    samples = [
        {"prompt": p["messages"][-1]["content"], "reference": r, "base": b, "fine_tuned": t}
        for p, r, b, t in zip(pairs, refs, base, tuned, strict=True)
    ]
    out_dir = run_dir / "eval"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return {"metrics": metrics, "samples": samples, "dir": out_dir}
