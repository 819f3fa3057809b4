"""Writes that survive a crash or a power cut: flushed files, synced directories, atomic replaces.

The run directory (runs.py), checkpoints (train/checkpoints.py) and the model store
(model/store.py) all publish by rename; a rename is only durable once its directory is synced,
and a file is only whole under its final name if it was flushed before the rename. Each caller
says at the call whether a directory that cannot be synced is an error (`best_effort=False`, the
model store: its manifest vouches for the files) or not (`best_effort=True`, runs and checkpoints:
some filesystems cannot sync a directory, and training must not fail for it).

Run as:
    write_atomic(Path("runs/x/metrics.jsonl"), text, best_effort=True)
    digest = sha256_file(Path("model.safetensors"))
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fsync_dir(path: Path, *, best_effort: bool) -> None:
    """Make a rename inside `path` durable; `best_effort`: a directory that cannot be synced is no error."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if best_effort:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not best_effort:
            raise
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str, *, best_effort: bool) -> None:
    """Replace `path` with `text` all at once: a temp file beside it, flushed, then os.replace.

    A crash leaves the old file or the new one, never half of one. `best_effort` is about the
    directory sync after the rename (see fsync_dir).
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent, best_effort=best_effort)


def sha256_file(path: Path, chunk: int = 1 << 20, fsync: bool = False) -> str:
    """The file's sha256, read a chunk at a time; `fsync`: also flush it to disk on the way."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
        if fsync:  # on disk before the manifest that vouches for it is published
            os.fsync(f.fileno())
    return h.hexdigest()
