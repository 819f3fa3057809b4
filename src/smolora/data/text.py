"""Text files read bounded: UTF-8 a line at a time, UTF-16 (with its BOM) whole, never above a limit.

Bad bytes and NULs are named with their line (is it a binary file?); a line above the record
limit is refused before it is decoded.

Run as:
    with open_data(path) as f:
        for lineno, line in text_lines(f, path):
            ...
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from smolora.data.limits import MAX_LINE_BYTES, MAX_RECORD_CHARS, max_data_bytes, too_big, too_long
from smolora.errors import DatasetError


def _decode(data: bytes, path: Path, line: int | None = None, offset: int = 0) -> str:
    """UTF-8 text (the BOM Excel writes dropped at the start of a file); bad bytes and NULs are named.

    `line`: the line `data` is (else counted in it); `offset`: where `data` starts in the file.
    """
    try:
        text = data.decode("utf-8-sig" if offset == 0 else "utf-8")
    except UnicodeDecodeError as e:
        where = line if line is not None else data.count(b"\n", 0, e.start) + 1
        raise DatasetError(
            f"{path}:{where}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {offset + e.start}); "
            "is it a binary file? Re-save text data as UTF-8"
        ) from None
    if "\x00" in text:
        where = line if line is not None else text.count("\n", 0, text.index("\x00")) + 1
        raise DatasetError(f"{path}:{where}: holds NUL bytes (a binary file, or UTF-16 without a BOM?)")
    return text


def _is_utf16(f: IO[bytes]) -> bool:
    head = f.read(2)
    f.seek(0)
    return head in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def read_whole(f: IO[bytes], path: Path, max_bytes: int | None) -> str:
    """A file read at once (a JSON document, a whole text), never more than `max_bytes` of it."""
    limit = max_bytes if max_bytes is not None else max_data_bytes()
    if os.fstat(f.fileno()).st_size > limit:
        raise DatasetError(too_big(path, limit))
    data = f.read(limit + 1)  # bounded even if the file grows meanwhile
    if len(data) > limit:
        raise DatasetError(too_big(path, limit))
    if not data.strip():
        raise DatasetError(f"{path}: empty file")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    return _decode(data, path)


def text_lines(f: IO[bytes], path: Path, max_bytes: int | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) of a text file, one line in memory at a time.

    Lines end at "\n" only (U+2028 and friends are legal inside JSON strings). A line above
    MAX_RECORD_CHARS is a DatasetError before it is decoded or parsed; a file of blank lines is
    an empty file. UTF-16 (with its BOM) is decoded whole, within `max_bytes`.
    """
    seen = False
    if _is_utf16(f):
        lines: Iterable[tuple[int, str]] = enumerate(read_whole(f, path, max_bytes).split("\n"), 1)
    else:
        lines = _utf8_lines(f, path)
    for lineno, line in lines:
        if len(line) > MAX_RECORD_CHARS:
            raise DatasetError(too_long(f"{path}:{lineno}", len(line)))
        seen = seen or bool(line.strip())
        yield lineno, line
    if not seen:
        raise DatasetError(f"{path}: empty file")


def _utf8_lines(f: IO[bytes], path: Path) -> Iterator[tuple[int, str]]:
    offset, lineno = 0, 0
    while raw := f.readline(MAX_LINE_BYTES):
        lineno += 1
        if len(raw) == MAX_LINE_BYTES and not raw.endswith(b"\n"):
            # Far above the limit: count the rest a MiB at a time for the message, never holding it.
            size = len(raw)
            while rest := f.readline(1 << 20):
                size += len(rest)
                if rest.endswith(b"\n"):
                    break
            raise DatasetError(too_long(f"{path}:{lineno}", size))
        try:  # the common case inline; _decode says what is wrong with a bad line
            line = raw.decode("utf-8-sig" if offset == 0 else "utf-8")
        except UnicodeDecodeError:
            line = _decode(raw, path, lineno, offset)
        if "\x00" in line:
            _decode(raw, path, lineno, offset)
        yield lineno, line.removesuffix("\n")
        offset += len(raw)
