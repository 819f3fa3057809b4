"""`smolora models verify`: recompute every sha256 of a store entry; name the files nobody vouches for.

The cheap check of every load (a stat per file) is `check_entry` in model/store.py; this one
reads every byte.

Run as:
    bad = verify_model_dir(path)           # [] when every file matches its sha256
    for r in verify_models():
        print(r["name"], r["checked"], r["bad"], r["extra"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smolora.durable import sha256_file
from smolora.errors import IntegrityError
from smolora.model.entries import list_models, store_entry
from smolora.model.store import MANIFEST, read_manifest


def verify_model_dir(model_dir: Path) -> list[str]:
    """Recompute every sha256 in the manifest; return the names of files that do not match."""
    manifest = read_manifest(model_dir)
    if manifest is None:
        raise IntegrityError(
            f"{model_dir}: no readable {MANIFEST}; re-create it with `smolora models pull {model_dir.name} --force`"
        )
    bad = []
    for name, info in manifest["files"].items():
        f = model_dir / name
        if not f.is_file() or f.stat().st_size != info["size"] or sha256_file(f) != info["sha256"]:
            bad.append(name)
    return bad


def unlisted_files(model_dir: Path) -> list[str]:
    """Files in the entry that its manifest does not list: nobody vouches for them."""
    listed = set((read_manifest(model_dir) or {}).get("files", {}))
    return sorted(
        name
        for f in model_dir.rglob("*")
        if (f.is_file() or f.is_symlink())
        and (name := str(f.relative_to(model_dir))) not in listed
        and name != MANIFEST
    )


def verify_models(names: list[str] | None = None) -> list[dict[str, Any]]:
    """Per model: name, path, files checked and the files that do not match their sha256."""
    if names:
        dirs = [store_entry(n) for n in names]
    else:
        dirs = [e["path"] for e in list_models() if e["status"] != "partial"]
    results = []
    for d in dirs:
        manifest = read_manifest(d)
        if manifest is None:
            results.append({"name": d.name, "path": d, "checked": 0, "bad": [MANIFEST], "extra": []})
            continue
        checked, bad, extra = len(manifest["files"]), verify_model_dir(d), unlisted_files(d)
        results.append({"name": d.name, "path": d, "checked": checked, "bad": bad, "extra": extra})
    return results
