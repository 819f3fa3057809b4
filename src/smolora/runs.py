"""What is in a runs folder: one summary row per run, one run in detail, two runs compared.

Everything is read from the run directory (config.yaml, metrics.jsonl, adapter/smolora.json,
eval/metrics.json); nothing loads a model, so listing a hundred runs takes no time.

Ownership: every run directory SmoLoRA creates carries `.smolora-run`; nothing without it is
ever deleted or replaced. A re-run of a finished name trains in `NAME.staging-<pid>` and only
once it succeeded swaps in (`publish_run`), keeping the old run as `NAME.previous`.

Run as:
    rows = list_runs("runs")
    diff = compare_runs("runs/a", "runs/b")   # {"config": [...], "metrics": [...]}
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from smolora.errors import SmoLoRAError
from smolora.eval.report import read_jsonl

RUN_MARKER = ".smolora-run"  # in every run directory SmoLoRA made: only those may be replaced
PREVIOUS = ".previous"  # NAME.previous: the run a successful re-run of NAME replaced
STAGING_RUN = ".staging-"  # NAME.staging-<pid>: a re-run of a finished NAME, until it succeeds


def mark_run(path: Path) -> None:
    """Create `path` (and parents) as a SmoLoRA run directory."""
    path.mkdir(parents=True, exist_ok=True)
    (path / RUN_MARKER).write_text(
        "made by SmoLoRA; a re-run of this name may replace it\n", encoding="utf-8"
    )


def is_marked(path: Path) -> bool:
    return (path / RUN_MARKER).is_file()


def require_marked(path: Path) -> None:
    if not is_marked(path):
        older = " (a run made before SmoLoRA marked its runs with " + RUN_MARKER + ")" if is_run(path) else ""
        raise SmoLoRAError(
            f"{path} exists and is not a SmoLoRA run{older}; pick another output.name or move it away yourself"
        )


def remove_run(path: Path) -> None:
    """Delete a run directory, refusing anything SmoLoRA did not make (no marker)."""
    require_marked(path)
    shutil.rmtree(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: alive as far as we can tell
    return True


def staged_runs(final: Path) -> list[tuple[Path, bool]]:
    """The `NAME.staging-<pid>` directories of a run, newest first, with whether their trainer lives."""
    if not final.parent.is_dir():
        return []
    pattern = re.compile(re.escape(final.name + STAGING_RUN) + r"(\d+)")
    found = []
    for p in final.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m and p.is_dir() and is_marked(p):
            pid = int(m.group(1))
            found.append((p, pid != os.getpid() and _pid_alive(pid)))
    return sorted(found, key=lambda x: x[0].stat().st_mtime, reverse=True)


def staging_dir(final: Path, pid: int | None = None) -> Path:
    """Where the trainer with `pid` (default: this process) re-runs the finished run `final`."""
    return final.with_name(f"{final.name}{STAGING_RUN}{os.getpid() if pid is None else pid}")


def live_dir(final: Path, pid: int) -> Path:
    """The directory a trainer of `final` (process `pid`) is writing now: its staging dir or `final`.

    A re-run of a finished name trains beside it until it succeeded; a resumed re-run continues
    a staging directory another process started.
    """
    own = staging_dir(final, pid)
    if own.is_dir():
        return own
    return next((s for s, alive in staged_runs(final) if alive), final)


def previous_dir(final: Path) -> Path:
    return final.with_name(final.name + PREVIOUS)


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (some filesystems cannot sync a directory: then best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_run(staged: Path, final: Path) -> None:
    """A finished re-run replaces `final`: old run -> NAME.previous, staging -> NAME, two renames.

    Between the renames NAME is briefly absent; a crash there leaves both runs whole
    (NAME.previous and NAME.staging-<pid>), never half of one.
    """
    if staged == final:
        return
    previous = previous_dir(final)
    if previous.exists():
        remove_run(previous)  # an older NAME.previous that SmoLoRA made; anything else is refused
    if final.exists():
        require_marked(final)
        os.replace(final, previous)
    os.replace(staged, final)
    fsync_dir(final.parent)


def is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def require_run(path: str | Path) -> Path:
    p = Path(path)
    if not is_run(p):
        hint = (
            f"; runs there: {', '.join(r.name for r in find_runs(p))}" if p.is_dir() and find_runs(p) else ""
        )
        raise SmoLoRAError(
            f"{p} is not a run directory (no config.yaml); list runs with: smolora runs list{hint}"
        )
    return p


def find_runs(root: str | Path) -> list[Path]:
    root = Path(root)
    if is_run(root):
        return [root]
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and is_run(p)), key=_run_time, reverse=True)


def _run_time(run: Path) -> float:
    marker = run / "adapter" / "smolora.json"
    return (marker if marker.exists() else run / "config.yaml").stat().st_mtime


def read_eval(run: Path) -> dict[str, Any] | None:
    path = run / "eval" / "metrics.json"
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        return None


def headline(evaluation: dict[str, Any] | None) -> tuple[str, float, float] | None:
    """The score a run is known by: exact match if generated, else eval loss; (name, base, tuned)."""
    if not evaluation:
        return None
    for name in ("exact_match", "eval_loss"):
        if name in evaluation.get("fine_tuned", {}) and name in evaluation.get("base", {}):
            return name, evaluation["base"][name], evaluation["fine_tuned"][name]
    return None


def run_summary(run: Path) -> dict[str, Any]:
    """name, base model, date, steps, final loss, eval loss, eval score, status."""
    cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    rows = read_jsonl(run / "metrics.jsonl")
    losses = [r for r in rows if r.get("loss") is not None]
    evals = [r for r in rows if r.get("eval_loss") is not None]
    done = (run / "adapter" / "smolora.json").exists()
    status = "done" if done else "unfinished" if (run / "checkpoints").exists() else "not started"
    return {
        "name": run.name,
        "path": str(run),
        "base_model": (cfg.get("model") or {}).get("name"),
        "method": (cfg.get("lora") or {}).get("method"),
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(_run_time(run))),
        "steps": losses[-1]["step"] if losses else 0,
        "final_loss": losses[-1]["loss"] if losses else None,
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "eval_score": headline(read_eval(run)),
        "status": status,
    }


def list_runs(root: str | Path = "runs") -> list[dict[str, Any]]:
    return [run_summary(r) for r in find_runs(root)]


def show_run(path: str | Path) -> dict[str, Any]:
    run = require_run(path)
    return {
        **run_summary(run),
        "config": yaml.safe_load((run / "config.yaml").read_text()) or {},
        "eval": read_eval(run),
        "files": sorted(
            str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "checkpoints" not in p.parts
        ),
    }


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _numbers(run: Path) -> dict[str, float]:
    """Training numbers and fine-tuned eval scores of one run, flat."""
    s = run_summary(run)
    out = {k: s[k] for k in ("steps", "final_loss", "eval_loss") if s[k] is not None}
    runtime = next(
        (r["train_runtime"] for r in reversed(read_jsonl(run / "metrics.jsonl")) if r.get("train_runtime")),
        None,
    )
    if runtime:
        out["train_runtime_s"] = runtime
    evaluation = read_eval(run) or {}
    for name, value in evaluation.get("fine_tuned", {}).items():
        out[f"eval/{name}"] = value
    return out


def compare_runs(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Config keys that differ, and every number either run has, with b - a."""
    run_a, run_b = require_run(a), require_run(b)
    cfg_a = flatten(yaml.safe_load((run_a / "config.yaml").read_text()) or {})
    cfg_b = flatten(yaml.safe_load((run_b / "config.yaml").read_text()) or {})
    config = [
        {"key": k, "a": cfg_a.get(k), "b": cfg_b.get(k)}
        for k in sorted(set(cfg_a) | set(cfg_b))
        if cfg_a.get(k) != cfg_b.get(k)
    ]
    num_a, num_b = _numbers(run_a), _numbers(run_b)
    metrics = []
    for k in dict.fromkeys([*num_a, *num_b]):
        va, vb = num_a.get(k), num_b.get(k)
        metrics.append(
            {"metric": k, "a": va, "b": vb, "diff": vb - va if va is not None and vb is not None else None}
        )
    return {"a": str(run_a), "b": str(run_b), "config": config, "metrics": metrics}
