"""CLI commands to deploy a run: `merge`, `export`, `push`.

Run as:
    smolora merge runs/quickstart
    smolora export runs/quickstart --format gguf --quant q8_0
    smolora push runs/quickstart --repo me/quickstart-lora
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()

RunArg = Annotated[str, typer.Argument(help="Run directory (or its adapter/ directory).")]


def print_parity(out_dir: Path) -> None:
    from smolora.runs import PARITY_FILE

    parity = json.loads((out_dir / PARITY_FILE).read_text())
    table = Table(title=f"parity vs the {parity['reference']} on {len(parity['prompts'])} held-out prompts")
    for col in ("artifact", "greedy match", "token agreement", "max logit diff", "perplexity", "verdict"):
        table.add_column(col, justify="left" if col == "artifact" else "right")
    for name, c in parity["checks"].items():
        verdict = (
            "[red]FAIL[/]"
            if c["broken"]
            else ("[green]ok[/]" if c["precision"] in ("f32", "f16") else "reported")
        )
        table.add_row(
            name,
            f"{c['greedy_match']:.0%}",
            f"{c['token_agreement']:.1%}",
            f"{c['max_logit_diff']:.2g}",
            # signed: ppl_rel_diff is the size of the drift, the sign says which way it went
            f"{c['ppl']:.3f} ({(c['ppl'] - c['ppl_reference']) / c['ppl_reference']:+.2%})",
            verdict,
        )
    console.print(table)


def merge(
    runs: Annotated[list[str], typer.Argument(help="Run directory; two or more: combine their adapters.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output directory (default RUN/merged; combined: runs/A+B-METHOD)."),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(help="Combine: one weight per run, e.g. 0.7,0.3 (default: equal, summing to 1)."),
    ] = None,
    combine: Annotated[
        str | None, typer.Option(help="Combine with linear, cat (default), svd, ties or dare_ties.")
    ] = None,
    density: Annotated[
        float | None, typer.Option(help="ties / dare_ties: share of each update kept (default 0.5).")
    ] = None,
) -> None:
    """Fold the adapter into the base weights (float32): safetensors that load in plain transformers.

    Checks the merged model against the adapter model and writes parity.json next to it. Given two
    or more runs, combines their LoRA adapters instead (PEFT add_weighted_adapter) into a new run
    that eval, chat, serve and export take like a trained one.

    Example: smolora merge runs/quickstart --out merged-quickstart
    Example: smolora merge runs/orders runs/country --weights 1,1 --combine cat
    """
    if len(runs) > 1 or combine or weights or density is not None:
        from smolora.export.combine import combine_runs, parse_weights

        new = combine_runs(runs, parse_weights(weights, len(runs)), combine or "cat", density, out)
        console.print(f"[green]combined run:[/] {new}  (smolora eval {new} scores it against each parent)")
        return
    from smolora.export.merge import merge_run

    out_dir = merge_run(runs[0], out)
    print_parity(out_dir)
    console.print(f"[green]merged model:[/] {out_dir}  (AutoModelForCausalLM.from_pretrained('{out_dir}'))")


def export(
    run: RunArg,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="safetensors (merged), gguf, gguf-lora (the adapter as a LoRA GGUF + the base GGUF) or ollama.",
        ),
    ] = "gguf",
    quant: Annotated[
        str | None,
        typer.Option(
            "--quant",
            "-q",
            help="GGUF type: f32, f16, q8_0, q6_k, q5_k_m or q4_k_m (k-quants need llama.cpp). "
            "Default f16 for gguf and gguf-lora (its base file: f32, f16 or q8_0), q4_k_m for ollama.",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output directory (default RUN/FORMAT).")
    ] = None,
) -> None:
    """Write a deployable artifact: merged safetensors, a GGUF, the adapter as a LoRA GGUF beside the
    unmerged base GGUF, or a GGUF plus Ollama Modelfiles (merged, and FROM base + ADAPTER).

    Every export is reloaded (by transformers, and by llama.cpp when installed) and compared with
    the adapter model (parity.json); f32/f16 fail beyond tolerance, quantized types report their drift.

    Example: smolora export runs/quickstart --format ollama --quant q8_0
    Example: smolora export runs/quickstart --format gguf-lora   # llama-cli -m BASE.gguf --lora LORA.gguf
    """
    from smolora.export.merge import export_run

    out_dir = export_run(run, format, quant, out)
    print_parity(out_dir)
    console.print(f"[green]{format} written to[/] {out_dir}")
    if format == "gguf-lora":
        row = next(
            c
            for n, c in json.loads((out_dir / "parity.json").read_text())["checks"].items()
            if n.startswith("gguf-lora")
        )
        console.print(f"next: llama-cli -m {out_dir / row['base_file']} --lora {out_dir / row['file']}")
    if format == "ollama":
        console.print(f"next: cd {out_dir} && ollama create my-model -f Modelfile && ollama run my-model")
        if (out_dir / "Modelfile.adapter").exists():
            console.print("  or, the base with the LoRA adapter: ollama create my-model -f Modelfile.adapter")


def push(
    run: RunArg,
    repo: Annotated[str, typer.Option("--repo", help="Hub repo id: USER/NAME.")],
    merged: Annotated[
        bool, typer.Option("--merged", help="Upload the merged model, not the adapter.")
    ] = False,
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    token: Annotated[
        str | None, typer.Option(help="Hub token (default: HF_TOKEN or `hf auth login`).")
    ] = None,
    message: Annotated[str | None, typer.Option(help="Commit message.")] = None,
) -> None:
    """Upload the adapter (or, with --merged, the merged model) with a generated model card.

    Example: smolora push runs/quickstart --repo me/quickstart-lora --private
    """
    from smolora.export.push import push_run

    result = push_run(run, repo, merged=merged, private=private, token=token, message=message)
    console.print(
        f"[green]pushed[/] {len(result['files'])} files to {result['url']} (commit {result['commit'][:10]})"
    )
