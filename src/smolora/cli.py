"""The `smolora` command line. Every command has --help with an example.

Run as:
    smolora train examples/quickstart.yaml --set train.max_steps=20
    smolora generate runs/quickstart "Extract the order: 3 lamps to Lisbon"
    smolora data inspect examples/data/quickstart_train.jsonl
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from smolora.errors import SmoLoRAError

app = typer.Typer(
    help="SmoLoRA: fine-tune language models with LoRA and its relatives.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Look at data before spending compute on it.", no_args_is_help=True)
config_app = typer.Typer(help="Show the resolved config or its JSON schema.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")

console = Console()
err = Console(stderr=True)

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


@app.callback()
def _global(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug output.")] = False,
) -> None:
    from smolora.logs import setup_logging

    setup_logging(level=logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    app.info.context_settings = {"obj": {"quiet": quiet}}
    _state["quiet"] = quiet


_state: dict[str, bool] = {"quiet": False}


@app.command()
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
) -> None:
    """Fine-tune a model as the config says (on several processes, GPUs or nodes with --nproc/--nnodes).

    Example: smolora train examples/quickstart.yaml --set train.max_steps=50 --set lora.r=8

    Example: smolora train examples/quickstart.yaml --nproc 4   (4 GPUs, DDP; see docs/distributed.md)
    """
    from smolora.config import load_config
    from smolora.launch import LaunchOptions, inside_launch, run_launch, train_cli_args, wants_launch
    from smolora.train import train as run_training

    cfg = load_config(config, set_ or [])
    if cfg.data.path is None:
        raise SmoLoRAError("no training data: set data.path in the config or pass --set data.path=FILE")
    launch = LaunchOptions(nproc, nnodes, node_rank, master_addr, master_port, cfg.train.accelerate_config)
    if wants_launch(launch):  # re-run this command once per process under torchrun / accelerate
        verbose = logging.getLogger("smolora").level == logging.DEBUG
        run_launch(launch, train_cli_args(config, set_ or [], resume, _state["quiet"], verbose))
        run_dir = cfg.run_dir
    else:
        run_dir = run_training(cfg, resume=resume, show_progress=not _state["quiet"])
    if not inside_launch():  # the launching process speaks for its workers
        console.print(f"[green]done:[/] run directory {run_dir}  (adapter in {run_dir / 'adapter'})")


@app.command()
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
    m, tok, meta = load_for_inference(model, allow_pickle=allow_pickle or None)
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


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="Run directory, adapter directory or model name.")],
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 256,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    allow_pickle: AllowPickleOpt = False,
) -> None:
    """Talk to a model in the terminal (empty line or Ctrl-D to quit, /reset to forget).

    Example: smolora chat runs/quickstart
    """
    from smolora.generate import generate as run_generate
    from smolora.model.load import load_for_inference

    m, tok, meta = load_for_inference(model, allow_pickle=allow_pickle or None)
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


@data_app.command("inspect")
def data_inspect(
    files: Annotated[list[str], typer.Argument(help="Data files or globs.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Use this run config's data settings.")
    ] = None,
    set_: SetOpt = None,
    examples: Annotated[int, typer.Option(help="Rendered examples to show.")] = 3,
) -> None:
    """Show the detected shape, field mapping, counts, token lengths and rendered examples.

    The part of each example the model is trained on is highlighted in green.

    Example: smolora data inspect examples/data/quickstart_train.jsonl
    """
    from smolora.config import load_config
    from smolora.data import inspect_data
    from smolora.model.load import load_tokenizer
    from smolora.model.store import resolve_model

    cfg = load_config(config, [*(set_ or []), f"data.path={json.dumps(files)}"])
    report = inspect_data(files, cfg, load_tokenizer(resolve_model(cfg.model.name)), n_examples=examples)
    print_inspect(report, cfg.data.max_length)


def print_inspect(report: dict, max_length: int) -> None:
    from rich.text import Text

    table = Table(title="data", show_header=False)
    for key in (
        "files",
        "format",
        "mapping",
        "counts",
        "lengths",
        "truncated",
        "zero_label_rows",
        "trainable_share",
    ):
        if key in report:
            table.add_row(key, json.dumps(report[key], default=str))
    console.print(table)
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    for i, segments in enumerate(report.get("examples", []), 1):
        text = Text()
        for piece, trained in segments:
            text.append(piece, style="bold green" if trained else "dim")
        console.rule(f"example {i} (green = trained on, max_length {max_length})")
        console.print(text)


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


@app.command()
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
        "train:\n  epochs: 2\n  lr: 2.0e-4\n  batch_size: 8\n  save_every: 50            # checkpoint interval (steps)\n"
        f"output:\n  dir: runs\n  name: {name}\n",
        encoding="utf-8",
    )
    load_config(out)  # what we wrote must validate
    console.print(f"[green]wrote {out}[/] ({fmt} format, {len(records)} rows); next: smolora train {out}")


# --- commands defined in their own modules are registered here (one line each) -------------
from smolora.cli_models import layers_app, models_app  # noqa: E402

app.add_typer(models_app, name="models")
app.add_typer(layers_app, name="layers")
from smolora.cli_eval import eval_cmd, runs_app  # noqa: E402

app.command("eval")(eval_cmd)
app.add_typer(runs_app, name="runs")
from smolora import cli_export  # noqa: E402

for _deploy_cmd in (cli_export.merge, cli_export.export, cli_export.push, cli_export.serve):
    app.command()(_deploy_cmd)
from smolora.cli_ui import ui  # noqa: E402

app.command("ui")(ui)
from smolora.cli_bench import bench  # noqa: E402

app.command("bench")(bench)
from smolora.cli_doctor import doctor  # noqa: E402

app.command("doctor")(doctor)


def main() -> None:
    try:
        app()
    except SmoLoRAError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except MemoryError:
        err.print(
            "[bold red]error:[/] out of memory; lower train.batch_size (raise train.grad_accum to keep the "
            "effective batch), lower data.max_length, or set model.gradient_checkpointing=true"
        )
        sys.exit(3)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]; continue a training run with: smolora train CONFIG --resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
