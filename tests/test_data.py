"""Reading files, detecting shapes, field mapping, cleaning: offline, milliseconds each."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from smolora.config import build_config
from smolora.data import FORMATS, clean_examples, detect_format, read_records, to_examples
from smolora.data.clean import chunk_ids, clean_text
from smolora.data.files import expand_paths
from smolora.errors import DatasetError

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": "It is 4."},
]
SHAPES = {
    "text": ({"text": "The capital of France is Paris."}, {"text": "The capital of France is Paris."}),
    "alpaca": (
        {"instruction": "Summarize the text.", "input": "Paris is big.", "output": "Big city."},
        {
            "messages": [
                {"role": "user", "content": "Summarize the text.\n\nParis is big."},
                {"role": "assistant", "content": "Big city."},
            ]
        },
    ),
    "qa": (
        {"question": "What is 2 plus 2?", "answer": "It is 4."},
        {"messages": CONV[1:]},
    ),
    "sharegpt": (
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "What is 2 plus 2?"},
                {"from": "gpt", "value": "It is 4."},
            ]
        },
        {"messages": CONV},
    ),
    "messages": ({"messages": CONV}, {"messages": CONV}),
}


def data_cfg(**data):
    return build_config({"data": {"path": "data.jsonl", **data}}).data


def write(path: Path, rows: list[dict], kind: str) -> Path:
    """Write `rows` as jsonl, json (list), json-dict ({"data": [...]}), csv or parquet."""
    if kind == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif kind == "json":
        path.write_text(json.dumps(rows, indent=1))
    elif kind == "json-dict":
        path.write_text(json.dumps({"version": 2, "data": rows}))
    elif kind == "csv":  # nested values travel as JSON strings, as they do in real CSV exports
        flat = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows]
        pd.DataFrame(flat).to_csv(path, index=False)
    elif kind == "parquet":
        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "json-dict", "csv", "parquet"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_shape_detected_from_each_file_type(tmp_path, shape, kind):
    record, expected = SHAPES[shape]
    suffix = {"json-dict": "json"}.get(kind, kind)
    path = write(tmp_path / f"data.{suffix}", [record, record], kind)
    records = read_records(str(path))
    assert len(records) == 2
    cfg = data_cfg()
    fmt, mapping = detect_format(records, cfg)
    assert fmt == shape
    assert to_examples(records, fmt, mapping, cfg)[0] == expected


def test_formats_is_a_plain_dict_of_shapes():
    assert set(FORMATS) == {"text", "alpaca", "qa", "sharegpt", "messages"}
    assert all(callable(spec["to_example"]) for spec in FORMATS.values())


def test_txt_whole_and_lines_and_tsv(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("first line\n\nsecond line\n")
    assert read_records(str(txt)) == [{"text": "first line\n\nsecond line\n"}]
    assert read_records(str(txt), text_mode="lines") == [{"text": "first line"}, {"text": "second line"}]
    tsv = tmp_path / "d.tsv"
    tsv.write_text("prompt\tcompletion\nhi, there\thello, you\n")
    records = read_records(str(tsv))
    assert records == [{"prompt": "hi, there", "completion": "hello, you"}]
    assert detect_format(records, data_cfg()) == ("qa", {"prompt": "prompt", "response": "completion"})


def test_csv_keeps_values_as_text(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("question,answer\nWhat is NA?,007\n")
    assert read_records(str(p)) == [{"question": "What is NA?", "answer": "007"}]


def test_json_dict_picks_the_split_and_json_lines_in_a_json_file(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"train": [{"text": "a"}], "test": [{"text": "b"}]}))
    assert read_records(str(p)) == [{"text": "a"}]
    assert read_records(str(p), split="test") == [{"text": "b"}]
    p.write_text('{"text": "a"}\n{"text": "b"}\n')  # JSON Lines saved as .json
    assert read_records(str(p)) == [{"text": "a"}, {"text": "b"}]


def test_saved_hf_dataset_dirs(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"text": "a"}, {"text": "b"}]).save_to_disk(str(tmp_path / "ds"))
    assert expand_paths(str(tmp_path / "ds")) == [tmp_path / "ds"]
    assert read_records(str(tmp_path / "ds")) == [{"text": "a"}, {"text": "b"}]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "t"}])})
    dd["validation"] = datasets.Dataset.from_list([{"text": "v"}])
    dd.save_to_disk(str(tmp_path / "dd"))
    assert read_records(str(tmp_path / "dd"), split="validation") == [{"text": "v"}]
    with pytest.raises(DatasetError, match="no split 'test'"):
        read_records(str(tmp_path / "dd"), split="test")


def test_hub_name_offline_says_so():
    with pytest.raises(DatasetError, match="could not load it from the Hugging Face Hub.*local file"):
        read_records("someone/some-dataset")


def test_glob_merge_is_sorted_and_in_order(tmp_path):
    for name, text in [("b.jsonl", "B"), ("a.jsonl", "A"), ("c.txt", "C")]:
        (tmp_path / name).write_text(json.dumps({"text": text}) if name.endswith("jsonl") else text)
    assert [r["text"] for r in read_records(str(tmp_path / "*.jsonl"))] == ["A", "B"]
    both = [str(tmp_path / "c.txt"), str(tmp_path / "*.jsonl")]
    assert [r["text"] for r in read_records(both)] == ["C", "A", "B"]
    assert [r["text"] for r in read_records(str(tmp_path))] == ["A", "B", "C"]  # a directory
    assert len(read_records(both, max_examples=2)) == 2


def test_missing_paths(tmp_path):
    with pytest.raises(DatasetError, match="nope.jsonl: no such file"):
        read_records(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DatasetError, match="matched no files"):
        read_records(str(tmp_path / "*.jsonl"))


def test_broken_json_line_names_file_and_line(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_text('{"text": "a"}\n\n{"text": "b",}\n')
    with pytest.raises(DatasetError, match=r"data\.jsonl:3: not valid JSON"):
        read_records(str(p))
    p.write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(DatasetError, match=r"data\.jsonl:2: expected a JSON object per line, got a list"):
        read_records(str(p))


def test_json_of_the_wrong_shape(tmp_path):
    p = tmp_path / "data.json"
    p.write_text("42")
    with pytest.raises(DatasetError, match=r"data\.json: expected a list of objects.*found a number"):
        read_records(str(p))
    p.write_text('{"meta": "x", "count": 3}')
    with pytest.raises(DatasetError, match=r"data\.json: .*keys \['meta', 'count'\]"):
        read_records(str(p))
    p.write_text('["a", "b"]')
    with pytest.raises(DatasetError, match="item 0 is a string"):
        read_records(str(p))


@pytest.mark.parametrize("name", ["data.jsonl", "data.csv", "data.txt", "data.parquet", "data.json"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_text("  \n" if name != "data.parquet" else "")
    with pytest.raises(DatasetError, match=f"{name}: empty file"):
        read_records(str(tmp_path / name))


def test_binary_junk_and_wrong_encoding(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(DatasetError, match=r"data\.jsonl:1: not UTF-8 text"):
        read_records(str(p))
    p = tmp_path / "latin.csv"
    p.write_bytes("question,answer\nCafé?,Oui\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="latin.csv:2: not UTF-8"):
        read_records(str(p))
    p = tmp_path / "nul.txt"
    p.write_bytes(b"abc\x00def")
    with pytest.raises(DatasetError, match="nul.txt:1: holds NUL bytes"):
        read_records(str(p))
    p = tmp_path / "junk.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match="junk.parquet: could not read"):
        read_records(str(p))


def test_utf8_bom_and_utf16_are_read(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes("\ufefftext\nhé\n".encode())
    assert read_records(str(p)) == [{"text": "hé"}]
    p.write_bytes("text\nhé\n".encode("utf-16"))
    assert read_records(str(p)) == [{"text": "hé"}]


def test_ragged_csv_names_the_line(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("question,answer\na,b\nc,d,e\n")
    with pytest.raises(DatasetError, match=r"data\.csv:3: not valid CSV \(Expected 2 fields"):
        read_records(str(p))


def test_unknown_extension_lists_supported(tmp_path):
    p = tmp_path / "data.xlsx"
    p.write_text("x")
    with pytest.raises(DatasetError, match=r"unsupported file type '\.xlsx'.*\.jsonl.*\.parquet"):
        read_records(str(p))


# --- shapes and field mapping --------------------------------------------------------------


def test_explicit_mapping_wins():
    records = [{"instruction": "ignore me", "output": "no", "q": "What?", "a": "That.", "input": "ctx"}]
    cfg = data_cfg(fields={"prompt": "q", "response": "a"})
    fmt, mapping = detect_format(records, cfg)
    assert mapping == {"prompt": "q", "response": "a"}  # no guessed "input" either
    assert to_examples(records, fmt, mapping, cfg)[0]["messages"][0]["content"] == "What?"
    cfg = data_cfg(fields={"text": "instruction"})
    assert detect_format(records, cfg) == ("text", {"text": "instruction"})


def test_forced_format():
    records = [{"question": "Q?", "answer": "A.", "text": "T"}]
    assert detect_format(records, data_cfg())[0] == "qa"
    assert detect_format(records, data_cfg(format="text")) == ("text", {"text": "text"})
    with pytest.raises(DatasetError, match="data.format=sharegpt needs fields for: messages"):
        detect_format(records, data_cfg(format="sharegpt"))


def test_template_combines_columns():
    records = [{"title": "Rivers", "body": "They flow.", "summary": "Water moves."}]
    cfg = data_cfg(template="Title: {title}\n{body}")
    fmt, mapping = detect_format(records, cfg)
    assert fmt == "text"
    assert to_examples(records, fmt, mapping, cfg) == [{"text": "Title: Rivers\nThey flow."}]
    cfg = data_cfg(template="Title: {title}\n{body}", fields={"response": "summary"})
    fmt, mapping = detect_format(records, cfg)
    assert fmt == "qa"
    assert to_examples(records, fmt, mapping, cfg)[0]["messages"] == [
        {"role": "user", "content": "Title: Rivers\nThey flow."},
        {"role": "assistant", "content": "Water moves."},
    ]
    with pytest.raises(DatasetError, match=r"data.template uses \['author'\]"):
        detect_format(records, data_cfg(template="{author}"))


def test_wrong_fields_error_lists_fields_found():
    records = [{"foo": 1, "bar": [1, 2]}]
    with pytest.raises(DatasetError) as e:
        detect_format(records, data_cfg())
    msg = str(e.value)
    assert "no usable text fields in data.jsonl" in msg
    assert "found fields: ['foo', 'bar']" in msg
    assert "--set data.fields.prompt=foo --set data.fields.response=bar" in msg
    with pytest.raises(DatasetError, match=r"data.fields maps \{'prompt': 'quesion'\}.*\['foo', 'bar'\]"):
        detect_format(records, data_cfg(fields={"prompt": "quesion"}))
    with pytest.raises(DatasetError, match="unknown role"):
        detect_format(records, data_cfg(fields={"question": "foo"}))


def test_single_unknown_text_column_is_plain_text():
    records = [{"review": "Great lamp.", "stars": 5}]
    assert detect_format(records, data_cfg()) == ("text", {"text": "review"})


def test_domain_and_system_prompt():
    records = [
        {"question": "Dose?", "answer": "Ask a doctor.", "domain": "medicine"},
        {"question": "Q", "answer": "A"},
    ]
    cfg = data_cfg(system_prompt="You are careful.")
    fmt, mapping = detect_format(records, cfg)
    assert mapping["domain"] == "domain"
    first, second = to_examples(records, fmt, mapping, cfg)
    assert first["domain"] == "medicine" and "domain" not in second
    assert first["messages"][0] == {"role": "system", "content": "You are careful."}
    cfg = data_cfg(domain=False)
    fmt, mapping = detect_format(records, cfg)
    assert "domain" not in mapping and "domain" not in to_examples(records, fmt, mapping, cfg)[0]
    # seed 002 calls it "hash"; an existing system turn is kept
    records = [{"messages": CONV, "hash": "math"}]
    fmt, mapping = detect_format(records, data_cfg(system_prompt="ignored"))
    example = to_examples(records, fmt, mapping, data_cfg(system_prompt="ignored"))[0]
    assert example["domain"] == "math" and example["messages"] == CONV


def test_malformed_conversation_names_the_record():
    records = [
        {"conversations": [{"from": "human", "value": "hi"}]},
        {"conversations": [{"from": "robot", "value": "x"}]},
    ]
    fmt, mapping = detect_format(records, data_cfg())
    with pytest.raises(DatasetError, match="record 2: cannot read it as sharegpt.*unknown role 'robot'"):
        to_examples(records, fmt, mapping, data_cfg())


# --- cleaning ------------------------------------------------------------------------------


def test_clean_text():
    assert clean_text("  a\r\nb\x00c\x07   d\t\te  \n\n\n\nf \x85") == "a\nbc d e\n\nf"
    assert clean_text("def f():\n    return 1") == "def f():\n    return 1"  # indentation kept


def test_clean_examples_counts_and_dedupe():
    qa = {"messages": [{"role": "user", "content": "Q "}, {"role": "assistant", "content": "A"}]}
    examples = [
        qa,
        {
            "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": " A\x00"}]
        },  # dup once clean
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]},  # no answer
        {"messages": [{"role": "system", "content": ""}, {"role": "assistant", "content": "x"}]},  # no user
        {"text": " \n "},
        {"text": "kept text"},
    ]
    kept, counts = clean_examples(examples)
    assert counts == {"input": 6, "empty": 3, "duplicates": 1, "kept": 2}
    assert kept[0]["messages"][0]["content"] == "Q" and kept[1] == {"text": "kept text"}
    assert examples[0]["messages"][0]["content"] == "Q "  # inputs untouched
    _, counts = clean_examples(examples, dedupe=False)
    assert counts["duplicates"] == 0 and counts["kept"] == 3


def test_chunk_ids_overlap():
    ids = list(range(10))
    assert chunk_ids(ids, 4, 1) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert chunk_ids(ids, 4, 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunk_ids(ids, 10, 3) == [ids]
    windows = chunk_ids(list(range(100)), 16, 32)  # overlap is capped so windows move forward
    assert all(len(w) <= 16 for w in windows) and windows[-1][-1] == 99
    assert all(a[-8:] == b[:8] for a, b in zip(windows, windows[1:], strict=False))
