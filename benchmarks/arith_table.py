"""Adapter arithmetic on the bundled model (issue 20): two quickstart-style runs on different tasks,
combined by `smolora merge`, then each parent, the base and every combination scored on both tasks.

  orders  examples/arith_orders.yaml: the quickstart as it is (order message -> product=; qty=; city=)
  french  examples/arith_french.yaml: the same recipe on English country name -> French name
          (country-list 1.1.0 through efficacy_data.py: 40 held-out rows, the other 209 trained on)

Everything runs through the CLI in a subprocess of this interpreter, as a user would type it:

  smolora train examples/arith_orders.yaml             (and examples/arith_french.yaml)
  smolora merge runs/arith/orders runs/arith/french --combine M --weights W --out runs/arith/orders+french-NAME
  smolora eval runs/arith/orders+french-NAME --data FILE    (each task's held-out file)

`smolora eval` on a combined run scores the base (adapter off), the combination and, on the same rows
with the same settings, both parents (eval/against.py), so each eval gives one column of the table;
the parents and the base are scored again by every combination's eval, and the table says whether
those repeats agree. The combinations in COMBOS were fixed before any run and all are reported.
A finished run, merge or eval is never redone: the same command again continues an interrupted one.

Run as (from the repository root; about half an hour on 2 CPU cores):
    python benchmarks/arith_table.py                    # train, combine, score, print the table
    python benchmarks/arith_table.py --data-only        # only write runs/arith/data/french_*.jsonl
    python benchmarks/arith_table.py --methods cat --md table.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from efficacy import ensure_trained, note_wall, smolora, split_rows, write_rows  # noqa: E402

from smolora.runs import ADAPTER_DIR, EVAL_DIR, EVAL_METRICS, METRICS_FILE, is_adapter_dir, read_jsonl  # noqa: E402

WORK = Path("runs/arith")  # where examples/arith_*.yaml put their runs and read the French rows
CONFIGS = {"orders": Path("examples/arith_orders.yaml"), "french": Path("examples/arith_french.yaml")}
ORDERS_EVAL = Path("examples/data/quickstart_eval.jsonl")  # the quickstart's own held-out rows
HELD_OUT = 40  # French rows never trained on: as many as the quickstart holds out
# name -> `smolora merge` options. linear and ties need equal ranks: both parents have r = 16.
COMBOS = {
    "linear": ["--combine", "linear", "--weights", "0.5,0.5"],
    "cat": ["--combine", "cat", "--weights", "0.5,0.5"],  # merge's default: the average of the updates
    "cat-sum": ["--combine", "cat", "--weights", "1,1"],  # both updates whole (task arithmetic's sum)
    "ties": ["--combine", "ties", "--weights", "1,1", "--density", "0.5"],  # TIES averages what agrees
}
METRICS = ("exact_match", "chrf")  # exact match is the quickstart's score; chrF credits a near miss


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=WORK, help="runs and data (another one: --set paths)")
    p.add_argument("--methods", default=",".join(COMBOS), help=f"comma-separated, of {', '.join(COMBOS)}")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for both training runs")
    p.add_argument("--data-only", action="store_true", help="only write the French rows")
    p.add_argument("--json", type=Path, help="every number (default WORK/arith.json)")
    p.add_argument("--md", type=Path, help="also write the markdown table here")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in COMBOS]
    if unknown or not args.methods:
        p.error(f"--methods {','.join(unknown) or '(none)'}: choose from {', '.join(COMBOS)}")
    return args


def write_french(work: Path) -> dict[str, Path]:
    """The French rows (efficacy.py's split, seed 17): the held-out ones first, the rest trained on."""
    train, held_out = split_rows("country_fr", 10_000, HELD_OUT)
    paths = {"path": work / "data" / "french_train.jsonl", "val_path": work / "data" / "french_eval.jsonl"}
    write_rows(paths["path"], train)
    write_rows(paths["val_path"], held_out)
    return paths


def train_sets(task: str, args: argparse.Namespace, french: dict[str, Path]) -> list[str]:
    """--set for one parent: the caller's, plus the paths when --work is not the configs' own."""
    sets = list(args.set)
    if args.work != WORK:
        sets.append(f"output.dir={args.work}")
        if task == "french":
            sets += [f"data.{k}={v}" for k, v in french.items()]
    return sets


def ensure_combined(parents: list[Path], name: str, log: Path) -> tuple[Path, list[str]]:
    """`smolora merge` of the parents unless the combined adapter is saved; (run dir, its command)."""
    out = parents[0].parent / f"{'+'.join(p.name for p in parents)}-{name}"
    args = ["merge", *map(str, parents), *COMBOS[name], "--out", str(out)]
    if not is_adapter_dir(out / ADAPTER_DIR):
        note_wall(out, "merge_s", smolora(args, log))
    return out, args


def ensure_scored(run: Path, task: str, data: Path, log: Path) -> tuple[dict[str, Any], list[str]]:
    """`smolora eval RUN --data FILE`, its metrics.json kept as eval/TASK.json (the next eval overwrites it)."""
    kept = run / EVAL_DIR / f"{task}.json"
    args = ["eval", str(run), "--data", str(data)]
    if kept.exists() and json.loads(kept.read_text()).get("data") == str(data):
        return json.loads(kept.read_text()), args
    t0 = time.perf_counter()
    smolora(args, log)
    metrics = json.loads((run / EVAL_DIR / EVAL_METRICS).read_text())
    metrics["wall_s"] = round(time.perf_counter() - t0, 1)
    kept.write_text(json.dumps(metrics, indent=2) + "\n")
    (run / EVAL_DIR / f"{task}_samples.jsonl").write_bytes((run / EVAL_DIR / "samples.jsonl").read_bytes())
    return metrics, args


def train_seconds(run: Path) -> float | None:
    rows = read_jsonl(run / METRICS_FILE)
    return next((round(r["train_runtime"], 1) for r in reversed(rows) if r.get("train_runtime")), None)


def table_rows(evals: dict[str, dict[str, dict]], parents: list[str]) -> tuple[list[dict], dict]:
    """One row per model (base, each parent, each combination): its METRICS on each task.

    The base and the parents are scored once per combination; their rows take the first score and
    `spread` records the largest difference between the repeats (0 when greedy decoding is repeatable).
    """
    tasks = list(next(iter(evals.values())))
    scored = {"base": lambda m: m["base"], **{p: (lambda m, p=p: m["against"][p]) for p in parents}}
    rows, spread = [], {}
    for name, pick in scored.items():
        row = {"model": name if name == "base" else f"{name} (parent)"}
        for task in tasks:
            for metric in METRICS:
                values = [pick(per_task[task])[metric] for per_task in evals.values()]
                row[f"{task} {metric}"] = values[0]
                spread[f"{name} {task} {metric}"] = max(values) - min(values)
        rows.append(row)
    for combo, per_task in evals.items():
        row = {"model": f"combined: {combo}"}
        for task, m in per_task.items():
            row.update({f"{task} {metric}": m["fine_tuned"][metric] for metric in METRICS})
        rows.append(row)
    return rows, spread


def markdown(rows: list[dict], commands: list[list[str]], notes: list[str]) -> str:
    cols = [c for c in rows[0] if c != "model"]
    head = "| model | " + " | ".join(c.replace("exact_match", "EM").replace("chrf", "chrF") for c in cols)
    lines = [head + " |", "|---|" + "---:|" * len(cols)]
    lines += ["| " + r["model"] + " | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |" for r in rows]
    cmds = "\n".join("smolora " + shlex.join(c) for c in commands)
    return "\n".join([*lines, "", *notes, "", "```", cmds, "```", ""])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    french = write_french(args.work)
    if args.data_only:
        print(f"wrote {french['path']} and {french['val_path']}")
        return {}
    log = args.work / "arith.log"
    commands: list[list[str]] = []
    runs = {}
    for task, cfg in CONFIGS.items():
        runs[task] = args.work / task
        sets = train_sets(task, args, french)
        ensure_trained(cfg, runs[task], sets, log)
        commands.append(["train", str(cfg), *(a for s in sets for a in ("--set", s))])
    held_out = {"orders": ORDERS_EVAL, "french": french["val_path"]}
    evals: dict[str, dict[str, dict]] = {}
    for name in args.methods:
        combined, merge_cmd = ensure_combined(list(runs.values()), name, log)
        commands.append(merge_cmd)
        evals[name] = {}
        for task, data in held_out.items():
            evals[name][task], eval_cmd = ensure_scored(combined, task, data, log)
            commands.append(eval_cmd)
    rows, spread = table_rows(evals, list(runs))
    walls_file = args.work / "wall.json"
    walls = json.loads(walls_file.read_text()) if walls_file.exists() else {}
    timings = {
        **{f"train {t}": train_seconds(r) for t, r in runs.items()},
        **{f"merge {n}": walls.get(f"orders+french-{n}", {}).get("merge_s") for n in evals},
        **{f"eval {n} {t}": m.get("wall_s") for n, per in evals.items() for t, m in per.items()},
    }
    n = {t: m["n"] for t, m in next(iter(evals.values())).items()}
    notes = [
        f"Held-out rows: orders {n['orders']}, french {n['french']}; EM = exact match, in percent.",
        f"Repeat scores of the base and parents differ by at most {max(spread.values()):.2f} points.",
        "Seconds: " + ", ".join(f"{k} {v}" for k, v in timings.items() if v is not None) + ".",
    ]
    text = markdown(rows, commands, notes)
    print(text)
    result = {"rows": rows, "spread": spread, "timings": timings, "commands": commands, "evals": evals}
    (args.json or args.work / "arith.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        args.md.write_text(text, encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
