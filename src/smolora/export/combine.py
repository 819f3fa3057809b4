"""Adapter arithmetic: two or more runs' LoRA adapters combined into a new run (PEFT's add_weighted_adapter).

The parents are loaded onto their one base, PEFT combines them with the given weights, and only
the result is saved: a run directory like a trained one (`adapter/` in PEFT format with
smolora.json, `config.yaml` from the first parent), so eval, chat, serve, merge and export take
it as they are. smolora.json keeps the parents, weights and method under `combined`, and
`smolora eval` scores the parents beside it on the same rows (eval/against.py).

Everything that can be refused is refused before a model loads: different bases (sha256 in
smolora.json, or the name when a parent recorded none), different layer surgery, adapters
add_weighted_adapter gets wrong (PEFT 0.21 keeps use_rslora's sqrt(r) scaling for the result, and
drops DoRA's magnitudes and lora_bias: huggingface/peft#3761) or has nothing to combine (full,
freeze), unequal ranks where PEFT needs equal ones, a weight count that is not the run count.

Run as:
    combine_runs(["runs/orders", "runs/country"], [0.7, 0.3], "cat")   # -> runs/orders+country-cat
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from smolora.errors import ExportError
from smolora.eval.against import COMBINED
from smolora.runs import (
    ADAPTER_DIR,
    CONFIG_FILE,
    AdapterMeta,
    find_adapter_dir,
    is_marked,
    mark_run,
    publish_run,
    read_config,
    read_meta,
    remove_run,
    require_marked,
    require_run,
    staging_dir,
    write_meta,
)

log = logging.getLogger("smolora")

# --combine NAME -> what PEFT does with the parents (add_weighted_adapter's combination_type).
COMBINES = {
    "linear": "A and B matrices weighted and summed apart (fast, a rough approximation); equal ranks",
    "cat": "the adapters side by side: exactly the weighted sum of their updates; rank = sum of ranks",
    "svd": "the weighted sum of the updates, cut back to the largest parent rank by SVD",
    "ties": "TIES: keep the largest --density of each update, elect one sign per entry; equal ranks",
    "dare_ties": "DARE + TIES: drop 1 - --density of each update at random, rescale, elect signs; equal ranks",
}
SAME_RANK = ("linear", "ties", "dare_ties")  # PEFT combines A and B entrywise: shapes must agree
USES_DENSITY = ("ties", "dare_ties")
DEFAULT_DENSITY = 0.5
SEED = 0  # dare_ties drops entries at random: the same parents give the same adapter


def parse_weights(text: str | None, n: int) -> list[float] | None:
    """--weights 0.7,0.3 -> [0.7, 0.3]; None when not given (combine_runs then averages)."""
    if text is None:
        return None
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise ExportError(f"--weights {text}: comma-separated numbers, one per run, e.g. 0.7,0.3") from None
    if len(weights) != n:
        raise ExportError(f"--weights {text}: {len(weights)} weights for {n} runs; give one per run")
    return weights


def check_options(n_runs: int, combine: str, density: float | None) -> float | None:
    """The density PEFT gets; every bad combination of options refused in one line."""
    if n_runs < 2:
        raise ExportError(f"--combine needs two or more runs, got {n_runs}; `smolora merge RUN` merges one")
    if combine not in COMBINES:
        raise ExportError(f"--combine {combine}: choose one of {', '.join(COMBINES)}")
    if combine not in USES_DENSITY:
        if density is not None:
            raise ExportError(f"--density is used by --combine {' or '.join(USES_DENSITY)}, not {combine}")
        return None
    if density is None:
        return DEFAULT_DENSITY
    if not 0 < density <= 1:
        raise ExportError(f"--density {density}: the share of each update kept, in (0, 1]")
    return density


def adapter_kind(adapter_dir: Path, meta: AdapterMeta) -> dict[str, Any]:
    """The parent's adapter_config.json, or why add_weighted_adapter cannot combine it."""
    path = adapter_dir / "adapter_config.json"
    if not path.exists():
        raise ExportError(
            f"{adapter_dir}: lora.method={meta.method} saved whole weights, not an adapter; "
            "only LoRA adapters can be combined"
        )
    config = json.loads(path.read_text())
    wrong = [
        why
        for why, bad in (
            (f"peft_type {config.get('peft_type')}", config.get("peft_type") != "LORA"),
            ("use_dora (DoRA)", config.get("use_dora")),
            ("use_rslora (rsLoRA)", config.get("use_rslora")),
            ("lora_bias", config.get("lora_bias")),
            ("modules_to_save", config.get("modules_to_save")),
        )
        if bad
    ]
    if wrong:
        raise ExportError(
            f"{adapter_dir}: {', '.join(wrong)}: PEFT's add_weighted_adapter cannot combine it correctly "
            "(huggingface/peft#3761); combine plain LoRA, PiSSA or OLoRA runs"
        )
    return config


def rank_of(config: dict[str, Any]) -> int:
    return max([int(config["r"]), *[int(r) for r in (config.get("rank_pattern") or {}).values()]])


def check_parents(runs: list[str | Path], combine: str) -> list[dict[str, Any]]:
    """Each parent's run dir, adapter dir, meta and adapter config, once they are known to fit together."""
    parents = []
    for run in runs:
        run_dir = require_run(run)
        adapter_dir = find_adapter_dir(run_dir)
        if adapter_dir is None:
            raise ExportError(f"{run_dir} has no adapter yet (no {ADAPTER_DIR}/); finish training it first")
        meta = read_meta(adapter_dir)
        parents.append(
            {"run": run_dir, "adapter": adapter_dir, "meta": meta, "config": adapter_kind(adapter_dir, meta)}
        )
    first = parents[0]
    for p in parents[1:]:
        a, b = first["meta"], p["meta"]
        same_base = (
            a.base_sha256 == b.base_sha256
            if a.base_sha256 and b.base_sha256
            else a.base_model == b.base_model
        )
        if not same_base:
            raise ExportError(
                f"{p['run']} was trained on {b.base_model} (sha256 {b.base_sha256}), {first['run']} on "
                f"{a.base_model} (sha256 {a.base_sha256}); only adapters of one base can be combined"
            )
        if (list(a.drop_layers), a.keep_layers) != (list(b.drop_layers), b.keep_layers):
            raise ExportError(
                f"{p['run']} has layer surgery drop_layers {b.drop_layers} / keep_layers {b.keep_layers}, "
                f"{first['run']} {a.drop_layers} / {a.keep_layers}; only adapters of the same layers combine"
            )
    ranks = [rank_of(p["config"]) for p in parents]
    if combine in SAME_RANK and len(set(ranks)) > 1:
        raise ExportError(
            f"--combine {combine} needs equal ranks, the runs have r = {', '.join(map(str, ranks))}; "
            "use --combine cat or svd"
        )
    if len(set(p["run"].resolve() for p in parents)) < len(parents):
        raise ExportError("the same run is given twice; name each run once (weights add up per run)")
    return parents


def default_out(parents: list[dict[str, Any]], combine: str) -> Path:
    """runs/A+B-cat: beside the first parent, named for the parents and the method."""
    return parents[0]["run"].parent / f"{'+'.join(p['run'].name for p in parents)}-{combine}"


def check_out(out: Path, parents: list[dict[str, Any]]) -> None:
    """An existing --out is replaced only when it is a run SmoLoRA made, and never a parent."""
    if any(out.resolve() == p["run"].resolve() for p in parents):
        raise ExportError(f"--out {out} is one of the runs being combined; pick a new directory")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; pick a directory")
    if out.is_dir() and any(out.iterdir()) and not is_marked(out):
        require_marked(out)  # the one-line refusal runs.py words for every run directory


def combined_meta(parents: list[dict[str, Any]], weights: list[float], combine: str, density) -> AdapterMeta:
    """The first parent's base, surgery, template and system prompt; the lineage under `combined`."""
    from smolora.train.result import library_versions

    first: AdapterMeta = parents[0]["meta"]
    for p in parents[1:]:
        if p["meta"].chat_template != first.chat_template or p["meta"].system_prompt != first.system_prompt:
            log.warning(
                "%s was trained with another chat template or system prompt; the combined run uses %s's",
                p["run"],
                parents[0]["run"].name,
            )
    lineage = {
        "parents": [
            {
                "name": p["run"].name,
                "path": str(p["run"].resolve()),
                "r": rank_of(p["config"]),
                "data_fingerprint": p["meta"].data_fingerprint,
                "task": p["meta"].task,
            }
            for p in parents
        ],
        "weights": weights,
        "combine": combine,
        "density": density,
        "seed": SEED if combine == "dare_ties" else None,
    }
    return AdapterMeta(
        base_model=first.base_model,
        base_sha256=first.base_sha256,
        method="lora",
        drop_layers=list(first.drop_layers),
        keep_layers=first.keep_layers,
        chat_template=first.chat_template,
        system_prompt=first.system_prompt,
        data_format=first.data_format,
        versions=library_versions(),
        task=first.task,
        extra={COMBINED: lineage},
    )


def combine_adapters(
    parents: list[dict[str, Any]], weights: list[float], combine: str, density, out_adapter: Path
) -> int:
    """Load the parents onto their base, add_weighted_adapter, save the result alone; returns its rank."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from smolora.config import ModelSection
    from smolora.model.lineage import check_lineage
    from smolora.model.load import load_base
    from smolora.model.store import resolve_model

    first: AdapterMeta = parents[0]["meta"]
    for p in parents:
        check_lineage(p["meta"], p["adapter"], resolve_model(first.base_model))
    section = ModelSection(
        name=first.base_model, drop_layers=first.drop_layers, keep_layers=first.keep_layers
    )
    base, _ = load_base(section, device="cpu")  # float32 on the CPU: SVD and sign election need floats
    names = [f"parent{i}" for i in range(len(parents))]
    model = PeftModel.from_pretrained(base, str(parents[0]["adapter"]), adapter_name=names[0])
    for name, p in zip(names[1:], parents[1:], strict=True):
        model.load_adapter(str(p["adapter"]), adapter_name=name)
    torch.manual_seed(SEED)
    try:
        # named "default" so save_pretrained writes it at the top of the directory, as PEFT loads it
        model.add_weighted_adapter(names, weights, "default", combination_type=combine, density=density)
    except (ValueError, TypeError) as e:
        raise ExportError(f"PEFT cannot combine these adapters with --combine {combine}: {e}") from None
    model.save_pretrained(str(out_adapter), selected_adapters=["default"], safe_serialization=True)
    AutoTokenizer.from_pretrained(str(parents[0]["adapter"])).save_pretrained(str(out_adapter))
    return int(model.peft_config["default"].r)


def combine_runs(
    runs: list[str | Path],
    weights: list[float] | None = None,
    combine: str = "cat",
    density: float | None = None,
    out: str | Path | None = None,
) -> Path:
    """A new run directory holding the parents' adapters combined; returns its path."""
    density = check_options(len(runs), combine, density)
    weights = weights if weights is not None else [1.0 / len(runs)] * len(runs)
    if len(weights) != len(runs):
        raise ExportError(f"--weights: {len(weights)} weights for {len(runs)} runs; give one per run")
    parents = check_parents(runs, combine)
    final = Path(out) if out else default_out(parents, combine)
    check_out(final, parents)
    staged = staging_dir(final)
    mark_run(staged)
    try:
        rank = combine_adapters(parents, weights, combine, density, staged / ADAPTER_DIR)
        write_meta(staged / ADAPTER_DIR, combined_meta(parents, weights, combine, density))
        write_config(parents[0]["run"], staged / CONFIG_FILE, final, rank)
    except BaseException:
        remove_run(staged)  # ours: marked above
        raise
    if final.is_dir() and not is_marked(final):
        os.replace(staged, final)  # an empty directory the user named: a rename takes its place
    else:
        publish_run(staged, final)  # a SmoLoRA run there becomes NAME.previous, as a re-run does
    log.info(
        "combined %s (%s, weights %s) into %s",
        ", ".join(str(p["run"]) for p in parents),
        combine,
        weights,
        final,
    )
    return final


def write_config(first_run: Path, path: Path, final: Path, rank: int) -> None:
    """The first parent's config.yaml (its data and eval settings), named and sized for the new adapter."""
    cfg = read_config(first_run)
    cfg.setdefault("output", {}).update({"dir": str(final.parent), "name": final.name})
    cfg.setdefault("lora", {}).update({"method": "lora", "r": rank, "alpha": float(rank)})  # PEFT: alpha = r
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
