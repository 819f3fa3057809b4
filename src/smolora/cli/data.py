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

    The part of each example the model is trained on is highlighted in green.

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
        "mapping",
        "counts",
        "lengths",
        "truncated",
        "zero_label_rows",
        "trainable_share",
    ):
        if key in report:
            table.add_row(key, json.dumps(report[key], default=str))
    console.print(table)
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    for i, segments in enumerate(report.get("examples", []), 1):
        text = Text()
        for piece, trained in segments:
            text.append(piece, style="bold green" if trained else "dim")
        console.rule(f"example {i} (green = trained on, max_length {max_length})")
        console.print(text)
