"""A fixed corpus of malformed data files and config files, written at test time.

Every data loader and the config reader must turn each of these into a success or a
`DatasetError` / `ConfigError` naming the file: never another exception, never a hang.
The files are generated (deterministically: fixed seeds, fixed bytes) so nothing big is
committed; the 100 MB single-line files are written only when `huge=True`.

Run as:
    from bad_inputs import make_data_corpus, make_config_corpus
    for path in make_data_corpus(tmp_path / "data"):
        try:
            read_records(str(path))
        except DatasetError as e:
            print(path.name, "->", e)
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
from collections.abc import Callable
from pathlib import Path

HUGE_BYTES = 100 << 20  # the "100 MB single line" files
DEEP = 10_000  # nesting levels: far beyond Python's recursion limit
QA = [{"question": f"What is {i} plus one?", "answer": f"It is {i + 1}."} for i in range(4)]


def _junk(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def _jsonl(rows: list) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def _write_huge(path: Path, head: bytes, fill: bytes = b"x", tail: bytes = b"") -> None:
    """head + HUGE_BYTES of `fill` + tail, written in 1 MiB pieces (no 100 MB buffer here)."""
    piece = fill * ((1 << 20) // len(fill))
    with open(path, "wb") as f:
        f.write(head)
        for _ in range(HUGE_BYTES // len(piece)):
            f.write(piece)
        f.write(tail)


def _parquet(path: Path, columns: dict, schema: str | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # schema: "text" gives a string column even when there are no rows to infer it from.
    arrow_schema = pa.schema([(schema, pa.string())]) if schema else None
    pq.write_table(pa.table(columns, schema=arrow_schema), path)


def _parquet_bytes(columns: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def _hf_dir(path: Path, corrupt: dict[str, bytes], dict_of_splits: bool = False) -> None:
    """A directory written by save_to_disk, then some of its files overwritten."""
    import datasets

    ds = datasets.Dataset.from_list(QA)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        (datasets.DatasetDict({"train": ds}) if dict_of_splits else ds).save_to_disk(str(path))
    finally:
        if bars:
            datasets.enable_progress_bars()
    for name, data in corrupt.items():
        (path / name).write_bytes(data)


def _deep_json(text_key: bool) -> bytes:
    nested = "[" * DEEP + "]" * DEEP
    return (json.dumps({"text": "x"})[:-1] + f', "more": {nested}}}\n' if text_key else nested).encode()


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def _text(text: str, encoding: str = "utf-8") -> Callable[[Path], None]:
    return lambda p: p.write_bytes(text.encode(encoding))


def _mkdir(files: dict[str, bytes]) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        p.mkdir()
        for name, data in files.items():
            (p / name).write_bytes(data)

    return write


_QA_TEXT = _jsonl(QA).decode()
_MSG = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]

# name (also the file name) -> writer. Small cases: each file is a few KB at most.
DATA_CASES: dict[str, Callable[[Path], None]] = {
    # --- JSON Lines: truncated, wrong types, wrong shapes --------------------------------
    "truncated_object.jsonl": _text('{"question": "a", "answer": "b"}\n{"question": "c", "answer": '),
    "truncated_string.jsonl": _text('{"text": "abc'),
    "truncated_after_comma.ndjson": _text('{"text": "a"}\n{"text": "b",\n'),
    "wrong_types_alpaca.jsonl": _bytes(
        _jsonl([{"instruction": 5, "output": [1]}, {"instruction": 6.5, "output": {"a": [2]}}])
    ),
    "null_fields.jsonl": _bytes(_jsonl([{"question": None, "answer": None}] * 3)),
    "bool_fields.jsonl": _bytes(_jsonl([{"question": True, "answer": False}])),
    "nested_object_as_text.jsonl": _bytes(_jsonl([{"text": {"a": {"b": [1, {"c": None}]}}}])),
    "top_level_number.jsonl": _text("5\n6\n"),
    "top_level_string.jsonl": _text('"hello"\n'),
    "top_level_list_of_numbers.jsonl": _text("[1, 2, 3]\n"),
    "top_level_null.jsonl": _text("null\n"),
    "object_then_list.jsonl": _text('{"text": "a"}\n[{"text": "b"}]\n'),
    "missing_answer.jsonl": _bytes(_jsonl([{"question": "What is 1 plus one?"}])),
    "unknown_fields.jsonl": _bytes(_jsonl([{"foo": 1, "bar": 2}])),
    "empty_objects.jsonl": _text("{}\n{}\n"),
    "many_long_field_names.jsonl": _bytes(_jsonl([{f"field_{i}_" + "k" * 200: i for i in range(2_000)}])),
    "huge_integer.jsonl": _text('{"text": 1' + "0" * 5_000 + "}\n"),
    "lone_surrogate.jsonl": _text('{"question": "a\\ud800b", "answer": "c"}\n'),
    "nan_and_infinity.jsonl": _text('{"question": NaN, "answer": Infinity}\n'),
    "deep_nesting.jsonl": _bytes(_deep_json(text_key=True)),
    # --- conversations ---------------------------------------------------------------
    "messages_wrong_roles.jsonl": _bytes(
        _jsonl([{"messages": [{"role": "wizard", "content": "Hi"}, {"role": "toad", "content": "Hello"}]}])
    ),
    "messages_empty.jsonl": _bytes(_jsonl([{"messages": []}] * 2)),
    "messages_not_a_list.jsonl": _bytes(_jsonl([{"messages": 5}, {"messages": {"role": "user"}}])),
    "messages_string_not_json.jsonl": _bytes(_jsonl([{"messages": "hello there"}])),
    "messages_turns_not_objects.jsonl": _bytes(_jsonl([{"messages": ["Hi", "Hello"]}])),
    "messages_missing_content.jsonl": _bytes(
        _jsonl([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant"}]}])
    ),
    "messages_huge_role.jsonl": _bytes(
        _jsonl([{"messages": [{"role": "r" * 100_000, "content": "Hi"}, *_MSG]}])
    ),
    "messages_second_row_broken.jsonl": _bytes(_jsonl([{"messages": _MSG}, {"messages": [{"role": 5}]}])),
    "sharegpt_wrong_roles.jsonl": _bytes(
        _jsonl([{"conversations": [{"from": "alien", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}])
    ),
    "sharegpt_empty_conversations.jsonl": _bytes(_jsonl([{"conversations": []}] * 2)),
    "sharegpt_not_a_list.jsonl": _bytes(_jsonl([{"conversations": {"from": "human", "value": "Hi"}}])),
    "sharegpt_value_types.jsonl": _bytes(
        _jsonl([{"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": None}]}])
    ),
    # --- binary junk and wrong encodings ---------------------------------------------
    "random_bytes.jsonl": _bytes(_junk(4096)),
    "png_header.jsonl": _bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + _junk(512, 1)),
    "gzip_named.jsonl": _bytes(gzip.compress(_jsonl(QA), mtime=0)),
    "nul_bytes.jsonl": _bytes(b'{"text": "a\x00b"}\n\x00\x00\x00\n'),
    "utf16_bom.jsonl": _bytes(_QA_TEXT.encode("utf-16")),
    "utf16_no_bom.jsonl": _bytes(_QA_TEXT.encode("utf-16-le")),
    "utf8_bom.jsonl": _bytes(b"\xef\xbb\xbf" + _jsonl(QA)),
    "latin1.jsonl": _text('{"question": "Où est le café?", "answer": "Là."}\n', "latin-1"),
    "shift_jis.jsonl": _text('{"question": "東京はどこ?", "answer": "日本です。"}\n', "shift_jis"),
    "invalid_utf8.jsonl": _bytes(b'{"text": "ok"}\n{"text": "bad \xc3\x28 here"}\n'),
    "crlf_lines.jsonl": _bytes(_jsonl(QA).replace(b"\n", b"\r\n")),
    # --- JSON documents --------------------------------------------------------------
    "truncated.json": _text('[{"text": "a"}, {"text": '),
    "data_is_number.json": _text('{"data": 5}'),
    "top_level_number.json": _text("42"),
    "top_level_string.json": _text('"just a string"'),
    "top_level_null.json": _text("null"),
    "list_of_numbers.json": _text("[1, 2, 3]"),
    "list_mixed.json": _text('[{"text": "a"}, 5]'),
    "empty_list.json": _text("[]"),
    "empty_object.json": _text("{}"),
    "two_lists.json": _text('{"left": [{"text": "a"}], "right": [{"text": "b"}]}'),
    "list_of_lists.json": _text('{"data": [[1, 2], [3]]}'),
    "deep_nesting.json": _bytes(_deep_json(text_key=False)),
    "deep_unclosed.json": _text("[" * DEEP),
    "trailing_comma.json": _text('[{"text": "a"},]'),
    "single_quotes.json": _text("[{'text': 'a'}]"),
    "comments.json": _text('// rows\n[{"text": "a"}]'),
    # --- CSV / TSV -------------------------------------------------------------------
    "ragged_long_rows.csv": _text("question,answer\na,b\nc,d,e,f\n"),
    "ragged_short_rows.csv": _text("question,answer\na\nb,c\n"),
    "header_only.csv": _text("question,answer\n"),
    "duplicate_headers.csv": _text("text,text\na,b\nc,d\n"),
    "unclosed_quote.csv": _text('question,answer\n"what is this,b\nc,d\n'),
    "numbers_only.csv": _text("a,b\n1,2\n3,4\n"),
    "empty_header_names.csv": _text(",\n,\n"),
    "messages_deep_json.csv": _text('messages\n"' + "[" * DEEP + '"\n'),
    "messages_bad_json.csv": _text('messages\n"[{""role"": ""user"", "\n'),
    "binary.csv": _bytes(_junk(4096, 2)),
    "latin1.csv": _text("question,answer\nCafé?,Oui\n", "latin-1"),
    "utf16_bom.csv": _bytes("question,answer\nHow?,So.\n".encode("utf-16")),
    "ragged.tsv": _text("question\tanswer\na\tb\tc\td\n"),
    "header_only.tsv": _text("question\tanswer\n"),
    "unclosed_quote.tsv": _text('question\tanswer\n"a\tb\n'),
    # --- parquet ---------------------------------------------------------------------
    "ints_only.parquet": lambda p: _parquet(p, {"a": [1, 2, 3], "b": [4, 5, 6]}),
    "zero_rows.parquet": lambda p: _parquet(p, {"text": []}, schema="text"),
    "truncated.parquet": lambda p: p.write_bytes(_parquet_bytes({"text": ["a"] * 100})[:300]),
    "random_bytes.parquet": _bytes(_junk(2048, 3)),
    "jsonl_named.parquet": _bytes(_jsonl(QA)),
    "null_text.parquet": lambda p: _parquet(p, {"text": [None, None]}),
    "struct_column.parquet": lambda p: _parquet(p, {"question": [{"a": 1}], "answer": [{"b": [1]}]}),
    "binary_column.parquet": lambda p: _parquet(p, {"text": [b"\x00\x01", b"\xff"]}),
    # --- plain text ------------------------------------------------------------------
    "random_bytes.txt": _bytes(_junk(4096, 4)),
    "nul_bytes.md": _bytes(b"# title\n\x00\x00body\n"),
    "latin1.txt": _text("Le café est là.\n", "latin-1"),
    "utf16_bom.txt": _bytes("A line of text.\nAnother.\n".encode("utf-16")),
    "utf16_no_bom.md": _bytes("A line of text.\n".encode("utf-16-be")),
    "control_chars.txt": _bytes(b"\x01\x02\x1b[31mred\x1b[0m\x7f\n"),
    # --- empty and whitespace-only files, one of each extension ----------------------
    **{
        f"empty{ext}": _bytes(b"")
        for ext in (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".txt", ".md", ".parquet")
    },
    **{
        f"whitespace{ext}": _bytes(b" \n\t\r\n  \n")
        for ext in (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".txt", ".md", ".parquet")
    },
    # --- paths that are not data files -----------------------------------------------
    "unsupported.xlsx": _bytes(b"PK\x03\x04" + _junk(256, 5)),
    "no_extension": _bytes(_jsonl(QA)),
    "only_unsupported_files": _mkdir({"a.xlsx": b"PK", "b.docx": b"PK", "c.pdf": b"%PDF"}),
    "only_hidden_files": _mkdir({".a.jsonl": _jsonl(QA)}),
    "empty_dir": _mkdir({}),
    "dir_named.jsonl": _mkdir({}),
    "glob_*.nomatch": lambda p: None,  # a pattern that matches nothing
    "broken_symlink.jsonl": lambda p: p.symlink_to(p.parent / "nowhere" / "target.jsonl"),
    # Not regular files: opening a FIFO waits for a writer, /dev/zero never ends.
    "fifo.jsonl": lambda p: os.mkfifo(p),
    "dev_zero_link.jsonl": lambda p: p.symlink_to("/dev/zero"),
    "hf_corrupt_state": lambda p: _hf_dir(p, {"state.json": b'{"_data_files": [{"filename": '}),
    "hf_state_wrong_shape": lambda p: _hf_dir(p, {"state.json": b"[1, 2, 3]"}),
    "hf_dataset_info_junk": lambda p: _hf_dir(p, {"dataset_info.json": _junk(300, 6)}),
    "hf_arrow_truncated": lambda p: _hf_dir(p, {"data-00000-of-00001.arrow": b"ARROW1\x00\x00"}),
    "hf_corrupt_dataset_dict": lambda p: _hf_dir(p, {"dataset_dict.json": b"{nope"}, dict_of_splits=True),
    "hf_only_state_json": _mkdir({"state.json": b"{}"}),
}

# The 100 MB single lines: junk without a newline, unterminated JSON strings, one valid 100 MB record.
HUGE_CASES: dict[str, Callable[[Path], None]] = {
    "huge_junk_line.jsonl": lambda p: _write_huge(p, b""),
    "huge_unterminated.jsonl": lambda p: _write_huge(p, b'{"text": "', b"a"),
    "huge_valid_line.jsonl": lambda p: _write_huge(p, b'{"text": "', b"ab ", b'"}\n'),
    "huge_unterminated.json": lambda p: _write_huge(p, b'[{"text": "', b"a"),
    "huge_field.csv": lambda p: _write_huge(p, b"text\n", b"y"),
    "huge_junk_line.txt": lambda p: _write_huge(p, b"", b"word "),
}


def make_data_corpus(dir: Path, huge: bool = True) -> list[Path]:
    """Write every malformed data case into `dir` (created); the paths, in DATA_CASES order.

    Directories stand for directory inputs, and one path is a glob that matches nothing.
    `huge=False` leaves out the 100 MB files.
    """
    dir.mkdir(parents=True, exist_ok=True)
    cases = {**DATA_CASES, **(HUGE_CASES if huge else {})}
    paths = []
    for name, write in cases.items():
        path = dir / name
        write(path)
        paths.append(path)
    return paths


# --- config files ------------------------------------------------------------------------

_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
    for i in range(1, 10)
)

CONFIG_CASES: dict[str, Callable[[Path], None]] = {
    "invalid_yaml.yaml": _text("model: [unclosed\nlora: {r: 8\n"),
    "tabs.yaml": _text("lora:\n\tr: 8\n"),
    "top_level_list.yaml": _text("- lora\n- train\n"),
    "top_level_scalar.yaml": _text("just words\n"),
    "top_level_number.yaml": _text("5\n"),
    "wrong_types.yaml": _text("lora:\n  r: sixteen\n  alpha: [1]\ntrain:\n  lr: fast\n  batch_size: 1.5\n"),
    "sections_not_mappings.yaml": _text("lora: 5\ntrain: [1, 2]\nmodel: null\n"),
    "unknown_keys.yaml": _text("lora:\n  rank: 8\ntrain:\n  learning_rate: 0.1\n"),
    "unknown_section.yaml": _text("trainer:\n  lr: 0.1\n"),
    "many_unknown_keys.yaml": _text("lora:\n" + "".join(f"  key_{i}: {i}\n" for i in range(500))),
    "negative_and_zero.yaml": _text("lora:\n  r: -1\ntrain:\n  lr: -0.1\n  batch_size: 0\n  epochs: 0\n"),
    "infinite_and_nan.yaml": _text("train:\n  lr: .inf\n  epochs: .inf\n  max_grad_norm: .nan\n"),
    "huge_int.yaml": _text("lora:\n  r: 99999999999999999999999999999\n"),
    "huge_digits.yaml": _text("lora:\n  r: 1" + "0" * 5_000 + "\n"),
    "lora_method_nope.yaml": _text("lora:\n  method: nope\n"),
    "lora_method_huge.yaml": _text("lora:\n  method: " + "m" * 100_000 + "\n"),
    "extends_missing.yaml": _text("extends: nowhere.yaml\nlora:\n  r: 8\n"),
    "extends_cycle_a.yaml": _text("extends: extends_cycle_b.yaml\n"),
    "extends_cycle_b.yaml": _text("extends: extends_cycle_a.yaml\n"),
    "extends_self.yaml": _text("_extends: extends_self.yaml\n"),
    "extends_number.yaml": _text("extends: 5\n"),
    "extends_list_of_numbers.yaml": _text("extends: [1, 2]\n"),
    "extends_directory.yaml": _text("extends: .\n"),
    "binary_junk.yaml": _bytes(_junk(2048, 7)),
    "empty.yaml": _bytes(b""),
    "whitespace.yaml": _bytes(b"  \n\n\t\n"),
    "comments_only.yaml": _text("# nothing here\n"),
    "utf16_bom.yaml": _bytes("lora:\n  r: 8\n".encode("utf-16")),
    "utf16_no_bom.yaml": _bytes("lora:\n  r: 8\n".encode("utf-16-le")),
    "alias_bomb.yaml": _text(_BOMB + "lora:\n  targets: *a9\n"),
    "recursive_alias.yaml": _text("lora:\n  targets: &t [*t]\n"),
    "deep_nesting.yaml": _text("lora: " + "[" * DEEP + "]" * DEEP + "\n"),
    "date.yaml": _text("output:\n  name: 2024-01-01\n"),
    "binary_tag.yaml": _text("data:\n  path: !!binary aGVsbG8=\n"),
    "set_tag.yaml": _text("lora:\n  targets: !!set {q_proj, v_proj}\n"),
    "python_tag.yaml": _text("lora: !!python/object/apply:os.system ['echo pwned']\n"),
    "odd_keys.yaml": _text("1: 2\nnull: 3\ntrue: 4\n"),
    "duplicate_keys.yaml": _text("lora:\n  r: 4\nlora:\n  r: 8\n"),
    "data_path_number.yaml": _text("data:\n  path: 5\n  fields: [1, 2]\n"),
    "truncated.json": _text('{"lora": {"r": '),
    "deep_nesting.json": _text('{"lora": ' + "[" * DEEP + "]" * DEEP + "}"),
    "huge_digits.json": _text('{"lora": {"r": 1' + "0" * 5_000 + "}}"),
    "too_big.yaml": _text("# padding\n" * 300_000),
    "a_directory.yaml": _mkdir({}),
}


def make_config_corpus(dir: Path) -> list[Path]:
    """Write every malformed config case into `dir` (created); the paths, in CONFIG_CASES order."""
    dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, write in CONFIG_CASES.items():
        path = dir / name
        write(path)
        paths.append(path)
    return paths
