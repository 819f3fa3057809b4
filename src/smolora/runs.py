"""The run directory: its file names, the typed `adapter/smolora.json`, finding, listing, comparing runs.

A run is a directory: `config.yaml` (resolved), `metrics.jsonl`, `train.log`, `checkpoints/`,
`adapter/` (PEFT format plus `smolora.json`), `eval/`, `plots/`, `merged/` after `smolora merge`.
Nobody else spells those names. Everything here is read from the directory; nothing loads a
model, so listing a hundred runs takes no time.

Ownership: every run directory SmoLoRA creates carries `.smolora-run`; nothing without it is
ever deleted or replaced. A re-run of a finished name trains in `NAME.staging-<pid>` and only
once it succeeded swaps in (`publish_run`), keeping the old run as `NAME.previous`.

Run as:
    rows = list_runs("runs")
    diff = compare_runs("runs/a", "runs/b")   # {"config": [...], "metrics": [...]}
    meta = read_meta(find_adapter_dir("runs/quickstart"))   # AdapterMeta
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from smolora.durable import fsync_dir
from smolora.errors import SmoLoRAError

# What a run directory holds.
CONFIG_FILE = "config.yaml"  # the resolved config the run trained with
METRICS_FILE = "metrics.jsonl"  # one JSON row per logged step
TRAIN_LOG = "train.log"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"  # PEFT format (or full weights) plus ADAPTER_META: the finished run
ADAPTER_META = "smolora.json"
EVAL_DIR = "eval"  # smolora eval: EVAL_METRICS, samples.jsonl, the report
EVAL_METRICS = "metrics.json"
GENERATIONS_FILE = "generations.jsonl"  # eval generations logged during training
PLOTS_DIR = "plots"
MERGED_DIR = "merged"  # smolora merge: merged safetensors plus PARITY_FILE
PARITY_FILE = "parity.json"
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
    fsync_dir(final.parent, best_effort=True)  # some filesystems cannot sync a directory


def smolora_home() -> Path:
    """SmoLoRA's own folder (model store, data cache, UI logs): $SMOLORA_HOME, else ~/.cache/smolora."""
    return Path(os.environ.get("SMOLORA_HOME") or "~/.cache/smolora").expanduser()


# --- adapter/smolora.json -------------------------------------------------------------------


WHEN_SET = ("task", "schedule", "best", "diagnosis")  # AdapterMeta fields left out of the file while None


@dataclass
class AdapterMeta:
    """adapter/smolora.json: what loading, serving and exporting need to rebuild the model's inputs.

    The fields are written in this order (the file a run writes stays byte for byte the same).
    Keys this version does not know (an older or newer SmoLoRA wrote them) are kept in `extra`
    and written back after the known ones; a file lacking a known key reads as its default.
    """

    base_model: str
    base_sha256: str | None = None  # of the base's model.safetensors in the store (or its source GGUF)
    method: str = "lora"
    drop_layers: list[int] = field(default_factory=list)  # layer surgery, re-applied before the adapter
    keep_layers: int | None = None
    chat_template: str | None = None  # the template the model was trained with
    system_prompt: str | None = None  # masked like config.yaml
    data_fingerprint: str | None = None
    data_format: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # torch, transformers, peft, ... at training
    # Written only when set (older files stay byte for byte the same):
    task: str | None = None  # data.task: sft, or memorize (the eval report then shows recall)
    schedule: dict[str, Any] | None = None  # epochs, lr, eval_every, steps and why (train/schedule.py)
    best: dict[str, Any] | None = None  # the step that won, by which metric, and why (train/best.py)
    diagnosis: list[dict[str, Any]] | None = None  # eval/diagnose.py's findings; None: never diagnosed
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AdapterMeta:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in raw.items() if k in known},
            extra={k: v for k, v in raw.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if not (k in WHEN_SET and v is None)}
        return {**out, **self.extra}


def read_meta(adapter_dir: Path) -> AdapterMeta:
    """The AdapterMeta in `adapter_dir` (a directory find_adapter_dir returned)."""
    path = adapter_dir / ADAPTER_META
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict) or "base_model" not in raw:
        raise SmoLoRAError(
            f"{path} is not a SmoLoRA adapter description (no base_model); train the run again"
        )
    return AdapterMeta.from_dict(raw)


def write_meta(adapter_dir: Path, meta: AdapterMeta) -> None:
    (adapter_dir / ADAPTER_META).write_text(json.dumps(meta.to_dict(), indent=2))


# --- finding runs ---------------------------------------------------------------------------


def is_run(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_META).exists()


def find_adapter_dir(path: str | Path) -> Path | None:
    """A run directory or an adapter directory -> the directory holding smolora.json (None: none yet)."""
    p = Path(path)
    return next((c for c in (p, p / ADAPTER_DIR) if is_adapter_dir(c)), None)


def run_dir_of(path: str | Path) -> Path:
    """The run directory for a run or adapter path ('runs/x' for 'runs/x/adapter')."""
    p = Path(path)
    return p.parent if p.name == ADAPTER_DIR and is_adapter_dir(p) else p


def require_run(path: str | Path) -> Path:
    """The run directory at `path` (a run or its adapter/ directory), or one error that says what to do."""
    p = run_dir_of(path)
    if not is_run(p):
        hint = (
            f"; runs there: {', '.join(r.name for r in find_runs(p))}" if p.is_dir() and find_runs(p) else ""
        )
        raise SmoLoRAError(
            f"{p} is not a run directory (no {CONFIG_FILE}); train one with: smolora train CONFIG, "
            f"or list runs with: smolora runs list{hint}"
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
    marker = run / ADAPTER_DIR / ADAPTER_META
    return (marker if marker.exists() else run / CONFIG_FILE).stat().st_mtime


# --- what a run holds -----------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl (or another JSON-lines file a run writes); [] when there is none."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a killed run is not worth failing a report for
    return rows


def read_config(run: Path) -> dict[str, Any]:
    """config.yaml as a plain dict, for listing and comparing (training loads it with load_config)."""
    return yaml.safe_load((run / CONFIG_FILE).read_text()) or {}


def read_eval(run: Path) -> dict[str, Any] | None:
    path = run / EVAL_DIR / EVAL_METRICS
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
    cfg = read_config(run)
    rows = read_jsonl(run / METRICS_FILE)
    losses = [r for r in rows if r.get("loss") is not None]
    evals = [r for r in rows if r.get("eval_loss") is not None]
    done = (run / ADAPTER_DIR / ADAPTER_META).exists()
    kept_step = (run_outcome(run)["best"] or {}).get("step") if done else None
    best = kept_step if isinstance(kept_step, int) else None
    # The adapter holds the best checkpoint (train/best.py): its validation loss, not the last one.
    kept = [r for r in evals if r["step"] == best] if best is not None else []
    status = "done" if done else "unfinished" if (run / CHECKPOINTS_DIR).exists() else "not started"
    return {
        "name": run.name,
        "path": str(run),
        "base_model": (cfg.get("model") or {}).get("name"),
        "method": (cfg.get("lora") or {}).get("method"),
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(_run_time(run))),
        "steps": losses[-1]["step"] if losses else 0,
        "final_loss": losses[-1]["loss"] if losses else None,
        "eval_loss": (kept or evals)[-1]["eval_loss"] if evals else None,
        "best_step": best,
        "eval_score": headline(read_eval(run)),
        "status": status,
    }


def run_outcome(run: Path) -> dict[str, Any]:
    """Training's {"best", "diagnosis"} from adapter/smolora.json; None each where absent.

    None, not a default: a run trained before they were recorded must not look diagnosed and
    healthy. A damaged smolora.json gives None too (the views that list runs go on; loading says why).
    """
    adapter = find_adapter_dir(run)
    try:
        meta = read_meta(adapter) if adapter is not None else None
    except (OSError, ValueError, TypeError, SmoLoRAError):
        meta = None
    return {
        "best": meta.best if meta and isinstance(meta.best, dict) else None,
        "diagnosis": meta.diagnosis if meta and isinstance(meta.diagnosis, list) else None,
    }


def list_runs(root: str | Path = "runs") -> list[dict[str, Any]]:
    return [run_summary(r) for r in find_runs(root)]


def show_run(path: str | Path) -> dict[str, Any]:
    run = require_run(path)
    return {
        **run_summary(run),
        "config": read_config(run),
        "eval": read_eval(run),
        "files": sorted(
            str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and CHECKPOINTS_DIR not in p.parts
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
        (r["train_runtime"] for r in reversed(read_jsonl(run / METRICS_FILE)) if r.get("train_runtime")),
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
    cfg_a, cfg_b = flatten(read_config(run_a)), flatten(read_config(run_b))
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
