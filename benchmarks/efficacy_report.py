"""The Markdown of benchmarks/efficacy.py's results: a summary table, one table per task, memorize.

Only the block between MARKERS is rewritten when the file has them, so the prose of docs/efficacy.md
(what the benchmark does, the tasks and their licences) stays as written.

Run as:
    write_markdown(Path("docs/efficacy.md"), markdown(results))    # results: efficacy.main()'s dict
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

MARKERS = ("<!-- efficacy.py: generated from here -->", "<!-- efficacy.py: generated up to here -->")
TRAIN_TARGET_S = 15 * 60  # issue 17: defaults train in <= 15 min for <= 500 rows
MEMORIZE_TARGET_S, MEMORIZE_RECALL = 30 * 60, 90.0  # and recall >= 90% of 300 facts in <= 30 min
DEFAULTS_SHARE = 0.9  # defaults reach >= 90% of the best sweep result


def targets(r: dict[str, Any], defaults: dict[str, Any] | None) -> dict[str, bool | None]:
    """Issue 17's targets for one task; None where a number is missing.

    share: the defaults reach DEFAULTS_SHARE of the best sweep run on exact match and on the natural
    metric (a metric the best run scores 0 on says nothing). time: the defaults trained within
    TRAIN_TARGET_S (the target holds for <= 500 rows). not_below_base: the tuned model not worse
    than the base on exact match and the natural metric (it counts where the base partly knows).
    """
    shares = [v for v in r["defaults_over_best"].values() if v is not None]
    gains = [r["defaults_minus_base"][k] for k in dict.fromkeys(["exact_match", r["natural"]])]
    train_s = (defaults or {}).get("train_s")
    return {
        "share": all(v >= DEFAULTS_SHARE for v in shares) if shares else None,
        "time": None if train_s is None or r["train_rows"] > 500 else train_s <= TRAIN_TARGET_S,
        "not_below_base": None if None in gains else all(g >= 0 for g in gains),
    }


def memorize_met(recall: float | None, train_s: float | None) -> bool | None:
    """Recall of at least MEMORIZE_RECALL percent within MEMORIZE_TARGET_S of training."""
    if recall is None or train_s is None:
        return None
    return recall >= MEMORIZE_RECALL and train_s <= MEMORIZE_TARGET_S


def num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = round(seconds)  # rounded once: 299.6 s is 5m 00s, not 4m 60s
    return f"{whole}s" if whole < 60 else f"{whole // 60}m {whole % 60:02d}s"


def settings(run: dict[str, Any]) -> str:
    """What the run trained with: epochs and lr from its config.yaml, the auto schedule's reason."""
    text = f"epochs {run['epochs']}, lr {run['lr']}"
    if run.get("max_steps"):
        text += f", max_steps {run['max_steps']}"
    schedule = run.get("schedule")
    if isinstance(schedule, dict) and schedule.get("reason"):
        text += f" (schedule: {schedule['reason']})"  # says why only where a value was left to auto
    return text.replace("|", "/")


def verdict(met: bool | None) -> str:
    return "-" if met is None else "met" if met else "NOT met"


def task_table(task: str, r: dict[str, Any]) -> list[str]:
    """base, defaults and every sweep run (the best marked) with their scores, time and settings."""
    nat = r["natural"]
    keys = list(dict.fromkeys(["exact_match", nat, "contains"]))  # exact match may be the natural one
    head = " | ".join("exact match" if k == "exact_match" else k for k in keys)
    lines = [
        f"### {task}",
        "",
        f"`{r['package']}`; {r['train_rows']} training rows, {r['test_rows']} held-out test rows; "
        f"natural metric: {nat}.",
        "",
        f"| run | settings | {head} | train time | steps | eval time |",
        "|---|---|" + "---:|" * (len(keys) + 3),
    ]
    if r["base"]:
        cells = " | ".join(num(r["base"][k]) for k in keys)
        lines.append(f"| base | untuned | {cells} | - | - | {dur(r['base']['eval_s'])} |")
    runs = [("defaults", r["defaults"])] + [(f"sweep {s['name']}", s) for s in r["sweep"]]
    for label, run in runs:
        if not run:
            continue
        s = run["scores"] or {}
        best = " **(best)**" if run.get("name") and run["name"] == r["best"] else ""
        cells = " | ".join(num(s.get(k)) for k in keys)
        lines.append(
            f"| {label}{best} | {settings(run)} | {cells} | {dur(run['train_s'])} | {run['steps']} "
            f"| {dur(s.get('eval_s'))} |"
        )
    share, gain, met = r["defaults_over_best"], r["defaults_minus_base"], r["targets"]
    floor = r.get("majority")
    lines += [
        "",
        f"- defaults / best sweep: {', '.join(f'{k} {num(v, 2)}' for k, v in share.items())} "
        f"(>= {DEFAULTS_SHARE}: {verdict(met['share'])}); trained in {dur((r['defaults'] or {}).get('train_s'))} "
        f"(<= {TRAIN_TARGET_S // 60} min: {verdict(met['time'])})",
        f"- defaults - base: {', '.join(f'{k} {num(v)}' for k, v in gain.items())} "
        f"(not below the base: {verdict(met['not_below_base'])})",
    ]
    if floor and floor["exact_match"] > 0:  # a label task: the floor any classifier must beat
        lines.append(f"- always answering {floor['answer']!r} scores {num(floor['exact_match'])}")
    return [*lines, ""]


def summary_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| task | rows train/test | base EM | defaults EM | best sweep EM | defaults/best | defaults train "
        "| targets: share, time, not below base |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for task, r in results["tasks"].items():
        best = next((s for s in r["sweep"] if s["name"] == r["best"]), None)
        d = r["defaults"] or {}
        best_cell = f"{num(best['scores']['exact_match'])} ({best['name']})" if best else "-"
        lines.append(
            f"| {task} | {r['train_rows']}/{r['test_rows']} | {num((r['base'] or {}).get('exact_match'))} "
            f"| {num((d.get('scores') or {}).get('exact_match'))} | {best_cell} "
            f"| {num(r['defaults_over_best']['exact_match'], 2)} | {dur(d.get('train_s'))} "
            f"| {', '.join(verdict(v) for v in r['targets'].values())} |"
        )
    return lines


def memorize_table(m: dict[str, Any]) -> list[str]:
    run = m["run"] or {}
    return [
        f"### memorize: {m['facts']} {m['task']} facts (`data.task: memorize`)",
        "",
        f"Recall: exact match when generating on the {m['facts']} trained prompts themselves.",
        "",
        f"| base recall | recall | train time | steps | settings "
        f"| >= {MEMORIZE_RECALL:.0f}% in <= {MEMORIZE_TARGET_S // 60} min |",
        "|---:|---:|---:|---:|---|---|",
        f"| {num((m['base'] or {}).get('exact_match'))} | {num(m['recall'])} | {dur(run.get('train_s'))} "
        f"| {run.get('steps', '-')} | {settings(run) if run else '-'} | {verdict(m['met'])} |",
        "",
    ]


def markdown(results: dict[str, Any]) -> str:
    lines = [
        MARKERS[0],
        "",
        f"Produced by `{results['command']}` (model {results['model']}, split seed {results['seed']}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}). EM = exact match in percent on the held-out test rows; "
        "train time from the run's metrics.jsonl (train_runtime).",
        "",
        *summary_table(results),
        "",
    ]
    for task, r in results["tasks"].items():
        lines += task_table(task, r)
    if results.get("memorize"):
        lines += memorize_table(results["memorize"])
    lines.append(MARKERS[1])
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, block: str) -> None:
    """Replace the generated block of `path` when it has the MARKERS; else the file is the block."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if MARKERS[0] in old and MARKERS[1] in old:
        head, rest = old.split(MARKERS[0], 1)
        block = head + block.rstrip("\n") + rest.split(MARKERS[1], 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block, encoding="utf-8")
