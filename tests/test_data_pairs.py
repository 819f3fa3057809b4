"""`smolora data pairs DATA --run RUN`: preference pairs from an SFT file (reference chosen, the run's sample
rejected), through the real CLI and in process; the output is dpo data; written atomically; hostile input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from helpers import write_qa
from smolora.config import load_config
from smolora.data.preference import load_preference
from smolora.errors import SmoLoRAError
from smolora.eval import pairs as pairs_mod
from smolora.eval.pairs import build_pairs, default_out, pair_rows


def pairs_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smolora.cli.main", "data", "pairs", *args], capture_output=True, text=True
    )


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_end_to_end_with_every_flag(tiny_run, tmp_path):
    data = write_qa(tmp_path / "qa.jsonl", 12)
    out = tmp_path / "sub" / "pairs.jsonl"
    r = pairs_cli(
        str(data),
        "--run",
        str(tiny_run),
        "--out",
        str(out),
        "--max-examples",
        "8",
        "--temperature",
        "0.7",
        "--max-new-tokens",
        "3",
        "--seed",
        "7",
        "--set",
        "data.system_prompt=Be brief.",
    )
    assert r.returncode == 0, r.stderr
    assert "rows read" in r.stdout and "pairs written" in r.stdout and "model gave the reference" in r.stdout
    assert "temperature 0.7, 3 new tokens, seed 7" in r.stdout
    rows = lines(out)
    assert 0 < len(rows) <= 8
    assert rows[0]["prompt"] == "What is 0 plus one?" and rows[0]["chosen"] == "It is 1."
    assert all(row["system"] == "Be brief." and row["rejected"].strip() for row in rows)
    # ready for train.objective=dpo
    examples, shape, _ = load_preference(str(out), load_config(None, ["train.objective=dpo"]).data, "dpo")
    assert shape == "pairs" and len(examples) == len(rows)
    assert [m["role"] for m in examples[0]["prompt"]] == ["system", "user"]


def test_cli_default_out_beside_the_data(tiny_run, tmp_path):
    data = write_qa(tmp_path / "qa.jsonl", 4)
    r = pairs_cli(str(data), "-r", str(tiny_run), "--max-new-tokens", "2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "qa.pairs.jsonl").is_file()
    assert f"--set model.adapter={tiny_run}" in r.stdout.replace("\n", "")  # how to train on it


def test_default_out_names():
    assert default_out("data/train.jsonl").as_posix() == "data/train.pairs.jsonl"
    assert default_out("train.jsonl.gz").as_posix() == "train.pairs.jsonl"
    with pytest.raises(SmoLoRAError, match="--out"):
        default_out("data/*.jsonl")


def pairs_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`smolora data pairs ARGS` in this process, through main() and its error handling (exit codes)."""
    from smolora.cli.main import main

    monkeypatch.setattr(sys, "argv", ["smolora", "data", "pairs", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_hostile_input_is_one_line_exit_2(tiny_run, tmp_path, monkeypatch, capsys):
    data = write_qa(tmp_path / "qa.jsonl", 4)
    before = data.read_bytes()
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    link = tmp_path / "link.jsonl"
    link.symlink_to(data)
    cases = [
        ([str(data), "--run", str(tiny_run), "--out", str(data)], "is the input data itself"),
        ([str(data), "--run", str(tiny_run), "-o", str(link)], "is the input data itself"),
        ([str(data), "--run", str(tiny_run), "--out", str(tmp_path)], "is a directory"),
        ([str(fifo), "--run", str(tiny_run), "--out", str(tmp_path / "o.jsonl")], "FIFO"),
        ([str(data), "--run", str(tmp_path / "nope")], "is not a run directory"),
        ([str(tmp_path / "missing.jsonl"), "--run", str(tiny_run)], "no such file"),
        ([str(data), "--run", str(tiny_run), "--temperature", "-1"], "temperature"),
        ([str(data), "--run", str(tiny_run), "--max-examples", "0"], "max-examples"),
    ]
    for args, expected in cases:
        code, _, err = pairs_main(monkeypatch, capsys, *args)
        assert code == 2, (args, err)
        assert expected in err, (args, err)
        assert "Traceback" not in err
    assert data.read_bytes() == before and link.is_symlink()
    assert not list(tmp_path.glob("*.pairs.jsonl")) and not (tmp_path / "o.jsonl").exists()


def test_multi_turn_prompts_stay_message_lists(tiny_run, tmp_path, monkeypatch, capsys):
    chat = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "And you?"},
        {"role": "assistant", "content": "Fine, thanks."},
    ]
    one = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in (chat, one)))
    monkeypatch.setattr(pairs_mod, "sample_answers", lambda *a: [" fine,  THANKS. "] * 2)
    code, out, _ = pairs_main(monkeypatch, capsys, str(data), "--run", str(tiny_run))
    assert code == 0
    assert re.search(r"skipped: model gave the reference\s*│\s*1\b", out)  # the chat: case and spaces aside
    (row,) = lines(tmp_path / "chat.pairs.jsonl")
    assert row == {"prompt": "Q", "chosen": "A", "rejected": " fine,  THANKS. "}
    monkeypatch.setattr(pairs_mod, "sample_answers", lambda *a: ["Not fine."] * 2)
    code, out, _ = pairs_main(monkeypatch, capsys, str(data), "--run", str(tiny_run))
    assert code == 0 and len(lines(tmp_path / "chat.pairs.jsonl")) == 2
    first = lines(tmp_path / "chat.pairs.jsonl")[0]
    assert first["system"] == "Be kind."  # the earlier turns stay the prompt, as a message list
    assert [m["content"] for m in first["prompt"]] == ["Hi", "Hello", "And you?"]
    dpo = load_config(None, ["train.objective=dpo"]).data
    examples, _, _ = load_preference(str(tmp_path / "chat.pairs.jsonl"), dpo, "dpo")
    assert [m["role"] for m in examples[0]["prompt"]] == ["system", "user", "assistant", "user"]


def test_pairs_keep_only_answers_that_differ():
    pairs = [
        {"messages": [{"role": "user", "content": q}], "reference": ref, "domain": None}
        for q, ref in [("a", "Paris."), ("b", "It is 4."), ("c", "x")]
    ]
    rows, skipped = pair_rows(pairs, ["  paris. ", "It is 5.", "  "])
    assert skipped == {"same": 1, "empty_answer": 1}
    assert rows == [{"prompt": "b", "chosen": "It is 4.", "rejected": "It is 5."}]


def test_seeded_and_batched(tiny_run, tmp_path, generate_calls):
    data = write_qa(tmp_path / "qa.jsonl", 7)
    overrides = ["eval.batch_size=3"]
    a = build_pairs(tiny_run, str(data), tmp_path / "a.jsonl", seed=3, max_new_tokens=4, overrides=overrides)
    assert {c["max_new_tokens"] for c in generate_calls} == {4}
    assert all(c["do_sample"] and c["temperature"] == 1.0 for c in generate_calls)
    assert max(len(c["input_ids"]) for c in generate_calls) == 3  # batches of eval.batch_size
    b = build_pairs(tiny_run, str(data), tmp_path / "b.jsonl", seed=3, max_new_tokens=4, overrides=overrides)
    c = build_pairs(tiny_run, str(data), tmp_path / "c.jsonl", seed=4, max_new_tokens=4, overrides=overrides)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert (tmp_path / "a.jsonl").read_text() != (tmp_path / "c.jsonl").read_text()
    assert a["counts"]["read"] == b["counts"]["prompts"] == 7 and c["seed"] == 4
    assert a["counts"]["pairs"] + a["counts"]["same"] + a["counts"]["empty_answer"] == 7


def test_a_failure_midway_leaves_no_file(tiny_run, tmp_path, monkeypatch):
    data = write_qa(tmp_path / "qa.jsonl", 4)
    out = tmp_path / "pairs.jsonl"

    def broken(*args, **kw):
        raise RuntimeError("sampling failed")

    monkeypatch.setattr(pairs_mod, "sample_answers", broken)
    with pytest.raises(RuntimeError):
        build_pairs(tiny_run, str(data), out, max_new_tokens=2)
    assert not out.exists()
    monkeypatch.undo()
    out.write_text("old pairs\n")

    def no_sync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", no_sync)  # the write fails after the text is half on its way
    with pytest.raises(OSError):
        build_pairs(tiny_run, str(data), out, max_new_tokens=2)
    assert out.read_text() == "old pairs\n"  # the old file whole, no temp file beside it
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["pairs.jsonl", "qa.jsonl"]


def test_text_data_has_no_pairs(tiny_run, tmp_path):
    data = tmp_path / "text.jsonl"
    data.write_text(json.dumps({"text": "Just some prose."}) + "\n")
    with pytest.raises(SmoLoRAError, match="no prompt/answer examples"):
        build_pairs(tiny_run, str(data), tmp_path / "o.jsonl")
