"""What a fine-tune's numbers say went wrong, one line each, with the setting to change (issue 17).

Four findings, from the training log (metrics.jsonl) and the base vs fine-tuned comparison:
under-trained (the train loss still falling steeply at the end), over-fitting (the validation
loss rising since its best step), not learning (the train loss flat, or rising) and forgetting
(the tuned model worse than the base on a held-out metric). Each is a plain dict,
`{"kind", "message", "setting"}`: the message quotes the numbers and the setting's current value.
Training stores its findings in adapter/smolora.json (`diagnosis`, with `best`: the kept
checkpoint); `smolora eval` adds forgetting and writes the list to eval/metrics.json and the report.

`diagnose`, `forgetting`, `diagnosis_lines` and `best_line` are pure; `settings_of`,
`stored_diagnosis` and `eval_diagnosis` read a run's files for the report, the eval and the UI.

Run as:
    from smolora.eval.diagnose import diagnose, diagnosis_lines
    rows = read_jsonl(Path("runs/quickstart/metrics.jsonl"))
    print("\\n".join(diagnosis_lines(diagnose(rows, {"epochs": 3, "lr": 2e-4}))))
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from smolora.eval.metrics import LOWER_IS_BETTER, METRICS
from smolora.runs import METRICS_FILE, read_eval, read_jsonl, run_outcome

log = logging.getLogger("smolora")

# Fewer logged train losses than this and a window is one or two noisy steps: say nothing.
MIN_TRAIN_ROWS = 8
# Not learning: the mean of the first 10% of train losses against the last 10%. A run that learns
# drops by tens of percent; under 3% (or a rise) is flat whatever the noise of single steps.
EDGE = 0.10
FLAT_DROP = 0.03
# A loss that starts this low has little left to learn (memorized or trivial data): flat is fine.
LOW_LOSS = 0.05
# Under-trained: the mean of the last 20% against the 20% before it. A run that has levelled off
# (and the schedule's decaying lr makes the end level) moves a few percent there; over 10% is a
# curve that was cut off while still falling.
TAIL = 0.20
STEEP_DROP = 0.10
# Over-fitting: the last eval loss over 5% above the best one. Eval-to-eval wobble on a held-out
# set of tens of rows is a percent or two; 5% is a trend, not noise.
OVERFIT_RISE = 0.05
# Forgetting: worse than the base by over 1% of the base's score; ties and float noise are not.
FORGET_TOLERANCE = 0.01

NO_PROBLEMS = "no problems found"


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _by_step(rows: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) in step order; a step logged twice (a resumed run) keeps its last value."""
    seen: dict[int, float] = {}
    for r in rows:
        if _finite(r.get(key)) and _finite(r.get("step")):
            seen[int(r["step"])] = float(r[key])
    return sorted(seen.items())


def _loss(v: float) -> str:
    return f"{v:#.3g}".rstrip(".")  # 2.31, 0.950, 12.5: three figures, trailing zeros kept


def _now(settings: dict, key: str) -> str:
    v = settings.get(key)
    if v is None:
        return ""
    return f" (now {v:g})" if _finite(v) else f" (now {v})"


def _length(settings: dict) -> str:
    """The setting that makes training longer or shorter: max_steps when set, else epochs."""
    if settings.get("max_steps"):
        return "train.max_steps" + _now(settings, "max_steps")
    return "train.epochs" + _now(settings, "epochs")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def diagnose(rows: list[dict], settings: dict) -> list[dict]:
    """Findings about a training log: not learning, under-trained, over-fitting ([] when healthy).

    rows: metrics.jsonl rows (train rows carry "loss", eval rows "eval_loss"; the final summary
    row with "train_loss" has neither and is ignored). settings: the values to quote, any of
    epochs, max_steps, lr, train_on, dropout, best_step (the kept checkpoint's step).
    """
    train = [r for r in rows if "eval_loss" not in r]
    losses = _by_step(train, "loss")
    if len(losses) < MIN_TRAIN_ROWS:
        return []
    findings: list[dict] = []
    overfit = _over_fitting(_by_step(rows, "eval_loss"), settings)
    flat = _not_learning(losses, settings)
    if flat:
        findings.append(flat)
    elif (
        not overfit
        and not _plateaued(_by_step(rows, "eval_loss"))
        and (under := _under_trained(losses, settings))
    ):
        findings.append(under)
    if overfit:
        findings.append(overfit)
    return findings


def _not_learning(losses: list[tuple[int, float]], settings: dict) -> dict | None:
    k = max(2, round(len(losses) * EDGE))
    first, last = _mean([v for _, v in losses[:k]]), _mean([v for _, v in losses[-k:]])
    if first < LOW_LOSS or first - last >= FLAT_DROP * first:
        return None
    steps = losses[-1][0]
    if last > first * (1 + FLAT_DROP):
        message = (
            f"not learning: train loss rose from {_loss(first)} to {_loss(last)} over {steps} steps; "
            f"lower train.lr{_now(settings, 'lr')}"
        )
        return {"kind": "not-learning", "message": message, "setting": "train.lr"}
    train_on = settings.get("train_on")
    masks = f"data.train_on={train_on} masks the prompt; " if train_on == "completion" else ""
    message = (
        f"not learning: train loss flat at {_loss(last)} over {steps} steps; raise train.lr"
        f"{_now(settings, 'lr')}, or check the labels ({masks}a template that masks everything "
        "leaves nothing to learn)"
    )
    return {"kind": "not-learning", "message": message, "setting": "train.lr"}


def _plateaued(evals: list[tuple[int, float]]) -> bool:
    """The validation loss stopped improving before the end: more steps would not have helped."""
    if len(evals) < 2:
        return False
    best = min(evals, key=lambda e: (e[1], e[0]))
    return best[0] < evals[-1][0]


def _under_trained(losses: list[tuple[int, float]], settings: dict) -> dict | None:
    k = max(2, round(len(losses) * TAIL))
    before, last = losses[-2 * k : -k], losses[-k:]
    a, b = _mean([v for _, v in before]), _mean([v for _, v in last])
    # A train loss near zero is learnt (0.0007 -> 0.0006 is a 20% drop of nothing).
    if b < LOW_LOSS or a - b <= STEEP_DROP * a:
        return None
    length = _length(settings)
    message = (
        f"under-trained: train loss still falling at the end ({_loss(a)} -> {_loss(b)} over the last "
        f"{last[-1][0] - before[0][0]} steps); raise {length} or train.lr{_now(settings, 'lr')}"
    )
    return {"kind": "under-trained", "message": message, "setting": length.split(" ")[0]}


def _over_fitting(evals: list[tuple[int, float]], settings: dict) -> dict | None:
    if len(evals) < 2:
        return None
    best_step, best = min(evals, key=lambda e: e[1])  # the earliest of equal bests
    last = evals[-1][1]
    if best_step == evals[-1][0] or last <= best * (1 + OVERFIT_RISE):
        return None
    kept = settings.get("best_step")
    kept_text = f"the best checkpoint (step {kept}) was kept; " if kept is not None else ""
    length = _length(settings)
    message = (
        f"over-fitting: validation loss rising since step {best_step} (best {_loss(best)}, last "
        f"{_loss(last)}); {kept_text}fewer {length}, more data or lora.dropout{_now(settings, 'dropout')}"
    )
    return {"kind": "over-fitting", "message": message, "setting": length.split(" ")[0]}


def _score(metric: str, v: float) -> str:
    return _loss(v) if metric in LOWER_IS_BETTER or "/" in metric else f"{v:.1f}"


def forgetting(base: dict, tuned: dict, metric: str = "exact_match") -> dict | None:
    """A finding when the fine-tuned model scores worse than the base on `metric`, else None.

    base, tuned: eval/metrics.json's "base" and "fine_tuned" dicts. Higher is better except for
    smolora.eval.metrics.LOWER_IS_BETTER; a metric either side lacks gives None.
    """
    b, t = base.get(metric), tuned.get(metric)
    if not (_finite(b) and _finite(t)):
        return None
    lower = metric in LOWER_IS_BETTER
    worse_by = (t - b) if lower else (b - t)
    if worse_by <= FORGET_TOLERANCE * abs(b) + 1e-9:
        return None
    side = "above" if lower else "below"
    message = (
        f"forgetting: fine-tuned {metric} {_score(metric, t)} {side} the base model's {_score(metric, b)} "
        "on the held-out rows; lower train.lr or train.epochs, or mix general data into the training set"
    )
    return {"kind": "forgetting", "message": message, "setting": "train.lr"}


def diagnosis_lines(findings: list[dict] | None) -> list[str]:
    """One line per finding; [NO_PROBLEMS] for a run diagnosed healthy; [] when never diagnosed."""
    if findings is None:
        return []
    return [f["message"] for f in findings if isinstance(f, dict) and f.get("message")] or [NO_PROBLEMS]


def best_line(best: dict | None) -> str | None:
    """'best checkpoint: step 40 of 60 by eval_loss 0.812 (stopped early)', or None."""
    if not isinstance(best, dict) or best.get("step") is None:
        return None
    line = f"best checkpoint: step {best['step']}"
    if best.get("last_step") is not None:
        line += f" of {best['last_step']}"
    metric, value = best.get("metric"), best.get("value")
    if metric and _finite(value):
        line += f" by {metric} " + (_loss(value) if "loss" in metric or abs(value) < 1 else f"{value:.1f}")
    return line + (" (stopped early)" if best.get("stopped_early") else "")


def report_lines(metrics: dict[str, Any]) -> list[str]:
    """The report's Diagnosis section: the best checkpoint, then the findings ([] for neither)."""
    best = best_line(metrics.get("best"))
    return ([best] if best else []) + diagnosis_lines(metrics.get("diagnosis"))


# --- reading a run's files ------------------------------------------------------------------


def settings_of(cfg: Any) -> dict:
    """The values diagnose() quotes, from a RunConfig ("auto" ones are quoted as "auto")."""
    return {
        "epochs": cfg.train.epochs,
        "max_steps": cfg.train.max_steps,
        "lr": cfg.train.lr,
        "train_on": cfg.data.train_on,
        "dropout": cfg.lora.dropout,
    }


def diagnose_run(run_dir: Path, cfg: Any, best: dict | None) -> list[dict]:
    """diagnose() on a run's metrics.jsonl with its config's settings (and the kept step)."""
    settings = {**settings_of(cfg), "best_step": best["step"] if best else None}
    return diagnose(read_jsonl(run_dir / METRICS_FILE), settings)


def stored_diagnosis(run_dir: Path) -> dict[str, Any]:
    """{"diagnosis": list | None, "best": dict | None} as stored: eval/metrics.json's list (it
    holds forgetting too) once `smolora eval` ran, else training's in adapter/smolora.json."""
    found = run_outcome(run_dir)
    evaluated = read_eval(run_dir)
    if isinstance(evaluated, dict) and isinstance(evaluated.get("diagnosis"), list):
        found["diagnosis"] = evaluated["diagnosis"]
    return found


def eval_diagnosis(run_dir: Path, cfg: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """For eval/metrics.json: training's findings plus forgetting, and the best checkpoint.

    Training's findings come from adapter/smolora.json; a run trained before they were stored
    is diagnosed here from its metrics.jsonl and config. Forgetting is checked on exact_match,
    contains and on the metric that picked the best checkpoint when that is a generation metric.
    """
    found = run_outcome(run_dir)
    training, best = found["diagnosis"], found["best"]
    if training is None:
        training = diagnose_run(run_dir, cfg, best)
    checked = ["exact_match", "contains"]  # contains: what a chatty base knew and a terse tune lost
    picked = str((best or {}).get("metric") or "").removeprefix("eval_")
    if picked in METRICS and picked not in checked:
        checked.append(picked)
    base, tuned = metrics.get("base", {}), metrics.get("fine_tuned", {})
    lost = [f for m in checked if (f := forgetting(base, tuned, m))]
    findings = [*training, *lost]
    for line in ([best_line(best)] if best_line(best) else []) + diagnosis_lines(findings):
        log.info("diagnosis: %s", line)
    return {"diagnosis": findings, "best": best}
