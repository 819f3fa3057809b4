"""The Export view's server side: the argv for `smolora merge` / `smolora export`.

When this build's CLI lacks the command but `smolora.export.merge` has the function behind it,
the function runs in a subprocess of its own (a merge loads two models; the UI process
stays free); when neither exists the view says "not available".

Run as:
    argv = export_argv("gguf", "runs/quickstart", "q8_0", None, {"export"})
"""

from __future__ import annotations

import importlib.util
import sys

from smolora.ui.jobs import cli_argv

# What each format needs: the CLI command, and the function that does the same.
FORMATS = {
    "merge": ("merge", "merge_run"),
    "gguf": ("export", "export_run"),
    "ollama": ("export", "export_run"),
}


def _function_exists(name: str) -> bool:
    if importlib.util.find_spec("smolora.export.merge") is None:
        return False
    import smolora.export.merge

    return hasattr(smolora.export.merge, name)


def availability(commands: set[str]) -> dict[str, str | None]:
    """Per format: "cli", "function" or None (not available in this build)."""
    out: dict[str, str | None] = {}
    for fmt, (command, function) in FORMATS.items():
        out[fmt] = "cli" if command in commands else "function" if _function_exists(function) else None
    return out


def export_argv(fmt: str, run: str, quant: str, out: str | None, commands: set[str]) -> list[str] | None:
    command, function = FORMATS[fmt]
    how = availability(commands)[fmt]
    if how == "cli":
        args = [command, run]
        if fmt != "merge":
            args += ["--format", fmt, "--quant", quant]
        return cli_argv(*args, *(["--out", out] if out else []))
    if how == "function":
        call = (
            "merge_run(a[1], a[4] or None)"
            if fmt == "merge"
            else "export_run(a[1], a[2], a[3], a[4] or None)"
        )
        code = (
            "import sys; from smolora.errors import SmoLoRAError; from smolora.train.progress import setup_logging\n"
            f"from smolora.export.merge import {function}\n"
            "setup_logging(); a = sys.argv\n"
            f"try:\n    print('written to', {call})\n"
            "except SmoLoRAError as e:\n    print('error:', e); sys.exit(2)"
        )
        return [sys.executable, "-c", code, run, fmt, quant, out or ""]
    return None
