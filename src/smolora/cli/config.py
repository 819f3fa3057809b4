"""`smolora config show` and `smolora config schema`.

Run as:
    smolora config show examples/quickstart.yaml --set lora.r=8
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from smolora.cli.common import SetOpt, console

config_app = typer.Typer(help="Show the resolved config or its JSON schema.", no_args_is_help=True)


@config_app.command("show")
def config_show(
    config: Annotated[Path | None, typer.Argument(help="YAML or JSON run config.")] = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML.")] = False,
) -> None:
    """Print the resolved config (inheritance and overrides applied, defaults filled in).

    Example: smolora config show examples/quickstart.yaml --set lora.r=8
    """
    import yaml

    from smolora.config import load_config

    cfg = load_config(config, set_ or [])
    text = json.dumps(cfg.to_dict(), indent=2) if as_json else yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    console.print(text, highlight=False, markup=False)


@config_app.command("schema")
def config_schema_cmd() -> None:
    """Print the JSON schema of a run config (for editors and the web UI).

    Example: smolora config schema > smolora.schema.json
    """
    from smolora.config import config_schema

    print(json.dumps(config_schema(), indent=2))
