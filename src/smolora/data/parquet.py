"""Parquet -> records, a record batch at a time, its decoded size known before anything is expanded.

Run as:
    with open_data(path) as f:
        rows = list(parquet_records(f, path, max_bytes=2 << 30))
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO

from smolora.data.limits import MAX_LINE_BYTES, MAX_RECORD_CHARS, check_record_sizes, too_big, too_long
from smolora.errors import DatasetError

PARQUET_BATCH_ROWS = 1024  # rows decoded at a time (256: 4x slower to read, measured)
PARQUET_SLICE_BYTES = 16 << 20  # at most this much of a batch turned into Python objects at once


def parquet_records(
    source: IO[bytes] | str,
    path: Path | str,
    row_groups: list[int] | None = None,
    max_bytes: int | None = None,
) -> Iterator[dict]:
    """Rows of a parquet file (or some of its row groups), a record batch at a time.

    A parquet file is compressed and dictionary-encoded: a few MB can hold the same 1 MB string
    in a million rows, GBs once decoded. Text columns are therefore read as dictionaries and
    each batch's decoded size is computed from them before any Python string is made: a row
    above the record limit, or more than `max_bytes` in all, is refused before it is expanded.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pq.ParquetFile(source).schema_arrow
    text = [f.name for f in schema if _is_text(pa, f.type)]
    if hasattr(source, "seek"):
        source.seek(0)
    reader = pq.ParquetFile(source, read_dictionary=text)
    decoded, first = 0, 1
    for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=row_groups):
        row_bytes = _row_bytes(batch, pa, pc)
        big, total = (
            (pc.max(row_bytes).as_py() or 0, pc.sum(row_bytes).as_py() or 0) if len(batch) else (0, 0)
        )
        if big >= MAX_LINE_BYTES:  # more characters than the limit, whatever they are
            raise DatasetError(too_long(f"{path}: record {first + row_bytes.index(big).as_py()}", big))
        for start, end, size in _slices(row_bytes, total):  # counted before it is made into Python
            decoded += size
            if max_bytes is not None and decoded > max_bytes:
                raise DatasetError(too_big(path, max_bytes))
            rows = _decoded(batch.slice(start, end - start), pa).to_pylist()
            if big > MAX_RECORD_CHARS:  # bytes >= characters: below it no row can be too long
                check_record_sizes(rows, path, first + start)
            yield from rows
        first += batch.num_rows


def _decoded(batch, pa):
    """The slice with its dictionaries expanded in Arrow (its size is known): to_pylist is much faster so."""
    columns = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _slices(row_bytes, total: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, bytes) of consecutive rows of at most PARQUET_SLICE_BYTES (or one row)."""
    if total <= PARQUET_SLICE_BYTES:  # the common case: the whole batch at once
        yield 0, len(row_bytes), total
        return
    sizes, start = row_bytes.to_pylist(), 0
    while start < len(sizes):
        end, acc = start, 0
        while end < len(sizes) and (end == start or acc + sizes[end] <= PARQUET_SLICE_BYTES):
            acc, end = acc + sizes[end], end + 1
        yield start, end, acc
        start = end


def _is_text(pa, t) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def _row_bytes(batch, pa, pc):
    """Decoded bytes of each row of a record batch (an int64 array), from the dictionaries: nothing is expanded."""
    n = batch.num_rows
    sizes = pa.array([0] * n, pa.int64())
    for column in batch.columns:
        if pa.types.is_dictionary(column.type) and _is_text(pa, column.type.value_type):
            lengths = pc.take(pc.binary_length(column.dictionary), column.indices)
        elif _is_text(pa, column.type):
            lengths = pc.binary_length(column)
        else:  # numbers, lists, structs: as decoded by Arrow, spread over the rows
            lengths = pa.array([column.nbytes // max(1, n)] * n, pa.int64())
        sizes = pc.add(sizes, pc.cast(lengths.fill_null(0), pa.int64()))
    return sizes
