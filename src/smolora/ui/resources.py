"""Live resource numbers for the UI: CPU, RAM, the training process, and GPU memory when there is one.

Run as:
    print(snapshot(training_pid=None))
"""

from __future__ import annotations

import importlib.util
from typing import Any

import psutil

psutil.cpu_percent(None)  # the first reading is always 0.0; take it at import so the next one is real


def process_rss(pid: int | None) -> int | None:
    """Resident memory of a process and its children (dataloader workers, compile workers)."""
    if pid is None:
        return None
    try:
        p = psutil.Process(pid)
        return p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
    except psutil.Error:
        return None


def gpu_memory() -> list[dict[str, Any]]:
    """Device-wide used/total per CUDA GPU (the training runs in another process, so ask the driver)."""
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out.append({"index": i, "name": torch.cuda.get_device_name(i), "used": total - free, "total": total})
    return out


def snapshot(training_pid: int | None = None) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    return {
        "cpu_percent": psutil.cpu_percent(None),
        "cpu_count": psutil.cpu_count(),
        "ram_used": vm.total - vm.available,
        "ram_total": vm.total,
        "training_rss": process_rss(training_pid),
        "gpus": gpu_memory(),
    }
