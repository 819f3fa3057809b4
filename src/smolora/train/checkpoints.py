"""Crash-safe checkpoints: written aside, given a manifest, renamed into place; verified on resume.

Trainer writes a checkpoint into `checkpoints/.staging/checkpoint-N/`; `publish` adds
`smolora-checkpoint.json` (step, every file's size and sha256), flushes it to disk and renames
the directory to `checkpoints/checkpoint-N`. A rename is atomic, so a `checkpoint-N` either is
complete or does not exist, whatever moment the process dies at (a SIGKILL, a power cut mid-
write leaves only `.staging`). On resume `good_checkpoint` takes the newest checkpoint whose
manifest matches its files and says which newer ones it skipped and why.

Run as:
    ckpt, skipped = good_checkpoint(Path("runs/quickstart"))
    print(ckpt, skipped)    # runs/quickstart/checkpoints/checkpoint-40 [('checkpoint-50', 'manifest missing')]
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

from smolora.durable import fsync_dir, sha256_file, write_atomic
from smolora.errors import TrainingError
from smolora.runs import CHECKPOINTS_DIR, METRICS_FILE

log = logging.getLogger("smolora")

MANIFEST = "smolora-checkpoint.json"
STAGING = ".staging"


def checkpoints_of(run_dir: Path) -> list[Path]:
    """checkpoint-N directories of a run, oldest first (by step, not by mtime)."""
    found = [p for p in (run_dir / CHECKPOINTS_DIR).glob("checkpoint-*") if p.is_dir()]
    return sorted((p for p in found if p.name.split("-")[-1].isdigit()), key=step_of)


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


def write_manifest(checkpoint: Path, step: int) -> None:
    files = {
        str(p.relative_to(checkpoint)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(checkpoint.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    path = checkpoint / MANIFEST
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"step": step, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def check_checkpoint(checkpoint: Path) -> str | None:
    """None when the checkpoint is complete and intact, else what is wrong with it."""
    try:
        manifest = json.loads((checkpoint / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "manifest missing (incomplete write)"
    except (OSError, ValueError) as e:
        return f"manifest unreadable ({e})"
    if manifest.get("step") != step_of(checkpoint):
        return f"manifest is for step {manifest.get('step')}"
    for name, want in manifest.get("files", {}).items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} missing"
        if path.stat().st_size != want["size"]:
            return f"{name} has {path.stat().st_size} bytes, expected {want['size']}"
        if sha256_file(path) != want["sha256"]:
            return f"{name} is corrupt (sha256 mismatch)"
    return None


def good_checkpoint(run_dir: Path) -> tuple[Path | None, list[tuple[str, str]]]:
    """The newest intact checkpoint, and the newer ones skipped with the reason."""
    skipped: list[tuple[str, str]] = []
    for checkpoint in reversed(checkpoints_of(run_dir)):
        problem = check_checkpoint(checkpoint)
        if problem is None:
            return checkpoint, skipped
        skipped.append((checkpoint.name, problem))
    return None, skipped


def fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then every directory, deepest first.

    A rename publishes a directory; without this, a power cut soon after could leave the
    published name pointing at files the disk never got.
    """
    dirs = [root]
    for p in sorted(root.rglob("*")):
        if p.is_dir():
            dirs.append(p)
        elif p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in reversed(dirs):
        fsync_dir(d, best_effort=True)  # some filesystems cannot sync a directory: training goes on


def publish(staged: Path, final: Path, step: int, keep: int | None, protect: int | None = None) -> None:
    """Manifest, flush, rename `staged` to `final`, then delete the oldest beyond `keep`.

    `protect`: the best checkpoint's step (train/best.py), never deleted, and not counted in `keep`.
    """
    write_manifest(staged, step)
    fsync_tree(staged)  # data files on disk before the name that says they are complete
    if final.exists():  # the same step saved twice (a retry after out-of-memory): newest wins
        shutil.rmtree(final)
    os.replace(staged, final)
    fsync_dir(final.parent, best_effort=True)
    shutil.rmtree(staged.parent, ignore_errors=True)  # .staging is empty now
    if keep and keep > 0:
        rest = [c for c in checkpoints_of(final.parent.parent) if step_of(c) != protect]
        for old in rest[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT from any writer: an OSError, torch's RuntimeError, safetensors' SafetensorError."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e).lower()
    # torch: "file write failed"; safetensors (Rust io::Error): "os error 28", "StorageFull"
    words = (
        "no space left",
        "disk quota",
        "file write failed",
        "os error 28",
        "storagefull",
        "quota exceeded",
    )
    return any(w in text for w in words)


def disk_full_error(run_dir: Path, step: int, e: BaseException, what: str | None = None) -> TrainingError:
    free = shutil.disk_usage(run_dir).free / 2**20 if run_dir.exists() else 0.0
    ckpt, _ = good_checkpoint(run_dir)
    kept = f"{ckpt.name} is intact" if ckpt else "no earlier checkpoint exists"
    where = what or f"checkpoint-{step} in {run_dir / CHECKPOINTS_DIR}"
    return TrainingError(
        f"disk full while saving {where} ({free:.0f} MiB free; "
        f"{type(e).__name__}: {str(e)[:120]}); {kept}. Free some space (or lower train.keep_checkpoints, "
        "or point output.dir at a bigger disk), then continue with --resume"
    )


def trim_metrics(run_dir: Path, step: int) -> None:
    """Drop metrics.jsonl rows logged after `step`: a resumed run logs those steps again."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue  # a line cut short by the crash
    # a crash now leaves the old file, not half; a directory that cannot be synced is no error here
    write_atomic(path, "".join(x + "\n" for x in keep), best_effort=True)
