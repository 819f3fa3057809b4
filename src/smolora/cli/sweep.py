"""`smolora sweep`: a grid of training runs, one after another, then one table comparing them.

Run as:
    smolora sweep examples/quickstart.yaml --set train.lr=1e-4,3e-4,1e-3 --set train.epochs=1,3
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from smolora.cli.common import SetOpt, console, err, state


def sweep(
    config: Annotated[Path, typer.Argument(help="YAML or JSON run config every run starts from.")],
    set_: SetOpt = None,
    max_runs: Annotated[
        int | None,
        typer.Option("--max-runs", min=1, help="Allow a grid of up to this many runs (default limit 64)."),
    ] = None,
) -> None:
    """Train a grid of runs, one after another, and compare their validation losses in one table.

    Each --set KEY=A,B,C (a plain comma list) is an axis; other --sets apply to every run.

    Runs go to output.dir/NAME-sweep/; the same command again skips finished runs, resumes an interrupted one.

    Example: smolora sweep examples/quickstart.yaml --set train.lr=1e-4,3e-4,1e-3 --set train.epochs=1,3
    """
    from smolora.train.sweep import SWEEP_FILE, SWEEP_PLOT, run_sweep

    try:
        result = run_sweep(
            config, set_ or [], max_runs=max_runs, show_progress=not state["quiet"], say=console.print
        )
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]; run the same `smolora sweep` command again to continue")
        raise typer.Exit(130) from None
    console.print(sweep_table(result))
    sweep_dir = Path(result["sweep_dir"])
    console.print(f"[green]done:[/] {sweep_dir / SWEEP_FILE} and {sweep_dir / SWEEP_PLOT}")


def sweep_table(result: dict[str, Any]) -> Table:
    """One row per run: its axis values, steps, final train and eval loss, time; the best starred."""
    table = Table(title=f"sweep of {result['config']} (best: lowest eval loss)")
    for key in result["axes"]:
        table.add_column(key)
    for column in ("steps", "train loss", "eval loss", "time", "run"):
        table.add_column(column, justify="right" if column != "run" else "left")
    for run in result["runs"]:
        best = run["name"] == result["best"]
        runtime = run["train_runtime_s"]
        table.add_row(
            *run["values"].values(),
            str(run["steps"]),
            _num(run["train_loss"]),
            _num(run["eval_loss"]) + (" *" if best else ""),
            f"{runtime:.0f}s" if runtime is not None else "-",
            run["name"] + (f" ({run['status']})" if run["status"] != "trained" else ""),
            style="bold green" if best else None,
        )
    return table


def _num(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"
