"""`smolora bench` from start to end: the machine, every training run, load and generation, in one report.

One process per measurement, one after another (bench/launch.py): SmoLoRA's fast path, then
(fusion) with train.fuse_projections the other way, (lowmem) in both memory modes (one row
per forward/backward pass; gradient checkpointing), then each peer when benchmarks/run_peers.py
is in this checkout; then the fp32 matmul ceiling's share, model load time, preprocessing and
generation.

Run as:
    report = run_suite("smollm2-135m", Path("bench.jsonl"), steps=10, warmup=2)
    print(report["runs"][0]["real_tokens_per_s"])
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console

from smolora.bench import launch, machine
from smolora.bench.heldout import split_heldout
from smolora.model.load import physical_cores
from smolora.model.store import resolve_model

console = Console()


def run_suite(
    model: str,
    data: Path,
    steps: int,
    warmup: int,
    threads: int | None = None,
    *,
    command: str = "",
    modes: tuple[str, ...] | list[str] = (),
    peers: ModuleType | None = None,
    peers_dir: Path | None = None,
    profile: bool = False,
    lowmem: bool = True,
    extras: bool = True,
    convert: bool = False,
    serve: bool = False,
    fusion: bool = False,
    precisions: tuple[str, ...] | list[str] | None = None,
) -> dict[str, Any]:
    """Everything `smolora bench` measures, as one dict (the report); `peers` runs `modes` (run_peers.py)."""
    import torch

    threads = threads or physical_cores()
    torch.set_num_threads(threads)
    report: dict[str, Any] = {"command": command}
    report["machine"] = machine.machine()
    report["load_before"] = machine.load_average()
    started = time.perf_counter()

    model_dir = resolve_model(model)  # converts the GGUF on a fresh clone (the first-time cost)
    report["model"], report["data"] = str(model_dir), str(data)
    console.print(f"matmul peak on {model_dir.name}'s shapes ...")
    precisions = list(precisions or default_precisions())
    report["precisions"] = precisions
    report["matmul"] = machine.matmul_peak(model_dir)
    if "bfloat16" in precisions:
        report["matmul_bf16"] = machine.matmul_peak(model_dir, dtype="bfloat16")
    report["flops_per_token"] = machine.model_flops_per_token(model_dir)
    split = tempfile.TemporaryDirectory(prefix="smolora-bench-data-")
    train_rows, heldout = split_heldout(data, Path(split.name))
    report["heldout_rows"] = len(heldout.read_text().splitlines())

    try:
        args = (model_dir, train_rows, steps, warmup, threads)
        runs = smolora_runs(*args, heldout, precisions, profile=profile, fusion=fusion, lowmem=lowmem)
        for mode in modes:  # the CLI gives modes only with the module that runs them
            for precision in precisions:
                bf16 = precision == "bfloat16"
                console.print(f"peer {mode}{' --bf16' if bf16 else ''}: {warmup} + {steps} steps ...")
                runs.append(
                    peers.run_peer(
                        mode, model_dir, train_rows, steps, warmup, peers_dir, threads, bf16, heldout
                    )
                )
                show_progress(runs[-1])
    finally:
        split.cleanup()
    report["runs"] = runs
    if extras:
        report |= load_and_generation(model, model_dir, data, threads, convert)
    if serve:
        report["serve"] = launch.serve_bench(model_dir)
    report["load_after"] = machine.load_average()
    report["total_s"] = round(time.perf_counter() - started, 1)
    return report


def smolora_runs(
    model_dir: Path,
    data: Path,
    steps: int,
    warmup: int,
    threads: int,
    heldout: Path,
    precisions: list[str],
    *,
    profile: bool,
    fusion: bool,
    lowmem: bool,
) -> list[dict[str, Any]]:
    """SmoLoRA's rows: the default ("smolora"), the other precisions, fusion the other way, memory modes."""
    runs = []

    def measure(label: str, **kw: Any) -> None:
        console.print(f"smolora{label}: {warmup} + {steps} steps ...")
        runs.append(launch.run_smolora(model_dir, data, steps, warmup, threads, heldout=heldout, **kw))
        show_progress(runs[-1])

    own = default_precisions()[-1]  # what SmoLoRA's default trains in here: its row is "smolora"
    for precision in sorted(precisions, key=lambda p: p != own):
        dtype = None if precision == own else precision
        measure(f" ({precision})", profile=profile and not dtype, dtype=dtype)
    if fusion:  # the same run with the projections fused the other way from the default
        from smolora.config import load_config
        from smolora.model.load import pick_device
        from smolora.train.speed import pick_fusion

        other = not pick_fusion(load_config(None, []), pick_device())
        measure(f", train.fuse_projections={str(other).lower()}", fuse=other)
    for mode, (_, what) in launch.MEMORY_MODES.items() if lowmem else ():
        measure(f", memory mode {mode} ({what})", lowmem=mode)
    return runs


def default_precisions() -> list[str]:
    """float32, and bfloat16 after it where SmoLoRA's default LoRA training computes in bf16."""
    import torch

    from smolora.model.load import pick_device, pick_dtype

    bf16 = pick_dtype("auto", pick_device(), training=True) == torch.bfloat16
    return ["float32", "bfloat16"] if bf16 else ["float32"]


def load_and_generation(
    model: str, model_dir: Path, data: Path, threads: int, convert: bool
) -> dict[str, Any]:
    """Model load from the cache (`convert`: and a first GGUF conversion); generation batched and not."""
    console.print("model load, generation ...")
    home = str(model_dir.parent.parent) if model_dir.parent.name == "models" else None
    load_cmd = ["load", "--model", model, "--threads", str(threads)]
    load_cmd += (["--home", home] if home else []) + (["--convert"] if convert else [])
    out = {"load": launch.run_json_process(launch.worker_command(load_cmd), "SMOLORA_RESULT ")}
    gen_cmd = ["generate", "--model", str(model_dir), "--data", str(data), "--threads", str(threads)]
    out["generation"] = launch.run_json_process(launch.worker_command(gen_cmd), "SMOLORA_RESULT ")
    return out


def show_progress(run: dict[str, Any]) -> None:
    if "error" in run:
        console.print(f"  [red]{run['name']} failed[/]: {run['error']}")
    else:
        console.print(f"  {run['name']}: {run['real_tokens_per_s']} real tokens/s ({run['wall_s']} s in all)")
