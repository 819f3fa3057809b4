"""`smolora doctor`: check Python, packages, device, memory, disk and the bundled model.

Run as:
    smolora doctor
    smolora doctor --json > doctor.json
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
STYLE = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Check that this machine can fine-tune: versions, device, memory, disk, the bundled model.

    Every problem comes with the command that fixes it. Exit code 1 when a check fails
    (warnings alone exit 0). Hashing the bundled model's files takes a few seconds.

    Example: smolora doctor --json
    """
    from smolora.doctor import run_checks, summary

    if as_json:
        result = summary(run_checks())
        print(json.dumps(result, indent=2))
    else:
        with Console(stderr=True).status("checking (sha256 of the bundled model takes a few seconds)"):
            result = summary(run_checks())
        table = Table(title="smolora doctor")
        for col in ("check", "status", "found"):
            table.add_column(col, overflow="fold")
        for c in result["checks"]:
            table.add_row(c["name"], STYLE[c["status"]], escape(c["detail"]))
        console.print(table)
        # Fixes below the table, one unwrapped line each, so they can be copied as they are.
        for c in result["checks"]:
            if c["status"] != "ok" and c["fix"]:
                console.print(f"{STYLE[c['status']]} {escape(c['name'])}: {escape(c['fix'])}", soft_wrap=True)
        n = result["counts"]
        verdict = "[green]ready[/]" if result["ok"] else "[bold red]not ready[/]: run the fix of each FAIL"
        console.print(f"{n['ok']} ok, {n['warn']} warnings, {n['fail']} failed: {verdict}")
    if not result["ok"]:
        raise typer.Exit(1)
