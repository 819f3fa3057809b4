"""prepare_data and inspect_data end to end on tiny files: split, drop, cache, fingerprint, lint."""

from __future__ import annotations

import json
import shutil

import pytest

from smolora.config import build_config
from smolora.data import inspect_data, prepare_data
from smolora.data.pipeline import split_examples
from smolora.errors import DatasetError
from smolora.runs import smolora_home


def run_cfg(path, **data):
    return build_config({"data": {"path": str(path), **data}})


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_prepare_data_columns_and_stats(qa_file, tiny_tokenizer):
    out = prepare_data(run_cfg(qa_file), tiny_tokenizer)
    assert out.format == "qa" and out.mapping == {"prompt": "question", "response": "answer"}
    assert out.train.column_names == ["input_ids", "labels", "length", "n_labels"]
    stats = out.stats
    assert (stats["n_train"], stats["n_val"]) == (36, 4) and len(out.val) == 4
    assert stats["counts"] == {"input": 40, "empty": 0, "duplicates": 0, "kept": 40}
    assert stats["zero_label_rows"] == 0 and stats["truncated"] == 0 and stats["cached"] is False
    assert (
        0 < stats["trainable_share"] < 1 and stats["tokens_max"] >= stats["tokens_p95"] >= stats["tokens_p50"]
    )
    row = out.train[0]
    assert row["length"] == len(row["input_ids"]) and row["n_labels"] == sum(t != -100 for t in row["labels"])
    assert tiny_tokenizer.decode([t for t in row["labels"] if t != -100]).startswith("It is ")


def test_cache_hit_and_fingerprint(qa_file, tiny_tokenizer):
    first = prepare_data(run_cfg(qa_file), tiny_tokenizer)
    second = prepare_data(run_cfg(qa_file), tiny_tokenizer)
    assert second.stats["cached"] is True and second.fingerprint == first.fingerprint
    assert second.train["input_ids"] == first.train["input_ids"] and second.format == "qa"
    assert (smolora_home() / "data" / first.fingerprint / "meta.json").exists()
    assert not [p for p in (smolora_home() / "data").iterdir() if p.name.startswith(".")]  # no temp dirs left
    changed = prepare_data(run_cfg(qa_file, max_length=64), tiny_tokenizer)
    assert changed.fingerprint != first.fingerprint and changed.stats["cached"] is False
    reseeded = prepare_data(
        build_config({"data": {"path": str(qa_file)}, "train": {"seed": 1}}), tiny_tokenizer
    )
    assert reseeded.fingerprint != first.fingerprint
    # a damaged cache is rebuilt, not trusted
    shutil.rmtree(smolora_home() / "data" / first.fingerprint / "train")
    rebuilt = prepare_data(run_cfg(qa_file), tiny_tokenizer)
    assert rebuilt.stats["cached"] is False and rebuilt.train["input_ids"] == first.train["input_ids"]
    assert prepare_data(run_cfg(qa_file), tiny_tokenizer).stats["cached"] is True
    qa_file.write_text(qa_file.read_text() + json.dumps({"question": "New?", "answer": "Yes."}) + "\n")
    assert prepare_data(run_cfg(qa_file), tiny_tokenizer).fingerprint != first.fingerprint


def test_seeded_split_is_reproducible(qa_file, tiny_tokenizer, monkeypatch):
    examples = [{"text": str(i)} for i in range(50)]
    assert split_examples(examples, 0.2, 7) == split_examples(examples, 0.2, 7)
    assert split_examples(examples, 0.2, 7)[1] != split_examples(examples, 0.2, 8)[1]
    train, val = split_examples(examples, 0.2, 7)
    assert len(val) == 10 and sorted(train + val, key=lambda e: int(e["text"])) == examples
    assert split_examples(examples, 0.0, 7) == (examples, [])
    a = prepare_data(run_cfg(qa_file), tiny_tokenizer)
    monkeypatch.setenv("SMOLORA_HOME", str(qa_file.parent / "other-home"))  # no cache: recomputed
    b = prepare_data(run_cfg(qa_file), tiny_tokenizer)
    assert b.stats["cached"] is False and a.val["input_ids"] == b.val["input_ids"]


def test_val_path(qa_file, tmp_path, tiny_tokenizer):
    val = write_jsonl(tmp_path / "val.jsonl", [{"prompt": "Hi?", "completion": "Hello."}] * 3)
    out = prepare_data(run_cfg(qa_file, val_path=str(val)), tiny_tokenizer)
    assert (out.stats["n_train"], out.stats["n_val"]) == (40, 1)  # val deduplicated on its own


def test_zero_label_rows_are_dropped_and_counted(tmp_path, tiny_tokenizer):
    rows = [{"question": f"What is {i}?", "answer": "It is."} for i in range(6)]
    rows += [
        {"question": "Write a haiku about rivers and the sea. " * 8 + str(i), "answer": "No."}
        for i in range(3)
    ]
    out = prepare_data(
        run_cfg(write_jsonl(tmp_path / "d.jsonl", rows), max_length=48, val_ratio=0), tiny_tokenizer
    )
    assert out.stats["zero_label_rows"] == 3 and out.stats["truncated"] == 3
    assert out.stats["n_train"] == 6 and out.val is None


def test_all_rows_without_trainable_tokens_is_an_error(tmp_path, tiny_tokenizer):
    rows = [
        {"question": "Write a haiku about rivers and the sea. " * 8 + str(i), "answer": "No."}
        for i in range(3)
    ]
    cfg = run_cfg(write_jsonl(tmp_path / "d.jsonl", rows), max_length=32, val_ratio=0)
    with pytest.raises(DatasetError, match="all 3 rows have zero trainable tokens.*data.train_on=all"):
        prepare_data(cfg, tiny_tokenizer)
    cfg = run_cfg(tmp_path / "d.jsonl", max_length=32, val_ratio=0, train_on="all")
    assert prepare_data(cfg, tiny_tokenizer).stats["n_train"] == 3


def test_nothing_left_after_cleaning_says_why(tmp_path, tiny_tokenizer):
    rows = [
        {"question": "Q?", "answer": " "},
        {"question": "Q?", "answer": "A"},
        {"question": "Q?", "answer": "A"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows[:1])
    with pytest.raises(DatasetError, match=r"no examples left after cleaning: 1 read, 1 empty"):
        prepare_data(run_cfg(path), tiny_tokenizer)
    with pytest.raises(DatasetError, match="set data.path"):
        prepare_data(build_config({}), tiny_tokenizer)


def test_plain_text_pipeline_with_chunks(tmp_path, tiny_tokenizer):
    (tmp_path / "book.txt").write_text("The capital of France is Paris. " * 40)
    (tmp_path / "poem.md").write_text("Write a haiku about rivers and the sea.")
    out = prepare_data(run_cfg(tmp_path / "*", max_length=32, val_ratio=0), tiny_tokenizer)
    assert out.format == "text" and out.stats["chunked"] == 1 and out.stats["n_train"] > 2
    assert out.stats["trainable_share"] == 1.0 and max(out.train["length"]) == 32


def test_inspect_data_report(tmp_path, tiny_tokenizer):
    rows = [{"instruction": "What is 2 plus 2?", "output": "It is 4."}] * 2
    rows += [{"instruction": "Write a haiku about rivers and the sea. " * 8, "output": "No."}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    report = inspect_data(str(path), run_cfg("unused.jsonl", max_length=48), tiny_tokenizer, n_examples=2)
    assert report["format"] == "alpaca" and report["files"] == [str(path)]
    assert report["counts"]["duplicates"] == 1 and report["truncated"] == 1 and report["zero_label_rows"] == 1
    assert report["lengths"]["max"] > 48
    assert any("data.max_length=48" in w for w in report["warnings"])
    assert any("duplicate" in w for w in report["warnings"])
    first = report["examples"][0]
    assert [text for text, trained in first if trained] == ["It is 4.<|im_end|>"]
    assert "".join(text for text, _ in first) == tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": rows[0]["instruction"]}, {"role": "assistant", "content": "It is 4."}],
        tokenize=False,
    )
