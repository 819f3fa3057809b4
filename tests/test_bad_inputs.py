"""Every malformed data or config file ends in a success or a DatasetError / ConfigError naming it.

The corpus (tests/bad_inputs.py: truncated JSON, wrong types, binary junk, wrong encodings,
100 MB single lines, ragged CSV, broken parquet and saved datasets, alias bombs, extends
cycles...) is written once per session. Each data file goes through every entry point a user
hits: `read_records`, the examples pipeline (`load_examples`: read, detect_format, to_examples,
clean), the streaming reader (`prepare_stream`, every row of one pass) and `smolora data
inspect`; each config through `load_config` and `smolora train`. Any other exception is a bug,
and so is a message that echoes a 100 MB line.

Run as:
    pytest -q tests/test_bad_inputs.py
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bad_inputs import CONFIG_CASES, DATA_CASES, HUGE_CASES, make_config_corpus, make_data_corpus
from helpers import smolora_main
from smolora.config import DataSection, load_config
from smolora.data import read_records
from smolora.data.encode import load_examples
from smolora.data.stream import prepare_stream
from smolora.errors import ConfigError, DatasetError

MAX_MESSAGE = 500  # characters in one error message: a file name and what to do, never the data

# What reading must give for some cases (a substring of the error; None: it loads). The rest only
# have to end in a DatasetError naming the file, or load.
EXPECTED_READ = {
    "truncated_object.jsonl": "truncated_object.jsonl:2: not valid JSON",
    "truncated_string.jsonl": "truncated_string.jsonl:1: not valid JSON (Unterminated string starting at column",
    "top_level_list_of_numbers.jsonl": "expected a JSON object per line, got a list",
    "huge_integer.jsonl": "huge_integer.jsonl:1: cannot read this JSON",
    "lone_surrogate.jsonl": "lone_surrogate.jsonl:1: holds a lone UTF-16 surrogate",
    "deep_nesting.jsonl": "deep_nesting.jsonl:1: cannot read this JSON",
    "invalid_utf8.jsonl": "invalid_utf8.jsonl:2: not UTF-8 text",
    "utf16_no_bom.jsonl": "NUL bytes",
    "gzip_named.jsonl": "not UTF-8 text",
    "data_is_number.json": "expected a list of objects",
    "deep_nesting.json": "RecursionError",
    "ragged_long_rows.csv": "ragged_long_rows.csv:3: not valid CSV",
    "header_only.csv": "no rows",
    "zero_rows.parquet": "no records",
    "truncated.parquet": "could not read (ArrowInvalid",
    "empty.jsonl": "empty file",
    "whitespace.csv": "empty file",
    "only_unsupported_files": "directory holds no data files",
    "glob_*.nomatch": "the pattern matched no files",
    "hf_corrupt_state": "could not read",
    "fifo.jsonl": "fifo.jsonl: a FIFO (named pipe), not a regular file",
    "dev_zero_link.jsonl": "dev_zero_link.jsonl: a device, not a regular file",
    "huge_junk_line.jsonl": "huge_junk_line.jsonl:1: a record of 100 MiB above the limit of 16 MiB",
    "huge_unterminated.jsonl": "huge_unterminated.jsonl:1: a record of 100 MiB",
    "huge_valid_line.jsonl": "huge_valid_line.jsonl:1: a record of 100 MiB",
    "huge_unterminated.json": "not valid JSON (Unterminated string",
    "huge_field.csv": "huge_field.csv:2: a record of 100 MiB",
    "huge_junk_line.txt": "data.text_mode=lines",
    "utf16_bom.jsonl": None,
    "utf8_bom.jsonl": None,
    "crlf_lines.jsonl": None,
    "utf16_bom.csv": None,
    "wrong_types_alpaca.jsonl": None,
    "duplicate_headers.csv": None,
}


@pytest.fixture(scope="session")
def data_corpus(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """name -> path of every data case, the 100 MB files included: written once per session."""
    paths = make_data_corpus(tmp_path_factory.mktemp("bad-data") / "corpus")
    yield {p.name: p for p in paths}
    for name in HUGE_CASES:  # pytest keeps the last three temp dirs: not 600 MB each
        (paths[0].parent / name).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def config_corpus(tmp_path_factory) -> dict[str, Path]:
    paths = make_config_corpus(tmp_path_factory.mktemp("bad-config") / "corpus")
    return {p.name: p for p in paths}


def outcome(load: Callable[[], object], path: Path, error: type[Exception] = DatasetError) -> str | None:
    """None when `load` succeeds; the message when it raises `error` (anything else propagates)."""
    try:
        load()
    except error as e:
        message = str(e)
    else:
        return None
    assert path.name in message, f"the message does not name the file: {message[:MAX_MESSAGE]}"
    return message


def check_data_message(message: str | None) -> None:
    if message is not None:
        assert len(message) <= MAX_MESSAGE, f"{len(message)} characters: {message[:MAX_MESSAGE]}..."
        assert "\n" not in message, message


def stream_all(path: Path, tokenizer, text_mode: str) -> int:
    """Rows of one pass of the streamed, tokenized dataset, the way training would read it."""
    cfg = load_config(
        None,
        [f"data.path={path}", "data.streaming=true", "train.max_steps=1", f"data.text_mode={text_mode}"],
    )
    return sum(1 for _ in prepare_stream(cfg, tokenizer, repeat=False).train)


def run_cli(*args: str) -> tuple[int, str]:
    """`smolora ARGS` as the console script runs it: (exit code, stderr)."""
    return smolora_main(*args, stderr_only=True)


def check_cli_error(code: int, stderr: str, name: str, one_line: bool = True) -> None:
    if code == 0:
        return
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert stderr.startswith("error: ") and name in stderr, stderr[:MAX_MESSAGE]
    if one_line:
        assert len(stderr.strip().splitlines()) == 1, stderr[:2000]
        assert len(stderr.strip()) <= MAX_MESSAGE + len("error: "), stderr[:MAX_MESSAGE]


DATA_NAMES = [*DATA_CASES, *HUGE_CASES]


def test_the_corpus_is_big_enough():
    assert len(DATA_NAMES) >= 50 and len(CONFIG_CASES) >= 20
    assert set(EXPECTED_READ) <= set(DATA_NAMES)


@pytest.mark.parametrize("name", DATA_NAMES)
def test_read_records(name, data_corpus):
    path = data_corpus[name]
    message = outcome(lambda: read_records(str(path)), path)
    check_data_message(message)
    if name in EXPECTED_READ:
        expected = EXPECTED_READ[name]
        assert message is None if expected is None else expected in (message or ""), message


@pytest.mark.parametrize("name", DATA_NAMES)
@pytest.mark.parametrize("text_mode", ["whole", "lines"])
def test_examples_pipeline(name, text_mode, data_corpus):
    """load_examples: read_records -> detect_format -> to_examples -> clean_examples."""
    path = data_corpus[name]
    data = DataSection(text_mode=text_mode)
    check_data_message(outcome(lambda: load_examples(str(path), data), path))


@pytest.mark.parametrize("name", DATA_NAMES)
@pytest.mark.parametrize("text_mode", ["whole", "lines"])
def test_streaming_reader(name, text_mode, data_corpus, tiny_tokenizer):
    path = data_corpus[name]
    check_data_message(outcome(lambda: stream_all(path, tiny_tokenizer, text_mode), path))


@pytest.mark.parametrize("name", DATA_NAMES)
def test_cli_data_inspect(name, data_corpus, tiny_model_dir):
    code, stderr = run_cli("data", "inspect", str(data_corpus[name]), "--set", f"model.name={tiny_model_dir}")
    check_cli_error(code, stderr, name)


@pytest.mark.parametrize("name", list(CONFIG_CASES))
def test_load_config(name, config_corpus):
    path = config_corpus[name]
    message = outcome(lambda: load_config(path), path, ConfigError)
    if message is not None:  # validation lists every problem, one a line (at most 10 of them)
        assert len(message) <= 4 * MAX_MESSAGE, message[: 4 * MAX_MESSAGE]
        assert all(len(line) <= MAX_MESSAGE for line in message.splitlines()), message[: 4 * MAX_MESSAGE]


@pytest.mark.parametrize("name", list(CONFIG_CASES))
def test_cli_train_stops_at_the_config(name, config_corpus, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a bad config reached training (and the model load)")

    monkeypatch.setattr("smolora.train.recipe.train", no_training)
    code, stderr = run_cli("train", str(config_corpus[name]))
    assert code == 2, stderr[-2000:]  # a config that loads has no data.path: that stops it too
    check_cli_error(code, stderr, "", one_line=False)


def test_specific_config_messages(config_corpus):
    def message(name: str) -> str:
        with pytest.raises(ConfigError) as info:
            load_config(config_corpus[name])
        return str(info.value)

    assert "alias bomb" in message("alias_bomb.yaml")
    assert "refers to itself" in message("recursive_alias.yaml")
    assert "extends 'nowhere.yaml', which does not exist" in message("extends_missing.yaml")
    assert "extends cycle" in message("extends_cycle_a.yaml")
    assert "extends must name a config file" in message("extends_number.yaml")
    assert "unknown method" in message("lora_method_nope.yaml")
    assert "... and 490 more" in message("many_unknown_keys.yaml")
    assert "finite number" in message("infinite_and_nan.yaml")
    assert "not a file" in message("a_directory.yaml")
    # Loads: defaults, a UTF-16 file with its BOM, a !!set as a list, a YAML date as the text it looks like.
    assert load_config(config_corpus["empty.yaml"]).lora.r == 16
    assert load_config(config_corpus["utf16_bom.yaml"]).lora.r == 8
    assert load_config(config_corpus["set_tag.yaml"]).lora.targets == ["q_proj", "v_proj"]
    assert load_config(config_corpus["date.yaml"]).output.name == "2024-01-01"
    assert "a bytes value" in message("binary_tag.yaml")


def test_a_stream_with_nothing_to_train_on_stops_before_training(data_corpus, tiny_tokenizer):
    """Records that all clean away used to make the endless stream loop without a batch: a hang."""
    path = data_corpus["null_fields.jsonl"]
    cfg = load_config(None, [f"data.path={path}", "data.streaming=true", "train.max_steps=1"])
    with pytest.raises(DatasetError, match="give no trainable example"):
        prepare_stream(cfg, tiny_tokenizer)  # repeat=True, as training reads it


def test_streaming_names_utf16_and_long_lines(data_corpus, tiny_tokenizer):
    with pytest.raises(DatasetError, match="UTF-16 text; streaming reads UTF-8 only"):
        stream_all(data_corpus["utf16_bom.jsonl"], tiny_tokenizer, "whole")
    with pytest.raises(DatasetError, match=r"\(byte 0\): a record above the limit of 16 MiB"):
        stream_all(data_corpus["huge_valid_line.jsonl"], tiny_tokenizer, "whole")
