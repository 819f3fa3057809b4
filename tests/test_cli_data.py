"""`smolora data inspect` through the real CLI: each shape detected, bad input as one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SHAPES = {
    "text": [{"text": "A plain sentence about rivers."}],
    "alpaca": [{"instruction": "Add one", "input": "2", "output": "3"}],
    "qa": [{"question": "What is 2 plus one?", "answer": "3"}],
    "sharegpt": [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}],
    "messages": [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    ],
}


def inspect(tiny_model_dir, *files):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "smolora.cli.main",
            "data",
            "inspect",
            *map(str, files),
            "--set",
            f"model.name={tiny_model_dir}",
            "--examples",
            "1",
        ],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_inspect_shows_detected_shape(shape, tiny_model_dir, tmp_path):
    f = tmp_path / f"{shape}.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in SHAPES[shape] * 3) + "\n")
    r = inspect(tiny_model_dir, f)
    assert r.returncode == 0, r.stderr
    assert f'"{shape}"' in r.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"question": "a", "answer": "b"}\n{"question": "c", "answer": \n', "bad.jsonl:2"),
        ('{"foo": 1, "bar": 2}\n', "found fields"),
        ("", "empty"),
    ],
)
def test_bad_input_is_one_line_exit_2(content, expected, tiny_model_dir, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    r = inspect(tiny_model_dir, f)
    assert r.returncode == 2
    assert expected in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3  # one message (rich may wrap a long line)
