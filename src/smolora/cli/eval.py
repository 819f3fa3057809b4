"""CLI for evaluation and runs: `smolora eval RUN` and `smolora runs list|show|compare`.

Registered in cli.py (`app.command("eval")(eval_cmd)`, `app.add_typer(runs_app, name="runs")`).

Run as:
    smolora eval runs/quickstart
    smolora eval runs/quickstart --lm-eval smolora_orders --include-path examples/lm_eval
    smolora runs list
    smolora runs compare runs/quickstart runs/quickstart-r8
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from smolora.cli.common import StrictOpt, strict_process

console = Console()

runs_app = typer.Typer(help="List, show and compare training runs.", no_args_is_help=True)


def eval_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory (holds config.yaml and adapter/).")],
    data: Annotated[
        str | None, typer.Option("--data", help="Evaluate on this file instead of the run's held-out split.")
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            help="validation (held-out) or train; with --data, the split of a dataset dir or hub set."
        ),
    ] = "validation",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="Override the run's config for this eval: --set eval.max_new_tokens=32."
        ),
    ] = None,
    lm_eval: Annotated[
        str | None, typer.Option("--lm-eval", help="lm-evaluation-harness tasks, comma-separated.")
    ] = None,
    include_path: Annotated[
        Path | None, typer.Option("--include-path", help="Folder of lm-eval task YAMLs (local tasks).")
    ] = None,
    lm_eval_limit: Annotated[
        int | None, typer.Option("--lm-eval-limit", help="Score only the first N documents of each task.")
    ] = None,
    samples: Annotated[int, typer.Option(help="Rows shown side by side in the terminal.")] = 8,
    against: Annotated[
        list[str] | None,
        typer.Option(
            help="Also score this run on the same rows (repeatable; default: a combined run's parents)."
        ),
    ] = None,
    strict: StrictOpt = False,
) -> None:
    """Compare the base and the fine-tuned model on held-out prompts; write RUN/eval/ with a report.

    Writes metrics.json (eval loss, perplexity, exact match, ROUGE-1/2/L, BLEU, chrF for both
    models and the difference), samples.jsonl, report.md, report.html and RUN/plots/loss.png.
    A preference run (train.objective dpo, orpo, simpo, kto) adds preference_accuracy,
    preference_margin and reward_margin on the held-out pairs, a grpo run the reward of greedy
    answers; a run that continued another (model.adapter) is compared with that run.

    Example: smolora eval runs/quickstart --lm-eval smolora_orders --include-path examples/lm_eval
    """
    from smolora.eval.against import against_runs, score_against
    from smolora.eval.evaluate import evaluate_run

    strict_process(strict)
    others = against_runs(run, against)
    tasks = [t.strip() for t in lm_eval.split(",") if t.strip()] if lm_eval else None
    result = evaluate_run(
        run,
        data,
        split=split,
        overrides=set_ or [],
        lm_eval_tasks=tasks,
        include_path=include_path,
        lm_eval_limit=lm_eval_limit,
    )
    print_comparison(result, samples)
    if others:
        print_against(result["metrics"], score_against(run, others, data, split, set_ or []))


def print_against(metrics: dict[str, Any], against: dict[str, dict[str, float]]) -> None:
    """base | each other run | this run, per metric, on the rows just scored."""
    from smolora.eval.against import against_rows
    from smolora.eval.report import fmt

    table = Table(
        title=f"{Path(metrics['run']).name} against {', '.join(against)} on {metrics['n_examples']} examples"
    )
    for col in ("metric", "base", *against, Path(metrics["run"]).name):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for r in against_rows(metrics, against):
        table.add_row(
            r["name"],
            fmt(r["name"], r["base"]),
            *(fmt(r["name"], v) for v in r["others"].values()),
            fmt(r["name"], r["run"]),
        )
    console.print(table)


def print_comparison(result: dict[str, Any], samples: int) -> None:
    """The before/after tables `make run` ends with, and where the report is."""
    from smolora.eval.report import fmt, metric_rows

    rows = result["samples"][:samples]
    if rows:
        table = Table(title="held-out examples: base vs fine-tuned", show_lines=True)
        for col in ("prompt", "reference", "base", "fine-tuned"):
            table.add_column(col, overflow="fold", max_width=40)
        for r in rows:
            table.add_row(r["prompt"][:200], r["reference"], r["base"][:200], r["fine_tuned"])
        console.print(table)
    m = result["metrics"]
    score = Table(title=f"scores on {m['n_examples']} held-out examples")
    score.add_column("metric")
    score.add_column("base", justify="right")
    score.add_column("fine-tuned", justify="right")
    score.add_column("change", justify="right")
    for r in metric_rows(m):
        style = "green" if r["better"] else "red" if r["better"] is False else ""
        score.add_row(
            r["name"],
            fmt(r["name"], r["base"]),
            fmt(r["name"], r["fine_tuned"]),
            f"[{style}]{r['diff']:+.4g}[/]" if style else f"{r['diff']:+.4g}",
        )
    console.print(score)
    console.print(f"written to {result['dir']}")
    if "html" in result:
        console.print(
            f"report: {result['html']}  (and {result['report'].name}, plots in {result['plot'].parent})"
        )


def _num(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


@runs_app.command("list")
def runs_list(
    root: Annotated[Path, typer.Argument(help="Folder holding run directories.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One line per run: name, base model, date, steps, final loss, eval loss, eval score.

    Example: smolora runs list runs
    """
    from smolora.runs import list_runs

    rows = list_runs(root)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print(f"no runs in {root}; start one with: smolora train examples/quickstart.yaml")
        return
    table = Table(title=f"runs in {root}")
    for col in ("name", "base model", "date", "steps", "final loss", "eval loss", "eval score", "status"):
        table.add_column(col, justify="right" if col in ("steps", "final loss", "eval loss") else "left")
    for r in rows:
        table.add_row(
            r["name"],
            str(r["base_model"]),
            r["date"],
            str(r["steps"]),
            _num(r["final_loss"]),
            _num(r["eval_loss"]),
            _score(r["eval_score"]),
            r["status"],
        )
    console.print(table)


def _score(s: tuple[str, float, float] | list | None) -> str:
    if not s:
        return "-"
    name, base, tuned = s
    return f"{name} {base:.4g} -> {tuned:.4g}"


@runs_app.command("show")
def runs_show(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A run's summary, config, eval scores and files.

    Example: smolora runs show runs/quickstart
    """
    import yaml

    from smolora.eval.report import fmt, metric_rows
    from smolora.runs import CONFIG_FILE, show_run

    info = show_run(run)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    table = Table(title=f"run {info['name']}", show_header=False)
    for key in ("path", "status", "base_model", "method", "date", "steps", "final_loss", "eval_loss"):
        value = info[key]
        table.add_row(key, _num(value) if isinstance(value, float) else str(value))
    table.add_row("eval score", _score(info["eval_score"]))
    console.print(table)
    if info["eval"]:
        scores = Table(title="eval (base -> fine-tuned)")
        for col in ("metric", "base", "fine-tuned", "change"):
            scores.add_column(col, justify="left" if col == "metric" else "right")
        for r in metric_rows(info["eval"]):
            scores.add_row(
                r["name"], fmt(r["name"], r["base"]), fmt(r["name"], r["fine_tuned"]), f"{r['diff']:+.4g}"
            )
        console.print(scores)
    else:
        console.print(f"[dim]not evaluated yet: smolora eval {info['path']}[/]")
    console.rule(CONFIG_FILE)
    console.print(yaml.safe_dump(info["config"], sort_keys=False), highlight=False, markup=False)
    console.rule("files")
    console.print("\n".join(info["files"]), highlight=False, markup=False)


@runs_app.command("compare")
def runs_compare(
    run_a: Annotated[Path, typer.Argument(help="First run directory.")],
    run_b: Annotated[Path, typer.Argument(help="Second run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Config differences and metric differences of two runs, in one table.

    Example: smolora runs compare runs/quickstart runs/quickstart-r8
    """
    from smolora.runs import compare_runs

    diff = compare_runs(run_a, run_b)
    if as_json:
        print(json.dumps(diff, indent=2, default=str))
        return
    a, b = Path(diff["a"]).name, Path(diff["b"]).name
    table = Table(title=f"{a} vs {b}")
    table.add_column("")
    table.add_column(a, overflow="fold", max_width=40)
    table.add_column(b, overflow="fold", max_width=40)
    table.add_column("b - a", justify="right")
    for row in diff["config"]:
        table.add_row(f"config {row['key']}", _plain(row["a"]), _plain(row["b"]), "")
    if diff["config"]:
        table.add_section()
    for row in diff["metrics"]:
        d = row["diff"]
        table.add_row(row["metric"], _plain(row["a"]), _plain(row["b"]), "-" if d is None else f"{d:+.4g}")
    console.print(table)
    if not diff["config"]:
        console.print("[dim]the two configs are the same[/]")


def _plain(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)
