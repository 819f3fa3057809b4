"""`smolora ui`: serve the web UI (loopback by default) on a workspace directory.

Run as:
    smolora ui --port 7860 --workspace ~/finetunes
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def ui(
    host: Annotated[
        str, typer.Option(help="Interface to bind; anything but loopback exposes the UI.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 7860,
    workspace: Annotated[
        Path, typer.Option(help="Directory the UI may read and write (data, configs, runs).")
    ] = Path("."),
) -> None:
    """Open the web UI: train, watch, compare, chat, export and manage models in the browser.

    Every file the browser names must lie inside --workspace; training runs `smolora train` there.

    Example: smolora ui --port 7860 --workspace .
    """
    import uvicorn
    from rich.console import Console

    from smolora.errors import SmoLoRAError
    from smolora.ui import create_app

    if not workspace.is_dir():
        raise SmoLoRAError(f"--workspace {workspace}: no such directory; create it or pick another")
    console = Console(stderr=True)
    allowed = ["127.0.0.1", "localhost", "[::1]", "::1"]
    if host not in LOOPBACK:
        console.print(
            f"[yellow]warning:[/] binding {host}: anyone who can reach this machine can train, read and "
            "upload files in the workspace; prefer an SSH tunnel to 127.0.0.1"
        )
        allowed = ["*"]
    # Work where the CLI would: relative paths in configs and in runs' smolora.json (a base model
    # given as `my-model/`) then mean the same to the UI as to `smolora train` run in the workspace.
    os.chdir(workspace)
    app = create_app(Path("."), allowed_hosts=allowed)
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    console.print(f"SmoLoRA UI on [bold]http://{url_host}:{port}[/]  (workspace {Path.cwd()})")
    uvicorn.run(app, host=host, port=port, log_level="warning")
