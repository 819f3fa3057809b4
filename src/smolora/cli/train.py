"""`smolora train` and `smolora init`.

Run as:
    smolora train examples/quickstart.yaml --set train.max_steps=20
    smolora init --out my.yaml --model smollm2-135m --data data.jsonl
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from smolora.cli.common import SetOpt, console, state
from smolora.errors import SmoLoRAError


def train(
    config: Annotated[Path | None, typer.Argument(help="YAML or JSON run config.")] = None,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run's last checkpoint.")
    ] = False,
    nproc: Annotated[
        int | None, typer.Option("--nproc", help="Processes per node (one per GPU); >1 launches DDP.")
    ] = None,
    nnodes: Annotated[int, typer.Option("--nnodes", help="Number of machines.")] = 1,
    node_rank: Annotated[int, typer.Option("--node-rank", help="This machine's rank, 0..nnodes-1.")] = 0,
    master_addr: Annotated[str | None, typer.Option("--master-addr", help="Address of node 0.")] = None,
    master_port: Annotated[int | None, typer.Option("--master-port", help="Port on node 0.")] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Continue this run's adapter (sets model.adapter), e.g. DPO after SFT: --from runs/quickstart.",
        ),
    ] = None,
) -> None:
    """Fine-tune a model as the config says (on several processes, GPUs or nodes with --nproc/--nnodes).

    Example: smolora train examples/quickstart.yaml --set train.max_steps=50 --set lora.r=8

    Example: smolora train examples/dpo.yaml --from runs/quickstart   (DPO continuing an SFT run)

    Example: smolora train examples/quickstart.yaml --nproc 4   (4 GPUs, DDP; see docs/distributed.md)
    """
    from smolora.config import load_config
    from smolora.train.launch import LaunchOptions, inside_launch, run_launch, train_cli_args, wants_launch
    from smolora.train.recipe import train as run_training

    if start is not None:  # before the --set list, so an explicit --set model.adapter=... still wins
        set_ = [f"model.adapter={start}", *(set_ or [])]
    cfg = load_config(config, set_ or [])
    if cfg.data.path is None:
        raise SmoLoRAError("no training data: set data.path in the config or pass --set data.path=FILE")
    launch = LaunchOptions(nproc, nnodes, node_rank, master_addr, master_port, cfg.train.accelerate_config)
    if wants_launch(launch):  # re-run this command once per process under torchrun / accelerate
        verbose = logging.getLogger("smolora").level == logging.DEBUG
        run_launch(launch, train_cli_args(config, set_ or [], resume, state["quiet"], verbose))
        run_dir = cfg.run_dir
    else:
        run_dir = run_training(cfg, resume=resume, show_progress=not state["quiet"])
    if not inside_launch():  # the launching process speaks for its workers
        console.print(f"[green]done:[/] run directory {run_dir}  (adapter in {run_dir / 'adapter'})")


def init(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the config.")] = Path(
        "smolora.yaml"
    ),
    model: Annotated[str | None, typer.Option(help="Model name (asked when missing).")] = None,
    data: Annotated[str | None, typer.Option(help="Training data file (asked when missing).")] = None,
    task: Annotated[str | None, typer.Option(help="Short task description (asked when missing).")] = None,
) -> None:
    """Ask for model, data and task, inspect the data, and write a commented YAML config.

    Example: smolora init --out my.yaml --model smollm2-135m --data data.jsonl --task "support answers"
    """
    from smolora.config import load_config
    from smolora.data import detect_format, read_records

    model = model or typer.prompt("model (alias, directory, .gguf or hub id)", default="smollm2-135m")
    data = data or typer.prompt("training data file")
    task = task or typer.prompt("what should the model learn", default="follow my examples")
    cfg = load_config(None, [f"model.name={model}", f"data.path={data}"])
    records = read_records(data)
    fmt, mapping = detect_format(records, cfg.data)
    name = out.stem
    out.write_text(
        f"# SmoLoRA run config, written by `smolora init`. Task: {task}\n"
        f"# Train with: smolora train {out}\n"
        f"model:\n  name: {model}          # alias, local directory, .gguf file or hub id\n"
        f"data:\n  path: {data}      # {len(records)} rows, detected format: {fmt}\n"
        f"  format: {fmt}\n  fields: {json.dumps(mapping)}   # our role -> your column\n"
        "  max_length: 512           # longer examples are truncated\n"
        "  val_ratio: 0.1            # held out for eval loss and `smolora eval`\n"
        "lora:\n  r: 16                     # adapter rank: capacity vs size\n  alpha: 32\n  dropout: 0.0\n"
        "train:\n  epochs: auto              # picked from the data size; the log says why (docs/defaults.md)\n"
        "  lr: auto                  # picked from the method and the model size\n"
        "  batch_size: 8\n  save_every: 50            # checkpoint interval (steps); the best one is always kept\n"
        f"output:\n  dir: runs\n  name: {name}\n",
        encoding="utf-8",
    )
    load_config(out)  # what we wrote must validate
    console.print(f"[green]wrote {out}[/] ({fmt} format, {len(records)} rows); next: smolora train {out}")
