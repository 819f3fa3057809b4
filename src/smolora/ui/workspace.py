"""The UI's one rule about files: every path from the browser resolves inside the workspace.

The workspace is a directory (default: where `smolora ui` was started). Relative paths are
taken relative to it; absolute paths are accepted only when they land inside it; `..`,
symlinks that leave it and NUL bytes are refused, and so is a glob or directory holding a
symlink that leads out (`check_data_path`). Uploads are written there and nowhere else,
and never over a file that decides what a run or model loads (smolora.json, config.json, ...).

Run as:
    p = safe_path(Path("."), "data/train.jsonl")      # -> /abs/workspace/data/train.jsonl
    safe_path(Path("."), "../etc/passwd")              # raises OutsideWorkspace
"""

from __future__ import annotations

import os
from pathlib import Path

from smolora.runs import ADAPTER_DIR, ADAPTER_META, CHECKPOINTS_DIR, METRICS_FILE

# Files the Data view offers; everything else in the workspace is not training data.
DATA_SUFFIXES = {".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt"}
# Directories never worth walking for data files (and big enough to slow the listing down).
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", CHECKPOINTS_DIR, ADAPTER_DIR, ".cache"}
MAX_UPLOAD_BYTES = 512 * 2**20
# Files that steer what gets loaded (a run's base model, a model's code and config): an upload
# must never replace them, or a browser could point a run at a model outside the workspace.
RESERVED_NAMES = {
    ADAPTER_META,
    "adapter_config.json",
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "manifest.json",
    "trainer_state.json",
}


class OutsideWorkspace(ValueError):
    """A browser-supplied path that would leave the workspace (answered with 403)."""


def check_length(user_path: str) -> None:
    """Names the file system would refuse (ENAMETOOLONG) are a 400 here, not an OSError later."""
    if len(user_path) > 4096 or any(len(part.encode()) > 255 for part in Path(user_path).parts):
        raise ValueError(f"{user_path[:60]}...: a path or name that long cannot exist; use a shorter one")


def safe_path(workspace: Path, user_path: str) -> Path:
    """Resolve `user_path` against the workspace; refuse anything that ends up outside it."""
    if not user_path or "\x00" in user_path:
        raise OutsideWorkspace("empty or invalid path")
    check_length(user_path)
    root = workspace.resolve()
    p = Path(user_path).expanduser()
    target = (p if p.is_absolute() else root / p).resolve()
    if not inside(root, target):
        raise OutsideWorkspace(f"{user_path}: outside the workspace {root}; use a path inside it")
    return target


def inside(root: Path, path: Path) -> bool:
    """Is `path`, with every symlink followed, `root` or under it (`root` already resolved)?"""
    target = path.resolve()
    return target == root or root in target.parents


def check_data_path(workspace: Path, user_path: str) -> Path:
    """`safe_path`, and for a glob or a directory every file the loader would read from it too.

    `data/*.jsonl` or `data/` resolve inside the workspace, yet the files they expand to may be
    symlinks that lead out; the loader would follow them, so they are refused here.
    """
    from smolora.data.files import expand_paths

    target = safe_path(workspace, user_path)
    if not any(c in user_path for c in "*?[") and not target.is_dir():
        return target
    # A pattern that matches nothing, or a directory without data, is a DatasetError right here,
    # before any tokenizer is loaded for it.
    files = expand_paths(str(target))
    root = workspace.resolve()
    for f in files:
        if not inside(root, f):
            raise OutsideWorkspace(f"{user_path}: {f} links outside the workspace {root}; remove the link")
    return target


def model_ref(workspace: Path, name: str) -> str:
    """A model name from the browser: a path (inside the workspace) made absolute, else an alias or hub id.

    The UI process does not run in the workspace, so `tiny-llama/` must become `<workspace>/tiny-llama`
    before `resolve_model` sees it; `smollm2-135m` and `org/model` stay names.
    """
    from smolora.model.store import BUNDLED

    if name in BUNDLED:
        return name
    check_length(name)
    p = Path(name).expanduser()
    if p.is_absolute() or name.startswith((".", "~")) or (workspace / name).exists():
        return str(safe_path(workspace, name))
    if p.exists():  # a path relative to this process's directory, not the workspace: refuse it too
        raise OutsideWorkspace(f"{name}: not in the workspace {workspace.resolve()}; use a path inside it")
    return name


def relative(workspace: Path, path: Path) -> str:
    """A path as the browser shows it: relative to the workspace when inside it."""
    try:
        return str(path.resolve().relative_to(workspace.resolve()))
    except ValueError:
        return str(path)


def list_data_files(workspace: Path, limit: int = 500) -> list[dict]:
    """Data-looking files under the workspace, newest first, bounded so a huge tree stays fast."""
    root = workspace.resolve()
    found: list[dict] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Hidden dirs and caches are skipped; pruning in place stops os.walk descending into them.
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        if Path(dirpath) != root and ("config.json" in filenames or METRICS_FILE in filenames):
            dirnames[:] = []  # a model directory or a run directory: its JSON files are not data
            continue
        for name in filenames:
            p = Path(dirpath) / name
            if (
                p.suffix.lower() in DATA_SUFFIXES
                and not name.startswith(".")
                and inside(root, p)
                and p.is_file()
            ):
                st = p.stat()
                found.append({"path": relative(root, p), "size": st.st_size, "mtime": st.st_mtime})
        if len(found) >= limit:
            break
    return sorted(found, key=lambda f: -f["mtime"])[:limit]


async def save_upload(workspace: Path, user_path: str, chunks) -> Path:
    """Stream an upload body to `user_path` inside the workspace (atomic rename, size capped)."""
    target = safe_path(workspace, user_path)
    if target.suffix.lower() not in DATA_SUFFIXES:
        raise ValueError(f"{user_path}: upload a data file ({', '.join(sorted(DATA_SUFFIXES))})")
    if target.name.lower() in RESERVED_NAMES:
        raise ValueError(f"{user_path}: {target.name} is a model or run file, not data; rename the upload")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".uploading")
    size = 0
    try:
        with open(tmp, "wb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise ValueError(
                        f"upload larger than {MAX_UPLOAD_BYTES // 2**20} MiB; copy it into the workspace"
                    )
                f.write(chunk)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
