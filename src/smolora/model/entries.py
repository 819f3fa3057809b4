"""The entries of the store as `smolora models` sees them: find one by any of its names, list, remove.

Run as:
    for e in list_models():
        print(e["name"], e["status"], e["disk"])
    path, freed = remove_model("smollm2-135m")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smolora.errors import ModelError
from smolora.model.store import (
    PARTIAL,
    cache_name,
    dir_size,
    discard_entry,
    models_dir,
    read_manifest,
    store_lock,
)


def store_entry(name: str) -> Path:
    """The store directory of a pulled model: by alias, store name, hub id or .gguf path."""
    candidates = [name, cache_name(name), cache_name(Path(name).name)]
    root = models_dir().resolve()
    for c in dict.fromkeys(candidates):
        d = models_dir() / c
        # Only direct children of the store: `rm .` or `rm ../x` must never reach further.
        if c and d.is_dir() and d.resolve().parent == root:
            return d
    present = [e["name"] for e in list_models()]
    raise ModelError(
        f"'{name}' is not in the store ({models_dir()}); models there: {', '.join(present) or 'none'}. "
        f"Pull it first: smolora models pull {name}"
    )


def list_models() -> list[dict[str, Any]]:
    """One dict per store entry: name, path, size on disk, and the manifest's fields."""
    root = models_dir()
    out = []
    for d in sorted(root.iterdir()) if root.exists() else []:
        if not d.is_dir():
            continue
        manifest = read_manifest(d)
        status = "partial" if d.name.endswith(PARTIAL) else "ok" if manifest else "no manifest"
        out.append({**(manifest or {}), "name": d.name, "path": d, "disk": dir_size(d), "status": status})
    return out


def remove_model(name: str) -> tuple[Path, int]:
    """Delete a store entry; return its path and the bytes freed."""
    target = store_entry(name)
    freed = dir_size(target)
    with store_lock(target.name):  # not while a builder of the same name is publishing it
        discard_entry(target)
    return target, freed
