"""The Train view's server side: form -> config -> YAML file -> the job queue -> metrics.

The form sends `--set`-style overrides (`train.lr=1e-4`), the same strings the CLI takes,
so the config is built by the same `apply_overrides` + `build_config` as `smolora train`.
Starting writes `configs/<name>.yaml` in the workspace (tokens and keys masked, as in every
config SmoLoRA writes), which ui/queued.py hands to the queue; progress is followed from the
run's `metrics.jsonl` (and `train.log` for the step total).

Run as:
    view = preview(["model.name=tiny", "train.max_steps=20"], Path("."))
    print(view["yaml"], view["command"])
"""

from __future__ import annotations

import json
import math
import re
import shlex
import time
from pathlib import Path
from typing import Any

import yaml

from smolora.config import RunConfig, apply_overrides, build_config
from smolora.config_problems import MAX_PROBLEMS
from smolora.errors import ConfigError, DatasetError
from smolora.redact import mask_data
from smolora.runs import CHECKPOINTS_DIR, METRICS_FILE, live_dir
from smolora.ui.workspace import OutsideWorkspace, check_data_path, relative, safe_path

SECTIONS = list(RunConfig.model_fields)
# Fields that make loading run code shipped with a model: a browser tab must not switch them on.
REMOTE_CODE = ("trust_remote_code", "allow_pickle")


def form_problems(e: ConfigError) -> list[dict[str, str]]:
    """A ConfigError's problems as the form lists them ({"path", "message"}), as many as its message shows."""
    problems = [{"path": p["loc"], "message": p["msg"]} for p in e.problems or [{"loc": "", "msg": str(e)}]]
    more = len(problems) - MAX_PROBLEMS
    return problems[:MAX_PROBLEMS] + [{"path": "", "message": f"... and {more} more"}] * (more > 0)


def workspace_problems(data: dict[str, Any], workspace: Path) -> list[dict[str, str]]:
    """Paths in the (raw) config that would read or write outside the workspace."""
    section = lambda name: data.get(name) if isinstance(data.get(name), dict) else {}  # noqa: E731
    output = section("output")
    name = output.get("name")
    checks: list[tuple[str, Any]] = [
        ("output.dir", output.get("dir")),
        # The run directory itself: `output.name=../../x` must not climb out either.
        ("output.name", f"{output.get('dir') or 'runs'}/{name}" if isinstance(name, str) and name else None),
        # Aliases (smollm2-135m) and hub ids resolve inside the workspace as relative paths: harmless.
        ("model.name", section("model").get("name")),
        ("train.accelerate_config", section("train").get("accelerate_config")),
    ]
    for key in ("path", "val_path"):
        value = section("data").get(key)
        checks += [(f"data.{key}", v) for v in (value if isinstance(value, list) else [value])]
    problems = []
    for key, value in checks:
        if not isinstance(value, str) or not value:
            continue
        try:
            # Data paths may be globs or directories: every file they expand to must stay inside.
            check_data_path(workspace, value) if key.startswith("data.") else safe_path(workspace, value)
        except (OutsideWorkspace, DatasetError) as e:
            problems.append({"path": key, "message": str(e)})
    return problems


def remote_code_problems(data: dict[str, Any], allow: bool) -> list[dict[str, str]]:
    """model.trust_remote_code / allow_pickle set from the browser, unless `--allow-remote-code`."""
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    if allow:
        return []
    return [
        {
            "path": f"model.{key}",
            "message": "refused from the browser (it runs code shipped with the model); "
            "start `smolora ui --allow-remote-code`, or train from the CLI",
        }
        for key in REMOTE_CODE
        if model.get(key) not in (None, False)
    ]


def refuse_remote_code(overrides: list[str], allow: bool) -> None:
    problems = remote_code_problems(apply_overrides({}, overrides), allow)
    if problems:
        message = "; ".join(f"{p['path']}: {p['message']}" for p in problems)
        raise ConfigError(message, [{"loc": p["path"], "msg": p["message"]} for p in problems])


def masked_fields(data: Any, masked: Any, prefix: str = "") -> list[str]:
    """Dotted names of the values `mask_data` changed (shown in the form, so nothing is silent)."""
    if isinstance(data, dict) and isinstance(masked, dict):
        return [f for k in data for f in masked_fields(data[k], masked.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if data != masked else []


def nested_yaml(data: dict[str, Any]) -> str:
    ordered = {k: data[k] for k in SECTIONS if k in data}
    ordered.update({k: v for k, v in data.items() if k not in ordered})
    return yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True) if ordered else "{}\n"


def run_name(data: dict[str, Any]) -> str:
    name = (data.get("output") or {}).get("name") if isinstance(data.get("output"), dict) else None
    return str(name) if name else time.strftime("run-%Y%m%d-%H%M%S")


def preview(overrides: list[str], workspace: Path, allow_remote_code: bool = False) -> dict[str, Any]:
    """Validate the form; return problems (per field), the YAML and the equivalent commands."""
    try:
        data = apply_overrides({}, overrides)
    except ConfigError as e:
        return {"ok": False, "problems": [{"path": "", "message": str(e)}], "yaml": "", "command": ""}
    cfg, problems = None, []
    try:
        cfg = build_config(data, "form")
    except ConfigError as e:
        problems = form_problems(e)
    problems += workspace_problems(data, workspace) + remote_code_problems(data, allow_remote_code)
    if cfg is not None and cfg.data.path is None:
        problems.append({"path": "data.path", "message": "pick a training data file (see the Data view)"})
    name = run_name(data)
    if "output" not in data or not isinstance(data["output"], dict) or not data["output"].get("name"):
        data = {**data, "output": {**(data.get("output") or {}), "name": name}}
    config_file = f"configs/{name}.yaml"
    masked = mask_data(data)  # what is written to configs/ (and what the training reads)
    return {
        "ok": not problems,
        "problems": problems,
        "data": data,
        "name": name,
        "yaml": nested_yaml(masked),
        "masked": masked_fields(data, masked),
        "config_file": config_file,
        "command": f"smolora train {config_file}",
        "set_command": shlex.join(["smolora", "train", *[a for o in overrides for a in ("--set", o)]]),
        "run_dir": str(Path(cfg.output.dir) / name) if cfg else None,
    }


def checked_view(overrides: list[str], workspace: Path, allow_remote_code: bool = False) -> dict[str, Any]:
    """The form's preview when it is a valid run; else a ConfigError listing every problem."""
    view = preview(overrides, workspace, allow_remote_code)
    if not view["ok"]:
        message = "; ".join(f"{p['path']}: {p['message']}".lstrip(": ") for p in view["problems"])
        raise ConfigError(message, [{"loc": p["path"], "msg": p["message"]} for p in view["problems"]])
    return view


def write_config(view: dict[str, Any], workspace: Path) -> Path:
    """configs/<name>.yaml in the workspace (masked): what the queued job trains, and the CLI can too."""
    config_path = safe_path(workspace, view["config_file"])
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(
        f"# written by `smolora ui`; train the same way with: {view['command']}\n" + view["yaml"],
        encoding="utf-8",
    )
    return config_path


def read_metrics(path: Path, not_before: float = 0.0) -> list[dict[str, Any]]:
    """metrics.jsonl rows; a file older than the job belongs to the run it replaces, so it is skipped."""
    if not path.exists() or path.stat().st_mtime < not_before:
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the line being written right now
    return rows


def total_steps(job: dict[str, Any]) -> tuple[int | None, bool]:
    """(steps, exact): max_steps when set, else trainer_state.json, else an estimate from train.log."""
    if job.get("max_steps"):
        return job["max_steps"], True
    run_dir = live_dir(job["run_dir"], job["pid"]) if job["pid"] else job["run_dir"]
    states = sorted(run_dir.glob("checkpoints/checkpoint-*/trainer_state.json"))
    if states:
        try:
            return int(json.loads(states[-1].read_text())["max_steps"]), True
        except (ValueError, KeyError, OSError):
            pass
    log = run_dir / "train.log"
    if log.exists():
        text = log.read_text(errors="replace")
        chosen = re.search(r"schedule: .*?(\d+) steps", text)  # train/schedule.py's line: exact
        if chosen:
            return int(chosen.group(1)), True
        m = re.search(r"(\d+) train / (\d+) val rows", text)
        if m and isinstance(job["epochs"], (int, float)):
            per_epoch = max(1, math.ceil(int(m.group(1)) / job["batch"]))
            return math.ceil(job["epochs"] * per_epoch), False
    return None, False


def progress(job: dict[str, Any], since: int = 0) -> dict[str, Any]:
    """New metric rows plus step, total, loss, tokens/s and ETA for the Train view.

    `job`: the run followed (ui/queued.py's `followed`): run_dir, pid (None once it ended),
    running, started, seen, max_steps, epochs, batch, name, cwd.
    """
    # A re-run of a finished name writes beside it (NAME.staging-<pid>) until it succeeded.
    live = live_dir(job["run_dir"], job["pid"]) if job["pid"] else job["run_dir"]
    rows = read_metrics(live / METRICS_FILE, job["started"] - 1)
    step = max((r.get("step", 0) for r in rows), default=0)
    now = time.time()
    seen = job["seen"]
    if step and (not seen or seen[-1][1] != step):
        seen.append((now, step))
    total, exact = total_steps(job)
    eta = None
    if total and len(seen) >= 2 and seen[-1][1] > seen[0][1] and job["running"]:
        rate = (seen[-1][1] - seen[0][1]) / max(seen[-1][0] - seen[0][0], 1e-6)
        eta = max(0.0, (total - step) / rate)
    last = next((r for r in reversed(rows) if "loss" in r), {})
    evals = [r for r in rows if "eval_loss" in r]
    return {
        "run_dir": str(job["run_dir"]),
        "name": job["name"],
        "rows": rows[since:],
        "n_rows": len(rows),
        "step": step,
        "total_steps": total,
        "total_exact": exact,
        "loss": last.get("loss"),
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "tokens_per_s": last.get("tokens_per_s"),
        "eta_s": round(eta, 1) if eta is not None else None,
        "checkpoints": sorted(p.name for p in (live / CHECKPOINTS_DIR).glob("checkpoint-*") if p.is_dir()),
        "train_log_tail": _tail(live / "train.log"),
        "config_file": relative(Path(job["cwd"]), Path(job["cwd"]) / "configs" / f"{job['name']}.yaml"),
    }


def _tail(path: Path, lines: int = 15) -> str:
    from smolora.ui.jobs import log_tail

    return log_tail(path, lines)
