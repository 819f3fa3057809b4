"""Data at scale: streamed training (data.streaming), shards per rank, num_proc preprocessing.

That memory stays flat as a streamed file grows is measured by benchmarks/data_scale.py
(docs/benchmarks.md, "Data at scale"), not asserted here.
"""

from __future__ import annotations

import json

import datasets
import pytest
from datasets.distributed import split_dataset_by_node

from smolora.config import load_config
from smolora.data import prepare_data
from smolora.data.encode import encode_rows, load_examples
from smolora.data.stream import make_shards, prepare_stream, read_shard
from smolora.errors import DatasetError
from smolora.model.load import load_tokenizer
from smolora.train.distributed import check_saved_weights
from smolora.train.recipe import train


def write_jsonl(path, n, start=0):
    rows = [
        {"question": f"What is {i} plus one?", "answer": f"It is {i + 1}."} for i in range(start, start + n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return rows


def stream_cfg(tiny_model_dir, data, tmp_path, *extra):
    return load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.path={data}",
            "data.max_length=64",
            "data.streaming=true",
            "train.batch_size=4",
            "train.lr=1e-2",
            "train.max_steps=6",
            "train.save_every=3",
            f"output.dir={tmp_path / 'runs'}",
            "output.name=streamed",
            *extra,
        ],
    )


def test_a_streamed_run_trains_for_max_steps_and_gives_a_working_adapter(tiny_model_dir, qa_file, tmp_path):
    # 40 rows / batch 8 = 5 steps a pass; max_steps 6 runs past the end: the stream starts over.
    cfg = stream_cfg(tiny_model_dir, qa_file, tmp_path, "train.batch_size=8", f"data.val_path={qa_file}")
    run = train(cfg, show_progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert any("eval_loss" in r for r in rows)  # held-out data from data.val_path
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert (run / "checkpoints" / "checkpoint-6").exists()
    check_saved_weights(run / "adapter")
    from smolora.model.load import load_for_inference

    model, tok, meta = load_for_inference(run)
    assert meta["data_format"] == "qa" and meta["adapter"]


def test_streaming_needs_max_steps(tiny_model_dir, qa_file, tmp_path):
    cfg = stream_cfg(tiny_model_dir, qa_file, tmp_path)
    cfg.train.max_steps = None
    with pytest.raises(DatasetError, match="train.max_steps"):
        prepare_data(cfg, load_tokenizer(tiny_model_dir))


def test_streamed_rows_equal_the_in_memory_rows(tiny_model_dir, qa_file, tmp_path):
    cfg = stream_cfg(tiny_model_dir, qa_file, tmp_path)
    tok = load_tokenizer(tiny_model_dir)
    streamed = list(prepare_stream(cfg, tok, repeat=False).train)
    examples, *_ = load_examples(str(qa_file), cfg.data)
    rows, _ = encode_rows(examples, tok, cfg.data)
    key = lambda r: tuple(r["input_ids"])  # noqa: E731 (the stream is shuffled)
    assert sorted(map(key, streamed)) == sorted(map(key, rows))
    assert all(r["labels"][0] == -100 and r["n_labels"] > 0 for r in streamed)  # prompts masked


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_byte_range_shards_cover_every_line_once(tmp_path, ranks, monkeypatch):
    monkeypatch.setattr("smolora.data.stream.SHARD_BYTES", 100)  # many small ranges
    path = tmp_path / "d.jsonl"
    rows = write_jsonl(path, 57)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))  # BOM + CRLF
    shards = make_shards([path], "whole", ranks)
    assert len(shards) % ranks == 0 and len(shards) > ranks
    seen = [r for s in shards for r in read_shard(s)]
    assert seen == rows


def test_each_rank_reads_only_its_own_shards(tmp_path, monkeypatch, tiny_model_dir):
    """What accelerate does per rank (IterableDataset.shard), as split_dataset_by_node would."""
    monkeypatch.setattr("smolora.data.stream.SHARD_BYTES", 300)
    monkeypatch.setenv("WORLD_SIZE", "2")
    path = tmp_path / "d.jsonl"
    write_jsonl(path, 40)
    cfg = stream_cfg(tiny_model_dir, path, tmp_path)
    stream = prepare_stream(cfg, load_tokenizer(tiny_model_dir), repeat=False).train
    assert stream.n_shards % 2 == 0
    parts = [[tuple(r["input_ids"]) for r in stream.shard(num_shards=2, index=rank)] for rank in (0, 1)]
    by_node = [[tuple(r["input_ids"]) for r in split_dataset_by_node(stream, rank, 2)] for rank in (0, 1)]
    everything = sorted(tuple(r["input_ids"]) for r in stream)
    for split in (parts, by_node):
        assert split[0] and split[1] and not set(split[0]) & set(split[1])
        assert sorted(split[0] + split[1]) == everything


def test_parquet_row_groups_csv_and_saved_datasets_stream(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet", row_group_size=3)
    (tmp_path / "d.csv").write_text("question,answer\n" + "".join(f"q{i},007\n" for i in range(3)))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    paths = [tmp_path / "d.parquet", tmp_path / "d.csv", tmp_path / "saved"]
    shards = make_shards(paths, "whole")
    assert [s[0] for s in shards] == ["rowgroup"] * 4 + ["file", "rows"]
    seen = [r for s in shards for r in read_shard(s)]
    assert seen[:10] == rows and seen[10] == {"question": "q0", "answer": "007"} and seen[13:] == rows


def test_a_bad_line_names_the_file_and_byte(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{not json\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl \(byte 33\): not valid JSON"):
        list(read_shard(make_shards([path], "whole")[0]))


def test_num_proc_gives_the_same_rows_and_stats(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("smolora.data.parallel.BATCH", 8)  # 2 workers even for 80 rows
    data = tmp_path / "d.jsonl"
    rows = [
        {"question": f"What is {i} plus one?" + " please" * (i % 6), "answer": f"It is {i + 1}."}
        for i in range(80)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tok = load_tokenizer(tiny_model_dir)
    base = ["data.path=" + str(data), "data.max_length=48"]  # about half the answers truncated away
    serial = prepare_data(load_config(None, base), tok)
    monkeypatch.setenv("SMOLORA_HOME", str(tmp_path / "other-home"))  # no cache hit
    parallel = prepare_data(load_config(None, [*base, "data.num_proc=2"]), tok)
    assert not parallel.stats["cached"]
    assert parallel.train.to_list() == serial.train.to_list()
    drop = lambda s: {k: v for k, v in s.items() if k != "seconds"}  # noqa: E731
    assert drop(parallel.stats) == drop(serial.stats)
    assert 0 < serial.stats["zero_label_rows"] < 80 and serial.stats["truncated"] > 0
    # the training set is read from memory-mapped Arrow files, not held on the heap
    assert parallel.train.cache_files
