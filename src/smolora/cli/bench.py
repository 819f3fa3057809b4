"""`smolora bench`: SmoLoRA's speed and memory (in a checkout, the peers' too), one process after another.

Prints a table and the targets; with --json writes one record per tool; with --docs FILE
rewrites the generated part of FILE (between the `<!-- bench:start -->` / `<!-- bench:end -->`
markers; the prose around it is kept). Nothing is written unless asked. The peers run from
benchmarks/run_peers.py when this is a SmoLoRA checkout (docs/benchmarks.md says how).

Run as:
    smolora bench --steps 10 --warmup 2 --json bench.json --docs docs/benchmarks.md
    smolora bench --steps 2 --peers naive,grouped      # a quick look
    smolora bench --dpo --steps 20 --warmup 2          # our DPO vs TRL's DPOTrainer (bench/dpo.py)
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from smolora.bench.report import HEADER, command_line, markdown, records, table_rows, targets, write_docs
from smolora.errors import SmoLoRAError

console = Console()


def bench(
    steps: Annotated[int, typer.Option(help="Timed optimizer steps per tool.")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed steps first (allocation, caches).")] = 2,
    peers: Annotated[
        str, typer.Option(help="Comma-separated peer modes: naive,dynamic,grouped,trl,trl-pack.")
    ] = "naive,dynamic,grouped,trl,trl-pack",
    skip_peers: Annotated[bool, typer.Option("--skip-peers", help="Measure SmoLoRA only.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the records here.")] = None,
    docs: Annotated[
        Path | None,
        typer.Option(help="Also rewrite the generated part of this Markdown file (e.g. docs/benchmarks.md)."),
    ] = None,
    model: Annotated[str, typer.Option(help="Model name (alias, directory).")] = "smollm2-135m",
    data: Annotated[
        Path | None, typer.Option(help="Bench data (default: ../shared/bench/bench.jsonl).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for every tool.")] = None,
    profile: Annotated[bool, typer.Option("--profile", help="torch.profiler summary of one step.")] = False,
    convert: Annotated[
        bool, typer.Option("--convert", help="Also time a first-time GGUF conversion (~40 s).")
    ] = False,
    serve: Annotated[
        bool, typer.Option("--serve", help="Also run benchmarks/serve_load.py, when present.")
    ] = False,
    lowmem: Annotated[
        bool,
        typer.Option(
            help="Also run SmoLoRA in both memory modes (the memory target): one row per "
            "forward/backward pass (train.micro_batch=1; 2 in bf16), and gradient checkpointing."
        ),
    ] = True,
    extras: Annotated[bool, typer.Option(help="Load, preprocessing and generation measurements.")] = True,
    fusion: Annotated[bool, typer.Option("--fusion", help="Also SmoLoRA with fusion the other way.")] = False,
    precision: Annotated[
        str,
        typer.Option(
            help="auto: float32, and bfloat16 too where SmoLoRA trains in it (a CPU with avx512_bf16/AMX); "
            "or float32, bfloat16, both. Every training row (SmoLoRA's, each peer's) in each."
        ),
    ] = "auto",
    dpo: Annotated[bool, typer.Option("--dpo", help="Instead: our DPO vs TRL's DPOTrainer.")] = False,
    rounds: Annotated[int, typer.Option(min=1, help="--dpo: runs of each side, alternating.")] = 1,
) -> None:
    """Benchmark SmoLoRA training against the peer scripts, one process after another.

    Example: smolora bench --steps 10 --warmup 2 --json bench.json

    Example: smolora bench --steps 2 --peers naive,grouped --no-lowmem

    Example: smolora bench --steps 6 --peers grouped,trl --precision both

    Example: smolora bench --dpo --steps 20 --warmup 2 --docs docs/benchmarks.md
    """
    if dpo:
        return bench_dpo(model, steps, warmup, threads, rounds, json_out, docs)
    precisions = choose_precisions(precision)
    modes, runner, peers_dir, data = bench_inputs(peers, skip_peers, data)

    from smolora.bench.suite import run_suite  # torch, transformers: once the options are checked

    report = run_suite(
        model,
        data,
        steps,
        warmup,
        threads,
        command=command_line(steps, warmup, modes, skip_peers, json_out, fusion, precision),
        modes=modes,
        peers=runner,
        peers_dir=peers_dir,
        profile=profile,
        lowmem=lowmem,
        extras=extras,
        convert=convert,
        serve=serve,
        fusion=fusion,
        precisions=precisions,
    )
    print_report(report)
    save_report(report, docs, json_out)


# --precision: the precisions every training row runs in (None: float32, and bf16 where SmoLoRA trains in it)
PRECISIONS = {"auto": None, "float32": ["float32"], "bfloat16": ["bfloat16"], "both": ["float32", "bfloat16"]}


def choose_precisions(precision: str) -> list[str] | None:
    if precision not in PRECISIONS:
        raise SmoLoRAError(f"--precision {precision!r}: choose auto, float32, bfloat16 or both")
    return PRECISIONS[precision]


def bench_inputs(
    peers: str, skip_peers: bool, data: Path | None
) -> tuple[list[str], ModuleType | None, Path | None, Path]:
    """(peer modes, their runner, the peers' directory, the bench data), checked before anything runs."""
    modes, runner = choose_peers(peers, skip_peers)
    peers_dir = runner.shared_bench_dir() if runner else None
    data = data or (peers_dir / "bench.jsonl" if peers_dir else None)
    if data is None or not data.exists():
        raise SmoLoRAError(
            "no bench data: pass --data FILE ({instruction, output} rows), or put the peers' directory "
            "(peers.py, bench.jsonl) at ../shared/bench or in $SMOLORA_BENCH_DIR"
        )
    if modes and peers_dir is None:
        console.print("[yellow]peers skipped:[/] ../shared/bench/peers.py not found (set SMOLORA_BENCH_DIR)")
        modes = []
    return modes, runner, peers_dir, data


def save_report(report: dict[str, Any], docs: Path | None, json_out: Path | None) -> None:
    """--docs: the generated block of that Markdown file; --json: the records, and everything beside them."""
    if docs:
        docs.parent.mkdir(parents=True, exist_ok=True)
        write_docs(docs, markdown(report))
        console.print(f"written to {docs}")
    if json_out:
        json_out.write_text(json.dumps(records(report), indent=2) + "\n")
        (json_out.with_suffix(".full.json")).write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"records written to {json_out} (everything: {json_out.with_suffix('.full.json')})")


def bench_dpo(
    model: str,
    steps: int,
    warmup: int,
    threads: int | None,
    rounds: int,
    json_out: Path | None,
    docs: Path | None,
) -> None:
    """`--dpo`: the DPO rows (bench/dpo.py), printed; --json / --docs as for the SFT suite."""
    from smolora.bench.dpo import HEADER as DPO_HEADER
    from smolora.bench.dpo import dpo_markdown, rows, run_dpo, write_dpo_docs
    from smolora.bench.dpo import targets as dpo_targets

    command = f"smolora bench --dpo --steps {steps} --warmup {warmup}" + (
        f" --rounds {rounds}" if rounds > 1 else ""
    )
    report = run_dpo(model, steps, warmup, threads, rounds, command=command, progress=console.print)
    table = Table(title=f"DPO, same pairs/settings ({command})")
    for i, h in enumerate(DPO_HEADER):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows(report):
        table.add_row(*row)
    console.print(table)
    for row in dpo_targets(report):
        console.print("  ".join(row))
    if docs:
        write_dpo_docs(docs, dpo_markdown(report))
        console.print(f"written to {docs}")
    if json_out:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"report written to {json_out}")


def choose_peers(peers: str, skip: bool) -> tuple[list[str], ModuleType | None]:
    """The peer modes to run, checked, and what runs them: benchmarks/run_peers.py of this checkout."""
    from smolora.bench.launch import load_peers

    runner = load_peers()
    modes = [] if skip else [m.strip() for m in peers.split(",") if m.strip()]
    if runner is None:  # an installed package: the peer scripts live in the repository, not in it
        if modes:
            console.print(
                "[yellow]peers skipped:[/] benchmarks/run_peers.py is not here (run from a checkout)"
            )
        return [], None
    unknown = [m for m in modes if m not in runner.PEER_MODES]
    if unknown:
        raise SmoLoRAError(f"--peers: unknown mode(s) {unknown}; choose from {','.join(runner.PEER_MODES)}")
    return modes, runner


def print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"LoRA training, same model/data/settings ({report['command']})")
    for i, h in enumerate(HEADER):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in table_rows(report):
        table.add_row(*row)
    console.print(table)
    goals = Table(title="targets")
    for h in ("target", "wanted", "measured", ""):
        goals.add_column(h)
    for row in targets(report):
        goals.add_row(*row)
    console.print(goals)
