"""`smolora generate` and `smolora chat`.

Run as:
    smolora generate runs/quickstart "Extract the order: 3 lamps to Lisbon"
    smolora chat runs/quickstart
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from smolora.cli.common import AllowPickleOpt, StrictOpt, console
from smolora.errors import SmoLoRAError


def generate(
    model: Annotated[str, typer.Argument(help="Run directory, adapter directory or model name.")],
    prompts: Annotated[list[str] | None, typer.Argument(help="One or more prompts.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="A file of prompts: .txt (one a line) or .jsonl.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Prompts per batch.")] = 16,
    domain: Annotated[str | None, typer.Option(help="Domain tag, as in training (seed 002).")] = None,
    sample: Annotated[bool, typer.Option("--sample", help="Sample instead of greedy decoding.")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    allow_pickle: AllowPickleOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Generate answers in batches.

    Example: smolora generate runs/quickstart "What is the capital of France?" --max-new-tokens 32
    """
    from smolora.generate import generate as run_generate
    from smolora.model.load import load_for_inference

    items = list(prompts or [])
    if file is not None:
        items += read_prompt_file(file)
    if not items:
        raise SmoLoRAError("no prompt given: pass PROMPT arguments or --file prompts.txt")
    m, tok, meta = load_for_inference(model, allow_pickle=allow_pickle or None, strict=strict)
    outs = run_generate(
        m,
        tok,
        items,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        domain=domain,
        do_sample=sample,
        temperature=temperature,
        system_prompt=meta.get("system_prompt"),
    )
    for p, o in zip(items, outs, strict=True):
        if as_json:
            console.print_json(json.dumps({"prompt": p, "output": o}))
        else:
            console.print(f"[bold cyan]> {p}[/]\n{o}\n", highlight=False)


def read_prompt_file(path: Path) -> list[str]:
    from smolora.errors import DatasetError

    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        out = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            text = (
                row
                if isinstance(row, str)
                else next(
                    (row[k] for k in ("prompt", "instruction", "question", "input", "text") if k in row), None
                )
            )
            if not isinstance(text, str):
                raise DatasetError(f"{path}:{i}: no prompt field; found fields {sorted(row)}")
            out.append(text)
        return out
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def chat(
    model: Annotated[str, typer.Argument(help="Run directory, adapter directory or model name.")],
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 256,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    allow_pickle: AllowPickleOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Talk to a model in the terminal (empty line or Ctrl-D to quit, /reset to forget).

    Example: smolora chat runs/quickstart
    """
    from smolora.generate import generate as run_generate
    from smolora.model.load import load_for_inference

    m, tok, meta = load_for_inference(model, allow_pickle=allow_pickle or None, strict=strict)
    history: list[dict[str, str]] = []
    console.print(f"[dim]chatting with {model}; empty line to quit, /reset to start over[/]")
    while True:
        try:
            line = console.input("[bold green]you> [/]")
        except (EOFError, KeyboardInterrupt):
            break
        if not line.strip():
            break
        if line.strip() == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": line})
        answer = run_generate(
            m,
            tok,
            [history],
            max_new_tokens=max_new_tokens,
            system_prompt=system or meta.get("system_prompt"),
        )[0]
        history.append({"role": "assistant", "content": answer})
        console.print(f"[bold magenta]bot>[/] {answer}", highlight=False)
