"""Each measurement of `smolora bench` in its own process, one after another; the peers from the checkout.

Every training run (SmoLoRA's and each peer's) is its own process, so peak RSS (ru_maxrss)
is comparable and no run slows another. The peer scripts are not part of the package: in a
checkout of SmoLoRA, `load_peers()` returns benchmarks/run_peers.py as a module (it finds
../shared/bench/peers.py and runs each peer); anywhere else it returns None and `smolora bench`
measures SmoLoRA alone. The same goes for benchmarks/serve_load.py (`--serve`).

Run as:
    result = run_smolora(model_dir, Path("bench.jsonl"), steps=10, warmup=2)
    peers = load_peers()   # benchmarks/run_peers.py of this checkout, or None
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[3]
PEERS_SCRIPT = REPO / "benchmarks" / "run_peers.py"

# `smolora bench`'s memory modes: the worker's --lowmem value -> (row name, what it does); the
# config overrides of each are bench/run.py's LOWMEM, in the worker process.
MEMORY_MODES = {
    "micro": ("smolora-lowmem", "micro-batches of 1 row (2 in bf16)"),
    "checkpoint": ("smolora-ckpt", "checkpointing"),
}


@functools.cache
def load_peers() -> ModuleType | None:
    """benchmarks/run_peers.py of this checkout, loaded once; None where it is not (an installed package)."""
    if not PEERS_SCRIPT.exists():
        return None
    spec = importlib.util.spec_from_file_location("run_peers", PEERS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_json_process(cmd: list[str], marker: str, timeout: float | None = None) -> dict[str, Any]:
    """Run `cmd`; return the JSON after `marker` on its output, or {"error": ...}.

    The 1-minute load average at the start and the end goes with it: on a shared machine it
    says how much of the CPUs this tool had.
    """
    start, load = time.perf_counter(), os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall_s": round(time.perf_counter() - start, 1)}
    info = {
        "wall_s": round(time.perf_counter() - start, 1),
        "load": [round(load, 2), round(os.getloadavg()[0], 2)],
    }
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(marker):
            return {**json.loads(line[len(marker) :]), **info}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail), **info}


def worker_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "smolora.bench.run", *args]


def serve_bench(model_dir: Path, n: int = 32, concurrency: int = 8) -> dict[str, Any]:
    """benchmarks/serve_load.py's run_serve_bench, when that file is in this checkout."""
    path = REPO / "benchmarks" / "serve_load.py"
    if not path.exists():
        return {"error": f"{path} not found (the serve load test is not in this checkout)"}
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_load", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.run_serve_bench(str(model_dir), n=n, concurrency=concurrency)
    except Exception as e:  # a benchmark of someone else's server must not lose the training numbers
        return {"error": f"{type(e).__name__}: {e}"}


def run_smolora(
    model_dir: Path,
    data: Path,
    steps: int,
    warmup: int,
    threads: int | None = None,
    profile: bool = False,
    lowmem: str | None = None,
    fuse: bool | None = None,
    dtype: str | None = None,
    heldout: Path | None = None,
) -> dict[str, Any]:
    """SmoLoRA's default fast path; or a memory mode (bench/run.py's LOWMEM): `micro` (one row per
    forward/backward pass, named smolora-lowmem) or `checkpoint` (gradient checkpointing,
    smolora-ckpt); or (fuse) with train.fuse_projections set, named smolora-fused / smolora-unfused;
    (dtype) with model.dtype set, e.g. smolora-float32 beside the default's bf16; (heldout) scored
    on those rows afterwards."""
    cmd = worker_command(["train", "--model", str(model_dir), "--data", str(data)])
    cmd += ["--steps", str(steps), "--warmup", str(warmup)]
    if threads:
        cmd += ["--threads", str(threads)]
    if profile:
        cmd += ["--profile"]
    if lowmem:
        cmd += ["--lowmem", lowmem]
    if fuse is not None:
        cmd += ["--fuse", "true" if fuse else "false"]
    if dtype:
        cmd += ["--set", f"model.dtype={dtype}"]
    if heldout:
        cmd += ["--heldout", str(heldout)]
    name = MEMORY_MODES[lowmem][0] if lowmem else "smolora"
    if fuse is not None:
        name += "-fused" if fuse else "-unfused"
    if dtype:
        name += f"-{dtype}"
    return {"name": name, **run_json_process(cmd, "SMOLORA_RESULT ")}
