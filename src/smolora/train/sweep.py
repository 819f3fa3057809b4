"""`smolora sweep`: a grid of runs over config keys, trained one after another, then compared.

A `--set KEY=A,B,C` whose value is a plain comma list is an axis of the grid; every other `--set`
(a single value, or a YAML/JSON list like `lora.targets=[q_proj,v_proj]`) applies to every run.
The runs are the cartesian product of the axes, each in its own run directory inside
`output.dir/<output.name>-sweep/`, named from its axis values (`lr=1e-4,epochs=1`). Re-running the
same sweep skips the runs that finished (their adapter is saved) and resumes an interrupted one
from its last checkpoint. At the end `sweep.json` and `sweep.png` compare them; the best is the
lowest validation loss of the checkpoint each run kept.

Run as:
    grid = expand_grid(["train.lr=1e-4,1e-3", "train.epochs=1,3", "lora.r=8"])   # 4 runs
    result = run_sweep("examples/quickstart.yaml", ["train.lr=1e-4,1e-3", "train.max_steps=10"])
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smolora.config import RunConfig, load_config
from smolora.durable import write_atomic
from smolora.errors import ConfigError
from smolora.runs import ADAPTER_DIR, METRICS_FILE, is_adapter_dir, read_jsonl, run_summary
from smolora.train.checkpoints import good_checkpoint

log = logging.getLogger("smolora")

MAX_RUNS = 64  # a typo like lr=1e-5,...(20 values) x 5 axes is days of training: say so first
SWEEP_FILE = "sweep.json"
SWEEP_PLOT = "sweep.png"
MAX_NAME = 100  # run names stay well under the 255-byte file name limit


def is_axis(raw: str) -> bool:
    """A plain comma list (`1e-4,3e-4`) is an axis; a YAML/JSON list, mapping or quoted text is one value."""
    text = raw.strip()
    return "," in text and text[:1] not in "[{\"'"


def split_sets(sets: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The `--set`s that apply to every run, and the axes {key: [raw values]} in the order given.

    An axis wins over a single `--set` of the same key (the axes are applied last).
    """
    plain: list[str] = []
    axes: dict[str, list[str]] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4,3e-4")
        if not is_axis(raw):
            plain.append(item)
            continue
        values = [v.strip() for v in raw.split(",")]
        if any(not v for v in values):
            raise ConfigError(f"--set {item!r}: an empty value in the list; write {key}=A,B,C")
        if len(set(values)) < len(values):
            raise ConfigError(f"--set {item!r}: a value is listed twice")
        if key in axes:
            raise ConfigError(f"--set {key}: two lists; give all its values in one --set {key}=A,B")
        check_key(key)
        axes[key] = values
    return plain, axes


def check_key(key: str) -> None:
    """An axis must name a known config key: a typo would train the same run N times."""
    parts = key.split(".")
    sections = RunConfig.model_fields
    if len(parts) != 2 or parts[0] not in sections:
        raise ConfigError(
            f"--set {key}: not a config key; an axis is SECTION.KEY like train.lr "
            f"(sections: {', '.join(sections)})"
        )
    section, name = parts
    if section == "output":
        raise ConfigError(f"--set {key}: output.* cannot be an axis; the sweep names each run itself")
    known = list(sections[section].annotation.model_fields)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {section}.{close[0]}?)" if close else ""
        raise ConfigError(f"--set {key}: unknown key in {section}{hint}")


def expand_grid(sets: list[str]) -> list[dict[str, str]]:
    """Every combination of the axes' values, first axis outermost: [{key: raw value}, ...]."""
    _, axes = split_sets(sets)
    if not axes:
        raise ConfigError(
            "nothing to sweep: give at least one --set KEY=A,B (a comma list), e.g. --set train.lr=1e-4,1e-3"
        )
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def run_name(point: dict[str, str]) -> str:
    """A readable, filesystem-safe folder name: `lr=1e-4,epochs=1` (the full key when two share a name)."""
    short = [k.rpartition(".")[2] for k in point]
    parts = []
    for key, label, value in zip(point, short, point.values(), strict=True):
        label = key if short.count(label) > 1 else label
        parts.append(f"{label}={re.sub(r'[^A-Za-z0-9._+-]', '-', value)}")
    name = ",".join(parts)
    if len(name) > MAX_NAME:  # many axes: keep the start readable, a digest keeps it unique
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9]}-{digest}"
    return name


def plan_sweep(
    cfg_path: str | Path, sets: list[str], max_runs: int | None = None
) -> tuple[Path, list[tuple[dict[str, str], RunConfig]]]:
    """The sweep directory and each run's validated config, before anything trains."""
    plain, _ = split_sets(sets)
    grid = expand_grid(sets)
    limit = max_runs or MAX_RUNS
    if len(grid) > limit:
        flag = f"--max-runs {len(grid)}"
        raise ConfigError(
            f"the grid has {len(grid)} runs, more than {limit}; drop some values or pass {flag}"
            if max_runs is None
            else f"the grid has {len(grid)} runs, more than --max-runs {max_runs}; pass {flag}"
        )
    base = load_config(cfg_path, plain)
    sweep_dir = Path(base.output.dir) / f"{base.output.name}-sweep"
    planned, names = [], {}
    for point in grid:
        name = run_name(point)
        if name in names:
            raise ConfigError(f"the runs {names[name]} and {point} get the same folder name {name!r}")
        names[name] = point
        cfg = load_config(cfg_path, [*plain, *(f"{k}={v}" for k, v in point.items())])
        cfg.output.dir = str(sweep_dir)
        cfg.output.name = name  # validated on assignment, like any output.name
        planned.append((point, cfg))
    return sweep_dir, planned


def run_sweep(
    cfg_path: str | Path,
    sets: list[str],
    max_runs: int | None = None,
    show_progress: bool = True,
    say: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Train every run of the grid not yet finished, then write sweep.json and sweep.png; the summary back."""
    from smolora.train.recipe import train

    sweep_dir, planned = plan_sweep(cfg_path, sets, max_runs)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    statuses = []
    for i, (_, cfg) in enumerate(planned, 1):
        run_dir = cfg.run_dir
        head = f"[{i}/{len(planned)}] {cfg.output.name}"
        if is_adapter_dir(run_dir / ADAPTER_DIR):
            say(f"{head}: finished before, skipped")
            statuses.append("skipped")
            continue
        resume = run_dir.is_dir() and good_checkpoint(run_dir)[0] is not None
        say(f"{head}: {'resuming from its last checkpoint' if resume else 'training'}")
        train(cfg, resume=resume, show_progress=show_progress)
        statuses.append("resumed" if resume else "trained")
    result = summarize(cfg_path, sets, sweep_dir, planned, statuses)
    write_atomic(sweep_dir / SWEEP_FILE, json.dumps(result, indent=2) + "\n", best_effort=True)
    sweep_plot(result, sweep_dir / SWEEP_PLOT)
    return result


def summarize(
    cfg_path: str | Path,
    sets: list[str],
    sweep_dir: Path,
    planned: list[tuple[dict[str, str], RunConfig]],
    statuses: list[str],
) -> dict[str, Any]:
    """sweep.json: the grid, and per run its axis values, steps, losses and time; the best named."""
    plain, axes = split_sets(sets)
    runs = []
    for (point, cfg), status in zip(planned, statuses, strict=True):
        summary = run_summary(cfg.run_dir)
        rows = read_jsonl(cfg.run_dir / METRICS_FILE)
        runtime = next((r["train_runtime"] for r in reversed(rows) if r.get("train_runtime")), None)
        runs.append(
            {
                "name": cfg.output.name,
                "path": str(cfg.run_dir),
                "values": point,
                "status": status,
                "steps": summary["steps"],
                "train_loss": summary["final_loss"],
                "eval_loss": summary["eval_loss"],
                "train_runtime_s": runtime,
            }
        )
    scored = [r for r in runs if r["eval_loss"] is not None]
    best = min(scored, key=lambda r: r["eval_loss"])["name"] if scored else None
    return {
        "config": str(cfg_path),
        "sweep_dir": str(sweep_dir),
        "axes": axes,
        "sets": plain,
        "best": best,
        "best_by": "lowest eval_loss of the kept (best) checkpoint",
        "runs": runs,
    }


def sweep_plot(result: dict[str, Any], path: Path) -> None:
    """Final eval loss per run as bars, the best in green; headless (a bare Figure, no pyplot)."""
    from matplotlib.figure import Figure

    runs = result["runs"]
    fig = Figure(figsize=(max(5.0, 1.1 * len(runs) + 2), 3.8), dpi=110)
    ax = fig.add_subplot()
    scored = [r for r in runs if r["eval_loss"] is not None]
    if scored:
        colors = ["#1a7f37" if r["name"] == result["best"] else "#0969da" for r in scored]
        ax.bar(range(len(scored)), [r["eval_loss"] for r in scored], color=colors)
        ax.set_xticks(range(len(scored)), [r["name"] for r in scored], rotation=30, ha="right", fontsize=8)
    else:
        ax.text(
            0.5, 0.5, "no eval loss (no validation split)", ha="center", va="center", transform=ax.transAxes
        )
    ax.set_ylabel("final eval loss")
    ax.set_title(f"sweep: best {result['best']}" if result["best"] else "sweep")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = path.with_name(f".{path.name}.tmp")
    fig.savefig(buf, format="png")
    buf.replace(path)
