"""CSV and TSV -> records, parsed by pandas a chunk of checked lines at a time; every value stays text.

Run as:
    with open_data(path) as f:
        rows = list(csv_records(text_lines(f, path), path, ","))
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from smolora.data.limits import check_record_sizes
from smolora.errors import DatasetError, excerpt

CSV_CHUNK_ROWS = 10_000  # rows pandas parses at a time


class _LinesFile:
    """A read()-able view of checked text lines, so pandas parses a file a chunk at a time."""

    def __init__(self, lines: Iterator[tuple[int, str]]):
        self.lines, self.buffer = lines, ""

    def read(self, size: int = -1) -> str:
        pieces, n = [self.buffer], len(self.buffer)
        while size < 0 or n < size:
            item = next(self.lines, None)
            if item is None:
                break
            pieces.append(item[1] + "\n")
            n += len(pieces[-1])
        text = "".join(pieces)
        cut = len(text) if size < 0 else size
        self.buffer = text[cut:]
        return text[:cut]

    def __iter__(self) -> Iterator[str]:
        while text := self.read(1 << 16):
            yield text


def csv_records(lines: Iterator[tuple[int, str]], path: Path, sep: str) -> Iterator[dict]:
    import pandas as pd

    n, first = 0, 1
    try:
        # dtype=str, no NA parsing: "007" stays "007" and "NA" stays text.
        chunks = pd.read_csv(
            _LinesFile(lines),
            sep=sep,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            chunksize=CSV_CHUNK_ROWS,
        )
        for df in chunks:
            rows = df.to_dict("records")
            check_record_sizes(rows, path, first)  # a quoted field can span many lines
            first += len(rows)
            n += len(rows)
            yield from rows
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: empty file") from None
    except pd.errors.ParserError as e:
        msg = excerpt(str(e).replace("Error tokenizing data. C error: ", "").strip())
        m = re.search(r"line (\d+)", msg)
        where = f"{path}:{m.group(1)}" if m else str(path)
        raise DatasetError(f"{where}: not valid {'TSV' if sep == chr(9) else 'CSV'} ({msg})") from None
    if not n:
        raise DatasetError(f"{path}: no rows (only a header line?)")
