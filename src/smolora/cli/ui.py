"""`smolora ui`: serve the web UI (loopback by default) on a workspace directory.

Each launch makes a random token and prints the URL that carries it (as Jupyter does);
opening that URL once sets a cookie, and the API answers nobody without it.

Run as:
    smolora ui --port 7860 --workspace ~/finetunes
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from smolora.cli.common import StrictOpt, strict_process

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
JobsWorkers = Annotated[
    int,
    typer.Option(
        min=0,
        help="Training jobs run at once from the workspace's queue (WORKSPACE/.smolora/jobs); "
        "the rest wait their turn. 0: only queue them (a UI started with workers runs them).",
    ),
]


def ui(
    host: Annotated[
        str, typer.Option(help="Interface to bind; anything but loopback exposes the UI.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 7860,
    workspace: Annotated[
        Path, typer.Option(help="Directory the UI may read and write (data, configs, runs).")
    ] = Path("."),
    token: Annotated[
        str | None,
        typer.Option(
            envvar="SMOLORA_UI_TOKEN",
            show_envvar=True,
            help="The token the browser must present (default: a new random one per launch). "
            "Prefer the environment variable: other users can read command lines.",
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Another Host name browsers may use (the machine's name behind --host 0.0.0.0, a "
            "proxy's); repeat for several. Loopback names and --host are always allowed."
        ),
    ] = None,
    allow_remote_code: Annotated[
        bool,
        typer.Option(
            "--allow-remote-code",
            help="Let the browser set model.trust_remote_code and model.allow_pickle (refused otherwise).",
        ),
    ] = False,
    jobs_workers: JobsWorkers = 1,
    strict: StrictOpt = False,
) -> None:
    """Open the web UI: train, watch, compare, chat, export and manage models in the browser.

    Every file the browser names must lie inside --workspace; training runs `smolora train` there,
    one queued job after another (the queue survives a restart: `smolora jobs list --jobs-dir
    WORKSPACE/.smolora/jobs`).

    Example: smolora ui --port 7860 --workspace .
    """
    import uvicorn
    from rich.console import Console

    from smolora.errors import SmoLoRAError
    from smolora.ui import create_app
    from smolora.ui.guard import MIN_TOKEN, allowed_hosts, new_token

    strict_process(strict)  # the Chat view's loads refuse a base that is not the run's own
    if not workspace.is_dir():
        raise SmoLoRAError(f"--workspace {workspace}: no such directory; create it or pick another")
    if token is not None and len(token.strip()) < MIN_TOKEN:
        raise SmoLoRAError(
            f"--token / SMOLORA_UI_TOKEN: use at least {MIN_TOKEN} characters, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    token = token.strip() if token else new_token()
    console = Console(stderr=True)
    hosts = allowed_hosts(host, allowed_host)
    if host not in LOOPBACK:
        console.print(
            f"[yellow]warning:[/] binding {host}: anyone who can reach this machine and has the token "
            "can train, read and upload files in the workspace; prefer an SSH tunnel to 127.0.0.1. "
            f"Host names accepted: {', '.join(hosts)} (add more with --allowed-host)"
        )
    if allow_remote_code:
        console.print("[yellow]warning:[/] --allow-remote-code: the browser may run code shipped with models")
    # Work where the CLI would: relative paths in configs and in runs' smolora.json (a base model
    # given as `my-model/`) then mean the same to the UI as to `smolora train` run in the workspace.
    os.chdir(workspace)
    app = create_app(Path("."), token, hosts, allow_remote_code, workers=jobs_workers)
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    url = f"http://{url_host}:{port}/?token={token}"
    console.print(f"SmoLoRA UI on [bold]{url}[/]  (workspace {Path.cwd()})", soft_wrap=True, highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning")
