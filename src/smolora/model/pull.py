"""`smolora models pull`: put a model into the store (alias, local HF dir, .gguf file or hub id).

A local directory is copied (not linked: the entry must not change when the original is
edited) and gets a manifest; aliases, GGUF files and hub ids go through `resolve_model`.

Run as:
    path, manifest = pull_model("/data/my-hf-model")
    path, manifest = pull_model("smollm2-135m", force=True)   # converted again from scratch
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from smolora.errors import ModelError
from smolora.model.store import (
    BUNDLED,
    MANIFEST,
    build_entry,
    cache_name,
    check_disk_space,
    dir_size,
    discard_entry,
    models_dir,
    read_manifest,
    resolve_model,
    store_lock,
    write_manifest,
)


def pull_model(
    name: str, force: bool = False, store_name: str | None = None, revision: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """Put a model into the store (alias, local HF dir, .gguf file or hub id) and return it.

    `revision` (hub ids only): a branch, tag or commit; the manifest records the commit.
    The name of an entry already in the store pulls it again from the source its manifest records.
    """
    path = Path(name).expanduser()
    source = recorded_source(name)
    if source is not None and not store_name:
        if source.startswith("local:"):
            origin = Path(source.removeprefix("local:"))
            if not origin.is_dir():
                raise ModelError(
                    f"'{name}' was pulled from {origin}, which is no longer there; pull a directory "
                    f"that holds the model: smolora models pull DIR --name {name}"
                )
            return _pull_local_dir(origin, force, name)
        name, path = source, Path(source)
    if name in BUNDLED or path.suffix == ".gguf" or (not path.exists() and name.count("/") == 1):
        if store_name:
            raise ModelError(
                "--name applies to local directories; aliases, GGUF files and hub ids name themselves"
            )
        if force:  # re-convert or re-download from scratch
            key = name if name in BUNDLED else cache_name(path.name if path.suffix == ".gguf" else name)
            with store_lock(key):
                discard_entry(models_dir() / key)
        target = resolve_model(name, revision)
        return target, read_manifest(target) or {}
    if path.is_dir():
        return _pull_local_dir(path, force, store_name)
    raise ModelError(
        f"cannot pull '{name}': use an alias ({', '.join(BUNDLED)}), a local HF directory, a .gguf "
        "file or a hub id like HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def recorded_source(name: str) -> str | None:
    """What to pull for a store entry given by its store name: its manifest's source, as `pull` takes it."""
    if name in BUNDLED or "/" in name or not name.strip(".") or Path(name).expanduser().exists():
        return None
    source = (read_manifest(models_dir() / name) or {}).get("source")
    if not isinstance(source, str):
        return None
    if source.startswith("hub:"):
        return source.removeprefix("hub:")
    if source.startswith("local:") or source.endswith(".gguf"):
        return source  # a GGUF records its absolute path
    return None  # bundled: the alias is the name


def _pull_local_dir(path: Path, force: bool, store_name: str | None) -> tuple[Path, dict[str, Any]]:
    """Copy an HF model directory into the store, so it gets a manifest and can be verified."""
    if not (path / "config.json").exists():
        raise ModelError(f"{path} has no config.json; `pull` takes an HF model directory")
    target = models_dir() / cache_name(store_name or path.resolve().name)
    if target.resolve() == path.resolve():
        raise ModelError(f"{path} is already the store entry; nothing to pull")
    if force:
        with store_lock(target.name):
            discard_entry(target)

    def build(tmp: Path) -> None:
        check_disk_space(models_dir(), dir_size(path) + (64 << 20))
        # A copy, not a link: the store entry must not change when the original is edited.
        shutil.copytree(
            path, tmp, ignore=shutil.ignore_patterns(MANIFEST, ".git", ".cache"), dirs_exist_ok=True
        )
        write_manifest(tmp, f"local:{path.resolve()}", None, "local", None, target.name)

    build_entry(target, build)
    return target, read_manifest(target) or {}
