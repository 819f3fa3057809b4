"""Which compute dtype `model.dtype: auto` means on this machine, and why, from what the hardware has.

CPU bf16 support is read from the CPU's own flags (`avx512_bf16`, `amx_bf16` in /proc/cpuinfo),
never guessed from the vendor. Having bf16 is not the same as bf16 paying: measured on a
2-core Xeon with avx512_bf16 + amx_bf16 (torch 2.13, load ~2.5): a 1536x576 @ 576x1536 matmul
runs 4.3x faster in bf16 (89 vs 21 GFLOP/s), but a whole LoRA training step of SmolLM2-135M
(batch 8, PEFT LoRA r=16 on 7 projections) ran at 30 real tokens/s with the base stored in bf16
(PEFT's explicit casts, LoRA + AdamW in float32) and 30 with torch.autocast(cpu, bf16),
against 43 in float32: so `auto` stays float32 on a CPU until the step itself is faster, and
says so. bf16 is one explicit setting away (`model.dtype: bfloat16`).

Run as:
    dtype, reason = choose_dtype("auto", "cpu")
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
    pref: str, device: str, flags: set[str] | None = None, cuda_bf16: bool | None = None
) -> tuple[torch.dtype, str]:
    """(dtype, one-line reason) for `model.dtype` = `pref` on `device`; `flags`/`cuda_bf16` injectable."""
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
    if have:
        return torch.float32, (
            f"auto: CPU has {', '.join(have)}, but a bf16 LoRA step measured slower than float32 "
            "(0.7x); set model.dtype=bfloat16 to use it"
        )
    return torch.float32, "auto: CPU without native bf16 (no avx512_bf16/amx_bf16)"
