"""`smolora data inspect`.

Run as:
    smolora data inspect examples/data/quickstart_train.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from smolora.cli.common import SetOpt, console

data_app = typer.Typer(help="Look at data before spending compute on it.", no_args_is_help=True)


@data_app.command("inspect")
def data_inspect(
    files: Annotated[list[str], typer.Argument(help="Data files or globs.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Use this run config's data settings.")
    ] = None,
    set_: SetOpt = None,
    examples: Annotated[int, typer.Option(help="Rendered examples to show.")] = 3,
) -> None:
    """Show the detected shape, field mapping, counts, token lengths and rendered examples.

    The part of each example the model is trained on is highlighted in green. Preference data
    (--set train.objective=dpo|orpo|simpo|kto|grpo, or any file with chosen and rejected
    columns, read as dpo) shows the token lengths of prompt, chosen and rejected, and the rows
    training drops (chosen == rejected, an empty prompt or answer) by record number.

    Example: smolora data inspect examples/data/quickstart_train.jsonl
    """
    from smolora.config import load_config
    from smolora.data import inspect_data
    from smolora.model.load import load_tokenizer
    from smolora.model.store import resolve_model

    cfg = load_config(config, [*(set_ or []), f"data.path={json.dumps(files)}"])
    report = inspect_data(files, cfg, load_tokenizer(resolve_model(cfg.model.name)), n_examples=examples)
    print_inspect(report, cfg.data.max_length)


def print_inspect(report: dict, max_length: int) -> None:
    from rich.text import Text

    table = Table(title="data", show_header=False)
    for key in (
        "files",
        "format",
        "objective",
        "mapping",
        "counts",
        "lengths",
        "part_lengths",
        "truncated",
        "zero_label_rows",
        "trainable_share",
    ):
        if key in report:
            table.add_row(key, json.dumps(report[key], default=str))
    console.print(table)
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    for f in report.get("flagged", []):  # preference rows the objective drops
        console.print(f"dropped: record {f['record']}: {', '.join(f['problems'])}", highlight=False)
    labels = report.get("example_labels", [])
    for i, segments in enumerate(report.get("examples", []), 1):
        text = Text()
        for piece, trained in segments:
            text.append(piece, style="bold green" if trained else "dim")
        name = labels[i - 1] if i <= len(labels) else f"example {i}"
        console.rule(f"{name} (green = trained on, max_length {max_length})")
        console.print(text)


@data_app.command("pairs")
def data_pairs(
    data: Annotated[str, typer.Argument(help="SFT data file: any shape `smolora data inspect` reads.")],
    run: Annotated[
        Path, typer.Option("--run", "-r", help="Finished run whose model writes the rejected answers.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Pairs file to write (default: DATA's name + .pairs.jsonl beside it)."
        ),
    ] = None,
    max_examples: Annotated[
        int | None,
        typer.Option(
            min=1, help="Read only the first N rows of DATA (default: the run's data.max_examples)."
        ),
    ] = None,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature (0: greedy).")] = 1.0,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Tokens per sampled answer (default: the run's eval.max_new_tokens)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (default: the run's train.seed).")] = None,
    set_: SetOpt = None,
) -> None:
    """Preference pairs for train.objective=dpo: the reference answer is chosen, the run's own sample rejected.

    Reads DATA with the run's data settings, samples one answer per prompt (batches of
    eval.batch_size) and keeps the prompts where the sample differs from the reference (case and
    spacing aside). Writes JSON lines {"prompt", "chosen", "rejected"} (and "system" when the
    example has one) all at once: data/train.jsonl gives data/train.pairs.jsonl unless --out says
    otherwise; DATA itself is never overwritten.

    Example: smolora data pairs examples/data/quickstart_train.jsonl --run runs/quickstart --out pairs.jsonl
    """
    from smolora.eval.pairs import build_pairs

    result = build_pairs(
        run,
        data,
        out,
        max_examples=max_examples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        overrides=set_ or [],
    )
    c = result["counts"]
    table = Table(title="pairs", show_header=False)
    table.add_row("data", f"{data} ({result['format']})")
    table.add_row("rows read", str(c["read"]))
    if c["dropped_by_cleaning"] or c["no_answer"]:
        table.add_row(
            "not prompts",
            f"{c['dropped_by_cleaning']} dropped by cleaning, {c['no_answer']} without an answer",
        )
    table.add_row("pairs written", str(c["pairs"]))
    table.add_row("skipped: model gave the reference", str(c["same"]))
    if c["empty_answer"]:
        table.add_row("skipped: empty sample", str(c["empty_answer"]))
    table.add_row(
        "sampling",
        f"temperature {result['temperature']}, {result['max_new_tokens']} new tokens, seed {result['seed']}, {result['seconds']} s",
    )
    console.print(table)
    console.print(f"written to {result['out']}")
    console.print(
        f"train on it: smolora train CONFIG --set train.objective=dpo --set data.path={result['out']} "
        f"--set model.adapter={run}",
        highlight=False,
    )
