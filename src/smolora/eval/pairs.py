"""Preference pairs from an SFT dataset: the reference answer is `chosen`, the run's own sample `rejected`.

The cheapest DPO data there is: every prompt of a dataset the run was (or could be) trained on,
its reference answer as the better one and what the run's model samples for it as the worse.
A pair is kept only when the two differ after `eval.metrics.normalize` (a model that already
gives the reference has nothing to learn from that prompt). The file is read exactly as SFT
training reads it (load_examples with the run's data settings), answers are sampled in
batches of `eval.batch_size`, seeded, and the JSONL lines `{"prompt", "chosen", "rejected"}`
(plus `system` / `domain` when the example had one) are written all at once: a temp file beside
the output, then a rename, so a failure leaves no partial file. `load_preference(out, ...,
"dpo")` reads the result.

Run as:
    result = build_pairs("runs/quickstart", "examples/data/quickstart_train.jsonl")
    print(result["out"], result["counts"]["pairs"])
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from smolora.errors import DatasetError, SmoLoRAError

log = logging.getLogger("smolora")

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".txt", ".gz", ".zst", ".bz2", ".xz")
CHUNK_BATCHES = 4  # batches per generate() call: progress is logged between calls


def default_out(data_path: str) -> Path:
    """DATA's name without its data suffixes + ".pairs.jsonl", beside it (train.jsonl.gz -> train.pairs.jsonl)."""
    from smolora.data.read import is_hub_name

    p = Path(data_path)
    if is_hub_name(data_path) or any(c in data_path for c in "*?[") or p.is_dir():
        raise SmoLoRAError(f"{data_path} is not one file: say where the pairs go with --out FILE.jsonl")
    name = p.name
    while name.lower().endswith(SUFFIXES):
        name = name[: name.rindex(".")]
    return p.with_name(f"{name or 'data'}.pairs.jsonl")


def check_out(out: Path, data_path: str) -> Path:
    """`out`, refused when it is an input file (the pairs would replace the data they come from) or a folder."""
    from smolora.data.files import expand_paths
    from smolora.data.read import is_hub_name

    if out.is_dir():
        raise SmoLoRAError(f"--out {out} is a directory: give a file name, e.g. {out / 'pairs.jsonl'}")
    inputs = [] if is_hub_name(data_path) else expand_paths(data_path)
    for f in inputs:
        same = f.resolve() == out.resolve() or (out.exists() and f.exists() and os.path.samefile(f, out))
        if same:
            raise SmoLoRAError(
                f"--out {out} is the input data itself: the pairs would replace it; choose another file"
            )
    return out


def prompt_fields(messages: list[dict]) -> dict[str, Any]:
    """The prompt columns of one line: the user turn as text (the earlier turns as a message list when
    there are several), and the system prompt as `system`."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    prompt: Any = turns[0]["content"] if len(turns) == 1 else turns
    return {"prompt": prompt, **({"system": system[0]} if system else {})}


def sample_answers(
    model, tokenizer, pairs: list[dict], cfg, temperature: float, max_new_tokens: int
) -> list[str]:
    """One sampled answer per prompt, in input order; batches of eval.batch_size, progress logged."""
    from smolora.generate import generate

    out: list[str] = [""] * len(pairs)
    # Shortest prompts first and one domain per call: little padding, one domain tag per batch.
    order = sorted(range(len(pairs)), key=lambda i: (str(pairs[i]["domain"]), len(str(pairs[i]["messages"]))))
    step = cfg.eval.batch_size * CHUNK_BATCHES
    done, t0 = 0, time.perf_counter()
    for domain in dict.fromkeys(pairs[i]["domain"] for i in order):
        idx = [i for i in order if pairs[i]["domain"] == domain]
        for start in range(0, len(idx), step):
            part = idx[start : start + step]
            answers = generate(
                model,
                tokenizer,
                [pairs[i]["messages"] for i in part],
                max_new_tokens=max_new_tokens,
                batch_size=cfg.eval.batch_size,
                do_sample=True,
                temperature=temperature,
                domain=domain,
                system_prompt=cfg.data.system_prompt,
            )
            for i, a in zip(part, answers, strict=True):
                out[i] = a
            done += len(part)
            log.info("sampled %d/%d answers (%.0f s)", done, len(pairs), time.perf_counter() - t0)
    return out


def pair_rows(pairs: list[dict], answers: list[str]) -> tuple[list[dict], dict[str, int]]:
    """The lines to write, and how many prompts were skipped because the sample was the reference or empty."""
    from smolora.eval.metrics import normalize

    rows, same, empty = [], 0, 0
    for p, answer in zip(pairs, answers, strict=True):
        if not answer.strip():
            empty += 1  # load_preference would drop it: an empty answer teaches nothing
            continue
        if normalize(answer) == normalize(p["reference"]):
            same += 1
            continue
        row = {**prompt_fields(p["messages"]), "chosen": p["reference"], "rejected": answer}
        rows.append({**row, **({"domain": p["domain"]} if p["domain"] else {})})
    return rows, {"same": same, "empty_answer": empty}


def build_pairs(
    run: str | Path,
    data_path: str,
    out: str | Path | None = None,
    max_examples: int | None = None,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    seed: int | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Write the pairs file; return {"out", "counts", "seconds", ...}. Bad input fails before the model loads.

    max_new_tokens defaults to the run's eval.max_new_tokens, seed to its train.seed; a reference
    longer than max_new_tokens is compared with a cut sample (so it differs): raise it for long answers.
    """
    import torch

    from smolora.data.encode import load_examples
    from smolora.data.formats import ROLES
    from smolora.durable import write_atomic
    from smolora.eval.evaluate import prompt_pairs, require_adapter, run_config
    from smolora.generate import sampling_kwargs
    from smolora.model.load import load_for_inference
    from smolora.runs import require_run

    run_dir = require_run(run)
    cfg = run_config(run_dir, overrides)
    require_adapter(run_dir)
    sampling_kwargs(True, temperature)  # a bad temperature fails here, not after the model loads
    target = check_out(Path(out) if out else default_out(data_path), data_path)
    data = cfg.data
    if cfg.train.objective != "sft":  # a preference run's fields name pair columns: not this SFT file's
        data = data.model_copy(update={"fields": {k: v for k, v in data.fields.items() if k in ROLES}})
    if max_examples is not None:
        data = data.model_copy(update={"max_examples": max_examples})
    examples, fmt, _, counts = load_examples(data_path, data)
    pairs = prompt_pairs(examples)
    if not pairs:
        raise DatasetError(
            f"{data_path}: no prompt/answer examples (read as {fmt}): pairs need a reference answer to "
            "prefer; give a qa, alpaca, messages or sharegpt file"
        )
    model, tokenizer, _ = load_for_inference(run_dir)
    new_tokens = max_new_tokens or cfg.eval.max_new_tokens
    torch.manual_seed(cfg.train.seed if seed is None else seed)
    t0 = time.perf_counter()
    answers = sample_answers(model, tokenizer, pairs, cfg, temperature, new_tokens)
    seconds = round(time.perf_counter() - t0, 1)
    rows, skipped = pair_rows(pairs, answers)
    total = {
        "read": counts["input"],
        "dropped_by_cleaning": counts["input"] - len(examples),
        "no_answer": len(examples) - len(pairs),
        "prompts": len(pairs),
        "pairs": len(rows),
        **skipped,
    }
    if not rows:
        raise SmoLoRAError(
            f"no pairs to write: for all {len(pairs)} prompts the model's sample was the reference "
            f"({skipped['same']}) or empty ({skipped['empty_answer']}); raise --temperature or use another run"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_atomic(target, text, best_effort=True)
    return {
        "out": target,
        "format": fmt,
        "counts": total,
        "seconds": seconds,
        "temperature": temperature,
        "max_new_tokens": new_tokens,
        "seed": cfg.train.seed if seed is None else seed,
    }
