"""Loaders are bounded: what is not a regular file is refused before it is opened, reading stops
at data.max_examples, parquet is decoded a batch at a time within a cap, the text held in memory
is capped, and directories and globs stay inside their tree.

A FIFO blocks whoever opens it until a writer comes; each such read runs in a thread whose join
timeout is only the hang detector (the FIFO is unblocked afterwards, so even a failing run ends).

Run as:
    pytest -q tests/test_bounded_loaders.py
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from smolora.config import DataSection, load_config
from smolora.data import parquet
from smolora.data.encode import load_examples
from smolora.data.files import expand_paths
from smolora.data.pipeline import prepare_data
from smolora.data.read import read_records
from smolora.data.stream import prepare_stream
from smolora.errors import DatasetError

HANG_S = 60  # a hang detector, not a speed limit


def ends(fn: Callable[[], object]) -> BaseException | None:
    """The exception fn() raised (None if it returned); fails the test if it is still blocked."""
    box: dict[str, BaseException | None] = {"error": None}

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(HANG_S)
    assert not t.is_alive(), f"still blocked after {HANG_S} s"
    return box["error"]


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "data" / "x.jsonl"
    path.parent.mkdir()
    os.mkfifo(path)
    yield path
    try:  # a reader still blocked in open() (the old code) gets its writer and then EOF
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # nobody was waiting


def qa_lines(n: int) -> str:
    return "".join(json.dumps({"question": f"q{i}?", "answer": f"a{i}."}) + "\n" for i in range(n))


def test_a_fifo_is_refused_at_once_by_every_reader(fifo, tiny_tokenizer):
    for load in (
        lambda: read_records(str(fifo)),  # the file itself
        lambda: read_records(str(fifo.parent)),  # a directory holding it
        lambda: read_records(str(fifo.parent / "*.jsonl")),  # a glob matching it
        lambda: load_examples(str(fifo), DataSection()),
        lambda: prepare_data(load_config(None, [f"data.path={fifo}"]), tiny_tokenizer),  # hashes inputs
        lambda: prepare_stream(
            load_config(None, [f"data.path={fifo}", "data.streaming=true", "train.max_steps=1"]),
            tiny_tokenizer,
        ),
    ):
        error = ends(load)
        assert isinstance(error, DatasetError), error
        assert "x.jsonl: a FIFO (named pipe), not a regular file" in str(error)


def test_a_link_to_dev_zero_named_jsonl_is_refused(tmp_path):
    link = tmp_path / "x.jsonl"
    link.symlink_to("/dev/zero")  # the old reader read it whole: until memory ran out
    error = ends(lambda: read_records(str(link)))
    assert isinstance(error, DatasetError) and "x.jsonl: a device, not a regular file" in str(error)


def test_a_fifo_inside_a_saved_dataset_dir_is_refused(tmp_path):
    import datasets

    d = tmp_path / "saved"
    datasets.Dataset.from_list([{"text": "a"}]).save_to_disk(str(d))
    (d / "state.json").unlink()
    os.mkfifo(d / "state.json")
    error = ends(lambda: read_records(str(d)))
    assert isinstance(error, DatasetError) and "state.json: a FIFO" in str(error)
    try:
        os.close(os.open(d / "state.json", os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


# --- max_examples stops the reading, not just the list --------------------------------------


def test_max_examples_stops_reading_before_a_bad_tail(tmp_path):
    """With max_examples=5 the broken tail is never reached (the old reader read, and failed, first)."""
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(qa_lines(10) + '{"question": "broken\n')
    txt = tmp_path / "a.txt"
    txt.write_bytes(b"".join(b"line %d\n" % i for i in range(10)) + b"bad \xc3\x28 bytes\n")
    csv = tmp_path / "a.csv"  # the bad row lies far past the first chunk pandas parses (10,000 rows)
    rows = 30_000
    csv.write_text("question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(rows)) + "x,y,z,w\n")
    for path, mode in ((jsonl, "whole"), (txt, "lines"), (csv, "whole")):
        with pytest.raises(DatasetError):
            read_records(str(path), text_mode=mode)  # the tail is really broken
        records = read_records(str(path), text_mode=mode, max_examples=5)
        assert len(records) == 5, path
    assert load_examples(str(jsonl), DataSection(max_examples=5))[3]["input"] == 5


def test_max_examples_decodes_one_parquet_batch(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    n = 10_240  # ten batches of parquet.PARQUET_BATCH_ROWS (1024)
    pq.write_table(pa.table({"question": [f"q{i}" for i in range(n)], "answer": ["a"] * n}), path)
    batches = []
    real = getattr(parquet, "_row_bytes", None)  # measures each batch as it is decoded
    monkeypatch.setattr(parquet, "_row_bytes", lambda *a: batches.append(1) or real(*a), raising=False)
    assert [r["question"] for r in read_records(str(path), max_examples=5)] == [f"q{i}" for i in range(5)]
    assert len(batches) == 1
    assert len(read_records(str(path))) == n and len(batches) == 11


# --- parquet: the decoded size is known before anything is expanded ----------------------


def dictionary_bomb(path: Path, rows: int, value_mib: int = 1, columns: int = 1) -> Path:
    """One `value_mib` MiB string per column, dictionary-encoded: stored once, decoded `rows` times."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    value = pa.array(["a" * (value_mib << 20)])
    column = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), value)
    # store_schema=False: read back as plain strings, the way a file from another tool reads.
    pq.write_table(pa.table({f"c{i}": column for i in range(columns)}), path, store_schema=False)
    return path


def test_a_dictionary_encoded_parquet_bomb_is_refused_within_the_cap(tmp_path, monkeypatch):
    bomb = dictionary_bomb(tmp_path / "bomb.parquet", rows=200)
    assert bomb.stat().st_size < 1 << 20  # < 1 MiB on disk, 200 MiB decoded
    monkeypatch.setenv("SMOLORA_MAX_DATA_BYTES", str(64 << 20))
    with pytest.raises(DatasetError, match=r"bomb.parquet: more than 64 MiB of data to hold in memory"):
        read_records(str(bomb))
    assert len(read_records(str(bomb), max_examples=3)) == 3  # a few rows of it are fine
    # One row above the record limit is refused before its strings are made.
    wide = dictionary_bomb(tmp_path / "wide.parquet", rows=2, value_mib=4, columns=17)
    with pytest.raises(
        DatasetError, match=r"wide.parquet: record 1: a record of 68 MiB above the limit of 16 MiB"
    ):
        read_records(str(wide))


def test_a_streamed_parquet_row_group_is_read_in_batches(tmp_path, tiny_tokenizer, monkeypatch):
    wide = dictionary_bomb(tmp_path / "wide.parquet", rows=2, value_mib=4, columns=17)
    cfg = load_config(None, [f"data.path={wide}", "data.streaming=true", "train.max_steps=1"])
    with pytest.raises(
        DatasetError, match="wide.parquet .row group 0.: record 1: a record of 68 MiB above the limit"
    ):
        prepare_stream(cfg, tiny_tokenizer)


# --- the text held in memory is capped ---------------------------------------------------


def test_the_memory_cap_says_how_to_stream_instead(tmp_path, monkeypatch):
    path = tmp_path / "a.jsonl"
    path.write_text(qa_lines(2000))
    monkeypatch.setenv("SMOLORA_MAX_DATA_BYTES", "10000")
    with pytest.raises(DatasetError) as e:
        read_records(str(path))
    msg = str(e.value)
    assert (
        "a.jsonl: more than 10,000 bytes of data to hold in memory" in msg
        and "data.streaming=true" in msg
        and "data.max_examples" in msg
    )
    assert "SMOLORA_MAX_DATA_BYTES=" in msg
    assert len(read_records(str(path), max_examples=100)) == 100  # within the cap
    big = tmp_path / "doc.json"  # a JSON document is read whole: its size is checked first
    big.write_text(json.dumps([{"text": "x" * 100}] * 200))
    with pytest.raises(DatasetError, match="doc.json: more than"):
        read_records(str(big))
    monkeypatch.setenv("SMOLORA_MAX_DATA_BYTES", "lots")
    with pytest.raises(DatasetError, match="SMOLORA_MAX_DATA_BYTES='lots': expected a number of bytes"):
        read_records(str(path))


# --- directories and globs stay inside their tree ----------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    """d/ with a.jsonl, sub/b.jsonl, a link loop, and links to a directory and a file outside it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text(json.dumps({"text": "secret"}) + "\n")
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    (d / "sub" / "b.jsonl").write_text(json.dumps({"text": "b"}) + "\n")
    (d / "sub" / "loop").symlink_to("..")
    (d / "elsewhere").symlink_to(outside)
    return d


def test_recursive_globs_do_not_follow_linked_directories(tree):
    files = expand_paths(str(tree / "**" / "*.jsonl"))
    assert files == [tree / "a.jsonl", tree / "sub" / "b.jsonl"]  # no loop copies, nothing outside
    assert [r["text"] for r in read_records(str(tree / "**" / "*.jsonl"))] == ["a", "b"]


def test_a_glob_or_directory_reaching_outside_is_refused(tree):
    with pytest.raises(DatasetError, match=r"elsewhere/secret.jsonl: a link to .*outside the directory"):
        read_records(str(tree / "*" / "*.jsonl"))  # `*` matches the linked directory
    (tree / "sub" / "loop").unlink()
    (tree / "elsewhere").unlink()
    (tree / "leak.jsonl").symlink_to(tree.parent / "outside" / "secret.jsonl")
    with pytest.raises(DatasetError, match=r"leak.jsonl: a link to .*outside the directory"):
        read_records(str(tree))
    with pytest.raises(DatasetError, match=r"leak.jsonl: a link to .*outside"):
        read_records(str(tree / "*.jsonl"))
    # Given by itself, the file is the user's choice.
    assert read_records(str(tree / "leak.jsonl")) == [{"text": "secret"}]
    (tree / "leak.jsonl").unlink()
    (tree / "also_a.jsonl").symlink_to(tree / "a.jsonl")  # a link inside the tree is fine
    assert [r["text"] for r in read_records(str(tree))] == ["a", "a", "b"]
