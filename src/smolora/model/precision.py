"""Which compute dtype `model.dtype: auto` means on this machine, and why, from what the hardware has.

CPU bf16 support is read from the CPU's own flags (`avx512_bf16`, `amx_bf16` in /proc/cpuinfo),
never guessed from the vendor. For training, `auto` is bf16 on such a CPU: the frozen base is
stored in bf16 and its matmuls run in bf16, LoRA weights and AdamW state stay float32, the LoRA
matmuls run in bf16 on float32 masters (model/fused.py), attention upcasts q, k, v to float32
(model/attention.py: torch's bf16 SDPA backward on a CPU ran 1.8x slower than float32), and the
loss head upcasts each chunk (model/loss.py). Measured on a 2-core AMD EPYC with avx512_bf16
(torch 2.13, the bench protocol: SmolLM2-135M, batch 8 x 512, r16 on all 7 projections), see
docs/benchmarks.md. Elsewhere on a CPU, and for inference (decoding and eval, not measured to
pay), `auto` is float32.

Run as:
    dtype, reason = choose_dtype("auto", "cpu", training=True)
    print(cpu_bf16(), reason)
"""

from __future__ import annotations

from pathlib import Path

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (Linux); empty where there is no /proc/cpuinfo (macOS, Windows)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16(flags: set[str] | None = None) -> list[str]:
    """The native bf16 flags this CPU has (empty: none)."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in BF16_FLAGS if f in flags]


def choose_dtype(
    pref: str,
    device: str,
    flags: set[str] | None = None,
    cuda_bf16: bool | None = None,
    training: bool = False,
) -> tuple[torch.dtype, str]:
    """(dtype, one-line reason) for `model.dtype` = `pref` on `device`, for training or inference;
    `flags`/`cuda_bf16` injectable."""
    if pref != "auto":
        return getattr(torch, pref), f"model.dtype={pref}"
    if device == "cuda":
        ok = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        if ok:
            return torch.bfloat16, "auto: CUDA device with bf16"
        return torch.float32, "auto: CUDA device without bf16"
    if device == "mps":
        return torch.float32, "auto: MPS (bf16 not measured to pay there)"
    have = cpu_bf16(flags)
    if have and training:
        return (
            torch.bfloat16,
            f"auto: CPU has {', '.join(have)} (bf16 base and matmuls, LoRA + AdamW float32)",
        )
    if have:
        return (
            torch.float32,
            f"auto: CPU has {', '.join(have)}, float32 for inference (bf16 decoding not measured)",
        )
    return torch.float32, "auto: CPU without native bf16 (no avx512_bf16/amx_bf16)"
