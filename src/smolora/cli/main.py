"""The `smolora` command line: the app, its global flags, and every command, registered in the order
`--help` lists them. Each command lives in the module named for its group; every one has --help with an
example.

Run as:
    smolora train examples/quickstart.yaml --set train.max_steps=20
    smolora generate runs/quickstart "Extract the order: 3 lamps to Lisbon"
    smolora data inspect examples/data/quickstart_train.jsonl
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.markup import escape

from smolora.cli import (
    bench,
    config,
    data,
    doctor,
    eval,
    export,
    generate,
    jobs,
    models,
    serve,
    sweep,
    train,
    ui,
)
from smolora.cli.common import err, state
from smolora.errors import SmoLoRAError

app = typer.Typer(
    help="SmoLoRA: fine-tune language models with LoRA and its relatives.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
for command in (
    train.train,
    sweep.sweep,
    generate.generate,
    generate.chat,
    train.init,
):
    app.command()(command)
app.command("eval")(eval.eval_cmd)
for command in (export.merge, export.export, export.push, serve.serve):
    app.command()(command)
app.command("ui")(ui.ui)
app.command("bench")(bench.bench)
app.command("doctor")(doctor.doctor)
app.add_typer(data.data_app, name="data")
app.add_typer(config.config_app, name="config")
app.add_typer(models.models_app, name="models")
app.add_typer(models.layers_app, name="layers")
app.add_typer(eval.runs_app, name="runs")
app.add_typer(jobs.jobs_app, name="jobs")


@app.callback()
def _global(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug output.")] = False,
) -> None:
    from smolora.logs import setup_logging

    setup_logging(level=logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    app.info.context_settings = {"obj": {"quiet": quiet}}
    state["quiet"] = quiet


def main() -> None:
    try:
        app()
    except SmoLoRAError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except MemoryError:
        err.print(
            "[bold red]error:[/] out of memory; set train.micro_batch=1 (the same gradient, a fifth of the "
            "memory), lower data.max_length, or set model.gradient_checkpointing=true"
        )
        sys.exit(3)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]; continue a training run with: smolora train CONFIG --resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
