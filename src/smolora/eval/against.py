"""`smolora eval RUN --against OTHER`: other runs scored on the very rows RUN was just scored on.

A combined run (export/combine.py) is judged against its parents: did it keep what each of them
learned? So eval scores every parent too (or the runs named by --against) with RUN's own
settings (template, max_length, max_new_tokens, system prompt) on RUN's held-out rows, or on
`--data`, and adds them to RUN/eval/metrics.json under `against`. Only the answer metrics (loss,
perplexity, exact match, ROUGE, ...); lm-eval and preference numbers stay RUN's own.

Run as:
    against = score_against("runs/orders+country-cat", parent_runs("runs/orders+country-cat"))
    against["orders"]["exact_match"]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from smolora.errors import SmoLoRAError
from smolora.runs import EVAL_DIR, EVAL_METRICS, find_adapter_dir, read_meta, require_run, run_dir_of

log = logging.getLogger("smolora")
COMBINED = "combined"  # the smolora.json key (AdapterMeta.extra) where export/combine.py keeps the lineage


def against_runs(run: str | Path, named: list[str] | None) -> list[Path]:
    """--against RUN..., else a combined run's parents; each checked before a model loads."""
    runs = [Path(r) for r in named] if named else parent_runs(run)
    for r in runs:
        if find_adapter_dir(r) is None:
            raise SmoLoRAError(
                f"--against {r}: not a finished run or adapter directory (no adapter/smolora.json)"
            )
    names = [run_dir_of(r).name for r in runs]
    if len(set(names)) < len(names):
        raise SmoLoRAError(f"--against: two runs are named alike ({', '.join(names)}); name each run once")
    return runs


def score_against(
    run: str | Path,
    others: list[Path],
    data_path: str | None = None,
    split: str = "validation",
    overrides: list[str] | None = None,
) -> dict[str, dict[str, float]]:
    """{name: scores} of each other run on RUN's evaluation rows, written into RUN/eval/metrics.json."""
    from smolora.eval.evaluate import (
        answer_loss,
        generate_answers,
        held_out_examples,
        prompt_pairs,
        run_config,
        score,
    )
    from smolora.model.load import load_for_inference

    run_dir = require_run(run)
    cfg = run_config(run_dir, overrides)
    examples = held_out_examples(cfg, data_path, split)  # the rows evaluate_run scored RUN on
    pairs = prompt_pairs(examples)
    refs = [p["reference"] for p in pairs]
    out: dict[str, dict[str, float]] = {}
    for other in others:
        model, tokenizer, _ = load_for_inference(other)
        scores = answer_loss(model, tokenizer, examples, cfg)
        if pairs:
            scores.update(score(generate_answers(model, tokenizer, pairs, cfg), refs))
        out[run_dir_of(other).name] = scores
        log.info("against %s: %s", other, ", ".join(f"{k} {v:.3f}" for k, v in list(scores.items())[:4]))
        del model
    path = run_dir / EVAL_DIR / EVAL_METRICS
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics["against"] = {name: {"run": str(o), **out[name]} for name, o in zip(out, others, strict=True)}
    path.write_text(json.dumps(metrics, indent=2))
    return out


def against_rows(metrics: dict[str, Any], against: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One row per metric: base, each other run, this run (the table eval prints)."""
    rows = []
    for name, tuned in metrics["fine_tuned"].items():
        if all(name in scores for scores in against.values()):
            others = {k: v[name] for k, v in against.items()}
            rows.append({"name": name, "base": metrics["base"].get(name), "others": others, "run": tuned})
    return rows


def combined_lineage(run: str | Path) -> dict[str, Any] | None:
    """smolora.json's `combined` block of a combined run (None for a trained one)."""
    adapter_dir = find_adapter_dir(run)
    return read_meta(adapter_dir).extra.get(COMBINED) if adapter_dir else None


def parent_runs(run: str | Path) -> list[Path]:
    """The parents of a combined run, where they are now (their recorded path, else beside it by name)."""
    lineage = combined_lineage(run) or {}
    found = []
    for p in lineage.get("parents", []):
        recorded, sibling = Path(p["path"]), Path(run).resolve().parent / p["name"]
        found.append(recorded if recorded.is_dir() else sibling)
    return found
