"""Which files a data path names: regular files only, globs and directories kept inside their tree.

A FIFO, a device or a link to /dev/zero named `x.jsonl` would block or never end: only regular
files are opened, checked before opening and again on the open file. Directories and globs stay
inside their tree: links out of it are refused.

Run as:
    files = expand_paths(["data/a.jsonl", "data/more/*.csv"])   # sorted, checked, in order
    with open_data(files[0]) as f:
        head = f.read(100)
"""

from __future__ import annotations

import glob
import os
import stat
from pathlib import Path
from typing import IO

from smolora.errors import DatasetError

SUPPORTED = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".txt", ".md")
# Markers of a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`.
HF_DIR_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


def supported_kinds() -> str:
    return ", ".join(SUPPORTED) + " or a saved Hugging Face dataset directory"


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in HF_DIR_MARKERS)


def check_regular(path: Path) -> Path:
    """`path` if it is a regular file once links are followed; a DatasetError before anything opens it.

    A FIFO blocks the reader until someone writes, a device (/dev/zero, /dev/urandom) never
    ends: neither is data, whatever its name.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        broken = " (a broken symbolic link)" if path.is_symlink() else ""
        raise DatasetError(f"{path}: no such file{broken}") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read it ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a file"
        )
        raise DatasetError(
            f"{path}: {kind}, not a regular file; reading it could block or never end: give a data file"
        )
    return path


def open_data(path: Path) -> IO[bytes]:
    """Open a data file for reading, refusing anything but a regular file (checked on the open file)."""
    check_regular(path)
    # O_NONBLOCK: were it swapped for a FIFO since the check, open() must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DatasetError(f"{path}: not a regular file (it changed while being opened); give a data file")
    return os.fdopen(fd, "rb")


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _out_of_tree(path: Path, root: Path, what: str) -> DatasetError:
    return DatasetError(
        f"{path}: a link to {path.resolve()}, outside {what} {root}; data found there is read only from "
        "inside it (give the file itself if you mean it)"
    )


def _glob(pattern: str) -> list[Path]:
    """Matches of a glob pattern, sorted, never through a link out of the pattern's own directory.

    `**` does not descend into linked directories (pathlib), so a link to / or a link loop
    is not walked; a `*` that matches a link out of the tree is refused, not followed.
    """
    parts = Path(pattern).expanduser().parts
    n = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root, rest = Path(*parts[:n]) if n else Path("."), parts[n:]
    if not rest:
        return [root] if root.exists() else []
    hidden_ok = any(part.startswith(".") for part in rest)  # as glob.glob: `*` skips dot names
    out = []
    for m in sorted(root.glob(str(Path(*rest)))):
        below = m.relative_to(root).parts
        if not hidden_ok and any(part.startswith(".") for part in below):
            continue
        if not _inside(m, root):
            raise _out_of_tree(m, root, "the directory of the pattern")
        out.append(m)
    return out


def expand_paths(path: str | list[str]) -> list[Path]:
    """Files, lists, globs (sorted) and directories -> the data files, in order.

    Every file is checked to be a regular file here, before anything reads or hashes it.
    """
    out: list[Path] = []
    for item in [path] if isinstance(path, (str, Path)) else path:
        item = str(item)
        if any(c in item for c in "*?["):
            matches = _glob(item)
            files = [m if m.is_dir() else check_regular(m) for m in matches if not m.is_dir() or is_hf_dir(m)]
            if not files:
                raise DatasetError(f"{item}: the pattern matched no files")
            out += files
            continue
        p = Path(item).expanduser()
        if not p.exists():
            raise DatasetError(f"{item}: no such file")
        if p.is_dir() and not is_hf_dir(p):
            files = []
            # rglob does not descend into linked directories; a linked file must stay in the tree.
            for f in sorted(p.rglob("*")):
                below = f.relative_to(p).parts
                if f.is_dir() or f.suffix.lower() not in SUPPORTED or any(x.startswith(".") for x in below):
                    continue
                if not _inside(f, p):
                    raise _out_of_tree(f, p, "the directory")
                files.append(check_regular(f))
            if not files:
                raise DatasetError(f"{item}: directory holds no data files (supported: {supported_kinds()})")
            out += files
        elif not p.is_dir():
            out.append(check_regular(p))
        else:
            out.append(p)
    return out


def check_hf_dir(path: Path) -> Path:
    """A saved dataset directory whose files are all regular files (datasets opens them by name)."""
    for f in path.rglob("*"):
        if not f.is_dir():
            check_regular(f)
    return path
