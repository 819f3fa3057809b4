"""What every command module shares: the consoles, the repeated options, the global flags."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)
state: dict[str, bool] = {"quiet": False}  # set by the global --quiet flag in main.py

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: --set train.lr=1e-4 (repeatable)."),
]
AllowPickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Also load .bin/.pt pickle weights (with torch weights_only=True); only for files you trust.",
    ),
]
StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Refuse (exit 2) an adapter whose base has another sha256 than the one it was trained on "
        "(default: warn).",
    ),
]


def strict_process(strict: bool) -> None:
    """--strict for commands whose loading happens deeper down (eval, serve and its hot-loaded adapters)."""
    if strict:
        import os

        from smolora.model.lineage import STRICT_ENV

        os.environ[STRICT_ENV] = "1"
