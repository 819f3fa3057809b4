"""What the machine is and what it can do: CPU, memory, versions, load, the matmul ceilings.

The matmul peak is measured on the model's own linear shapes, in float32 and (on a CPU with native
bf16) in bfloat16: the ceiling a training step in that precision can reach, against which `smolora
bench` reports each tool's share.

Run as:
    print(machine()["cpu"], matmul_peak(Path("~/.cache/smolora/models/smollm2-135m").expanduser()))
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    import peft
    import torch
    import transformers

    from smolora.model.load import physical_cores
    from smolora.model.precision import cpu_bf16

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    versions.update(transformers=transformers.__version__, peft=peft.__version__)
    try:
        import trl

        versions["trl"] = trl.__version__
    except ImportError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "avx512": " avx512f " in flags,
        "amx": " amx_tile " in flags,
        "bf16_flags": cpu_bf16(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "cuda": torch.cuda.is_available(),
        "versions": versions,
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def matmul_peak(
    model_dir: Path, tokens: int = 1536, seconds: float = 0.5, dtype: str = "float32"
) -> dict[str, Any]:
    """GFLOP/s of `x @ W^T` in `dtype` for every linear shape of the model, at `tokens` rows.

    The peak is the best shape; the weighted mean weighs each shape by its FLOPs in one
    forward pass (what a training step actually runs).
    """
    import torch

    cfg = json.loads((model_dir / "config.json").read_text())
    d, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * cfg.get(
        "head_dim", d // cfg["num_attention_heads"]
    )
    shapes = {  # (in, out): times per layer
        (d, d): 2,
        (d, kv): 2,
        (d, ff): 2,
        (ff, d): 1,
    }
    layers = cfg["num_hidden_layers"]
    rates, weights = {}, {}
    for (k, m), per_layer in [*shapes.items(), ((d, v), 0)]:
        x, w = (
            torch.randn(tokens, k, dtype=getattr(torch, dtype)),
            torch.randn(m, k, dtype=getattr(torch, dtype)),
        )
        x @ w.T
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            x @ w.T
            n += 1
        rate = 2 * tokens * k * m * n / (time.perf_counter() - start) / 1e9
        rates[f"{k}x{m}"] = round(rate, 1)
        weights[f"{k}x{m}"] = 2 * k * m * (per_layer * layers or 1)
    mean = sum(weights.values()) / sum(weights[s] / rates[s] for s in rates)
    return {
        "peak_gflops": max(rates.values()),
        "weighted_gflops": round(mean, 1),
        "per_shape": rates,
        "tokens": tokens,
        "threads": torch.get_num_threads(),
        "dtype": dtype,
    }


def model_flops_per_token(model_dir: Path) -> float:
    """Nominal training FLOPs per token: 4 x parameters (2 forward, 2 for the input gradients;
    LoRA needs no gradient for the frozen weights)."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        n = sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118
    return 4.0 * n
