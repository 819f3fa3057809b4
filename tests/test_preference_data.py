"""Preference data (data/preference.py) and its inspection: every shape detected, data.fields, bad rows as
one-line errors naming file and record, and `smolora data inspect` on pairs (counts, lengths, dropped rows)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from smolora.config import load_config
from smolora.data import inspect_data
from smolora.data.preference import load_preference
from smolora.errors import DatasetError


def config(objective: str, *extra: str):
    rewards = ["train.rewards=[exact_match]"] if objective == "grpo" else []
    return load_config(None, [f"train.objective={objective}", *rewards, *extra])


def data_cfg(objective: str, *extra: str):
    return config(objective, *extra).data


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def turns(user: str, answer: str, keys=("role", "content"), names=("user", "assistant")) -> list[dict]:
    return [{keys[0]: names[0], keys[1]: user}, {keys[0]: names[1], keys[1]: answer}]


STRING_PAIRS = [
    {"prompt": f"Add {i} and one", "chosen": f"It is {i + 1}.", "rejected": "No idea."} for i in range(3)
]


def test_string_pairs(tmp_path):
    examples, shape, mapping = load_preference(
        write(tmp_path / "p.jsonl", STRING_PAIRS), data_cfg("dpo"), "dpo"
    )
    assert shape == "pairs"
    assert mapping == {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "dropped": "0"}
    assert examples[1] == {
        "prompt": [{"role": "user", "content": "Add 1 and one"}],
        "chosen": "It is 2.",
        "rejected": "No idea.",
    }


@pytest.mark.parametrize(
    ("keys", "names"), [(("role", "content"), ("user", "assistant")), (("from", "value"), ("human", "gpt"))]
)
def test_message_list_pairs_take_their_prompt_from_the_conversation(tmp_path, keys, names):
    # Anthropic HH / UltraFeedback: chosen and rejected are whole conversations sharing their first turns.
    rows = [{"chosen": turns("Hi", "Hello!", keys, names), "rejected": turns("Hi", "Go away", keys, names)}]
    examples, shape, _ = load_preference(write(tmp_path / "hh.jsonl", rows * 2), data_cfg("orpo"), "orpo")
    assert shape == "pairs"
    assert examples[0] == {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": "Hello!",
        "rejected": "Go away",
    }


def test_message_list_pairs_keep_their_user_turn_under_a_system_prompt(tmp_path):
    # Regression: a system prompt (data.system_prompt or a system column) once became the whole prompt,
    # and every such pair was dropped as "empty prompt".
    rows = [{"chosen": turns("Hi", "Hello!"), "rejected": turns("Hi", "Go away"), "system": "Be kind."}]
    examples, _, _ = load_preference(write(tmp_path / "hh.jsonl", rows), data_cfg("dpo"), "dpo")
    assert examples[0]["prompt"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
    ]
    rows = [{k: v for k, v in rows[0].items() if k != "system"}]
    examples, _, _ = load_preference(
        write(tmp_path / "hh2.jsonl", rows), data_cfg("dpo", "data.system_prompt=Be brief."), "dpo"
    )
    assert [m["role"] for m in examples[0]["prompt"]] == ["system", "user"]


def test_kto_rows_and_pairs_read_as_kto(tmp_path):
    labels = ["true", "false", "yes", "0", True, 1]
    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "label": lab} for i, lab in enumerate(labels)]
    examples, shape, _ = load_preference(write(tmp_path / "k.jsonl", rows), data_cfg("kto"), "kto")
    assert shape == "kto"
    assert [ex["label"] for ex in examples] == [True, False, True, False, True, True]
    # pairs: each gives a good row (chosen) and a bad one (rejected)
    examples, _, _ = load_preference(write(tmp_path / "p.jsonl", STRING_PAIRS), data_cfg("kto"), "kto")
    assert [(ex["completion"], ex["label"]) for ex in examples[:2]] == [
        ("It is 1.", True),
        ("No idea.", False),
    ]


def test_prompts_hand_the_other_columns_to_the_rewards(tmp_path):
    rows = [{"question": "2+2?", "answer": "4", "difficulty": 1}]
    examples, shape, mapping = load_preference(write(tmp_path / "g.jsonl", rows), data_cfg("grpo"), "grpo")
    assert shape == "prompts" and mapping["prompt"] == "question"
    assert examples[0] == {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "columns": {"answer": "4", "difficulty": 1},
    }


def test_data_fields_map_other_column_names(tmp_path):
    rows = [{"q": "Hi", "better": "Hello", "worse": "Bye"}]
    path = write(tmp_path / "f.jsonl", rows)
    with pytest.raises(DatasetError, match=r"f\.jsonl: pairs data needs fields .*data\.fields"):
        load_preference(path, data_cfg("dpo"), "dpo")
    fields = ["data.fields.prompt=q", "data.fields.chosen=better", "data.fields.rejected=worse"]
    examples, _, mapping = load_preference(path, data_cfg("dpo", *fields), "dpo")
    assert (mapping["chosen"], examples[0]["rejected"]) == ("better", "Bye")


BAD_ROWS = {
    "number list": ({"prompt": "p", "chosen": [1, 2], "rejected": "b"}, "pairs"),
    "no assistant at the end": ({"chosen": [{"role": "user", "content": "x"}], "rejected": "b"}, "pairs"),
    "label": ({"prompt": "p", "completion": "c", "label": "maybe"}, "kto"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_row_is_one_line_naming_file_and_record(tmp_path, case):
    bad, shape = BAD_ROWS[case]
    good = STRING_PAIRS[0] if shape == "pairs" else {"prompt": "p", "completion": "c", "label": True}
    path = write(tmp_path / "bad.jsonl", [good, bad])
    objective = "kto" if shape == "kto" else "dpo"
    with pytest.raises(DatasetError) as e:
        load_preference(path, data_cfg(objective), objective)
    assert f"bad.jsonl: record 2: cannot read it as {shape}" in str(e.value)
    assert "\n" not in str(e.value)


FLAGGED = [
    STRING_PAIRS[0],
    {"prompt": "Same?", "chosen": "yes", "rejected": " yes "},  # record 2: chosen == rejected
    {"prompt": "", "chosen": "a", "rejected": "b"},  # record 3: empty prompt
    {"prompt": "Empty?", "chosen": "a", "rejected": ""},  # record 4: empty rejected
    STRING_PAIRS[1],
]


def test_rows_that_teach_nothing_are_dropped_and_counted(tmp_path):
    examples, _, mapping = load_preference(write(tmp_path / "p.jsonl", FLAGGED), data_cfg("dpo"), "dpo")
    assert len(examples) == 2 and mapping["dropped"] == "3"


def test_inspect_reads_a_pairs_file_by_itself(tmp_path, tiny_tokenizer):
    path = write(tmp_path / "p.jsonl", FLAGGED)
    cfg = load_config(None, ["data.max_length=20"])  # objective sft: chosen/rejected columns say dpo
    report = inspect_data(path, cfg, tiny_tokenizer, n_examples=1)
    assert report["format"] == "pairs" and report["objective"].startswith("dpo (auto")
    assert report["counts"] == {"records": 5, "rows": 5, "kept": 2, "dropped": 3}
    assert [(f["record"], f["problems"]) for f in report["flagged"]] == [
        (2, ["chosen == rejected"]),
        (3, ["empty prompt"]),
        (4, ["empty rejected"]),
    ]
    assert set(report["part_lengths"]) == {"prompt", "chosen", "rejected"}
    n_chosen = len(tiny_tokenizer("It is 1.", add_special_tokens=False)["input_ids"])
    assert report["part_lengths"]["chosen"]["max"] == n_chosen
    assert report["part_lengths"]["prompt"]["max"] > report["part_lengths"]["chosen"]["max"]  # the template
    assert report["lengths"]["max"] > 20 and report["truncated"] > 0  # prompt + answer past max_length
    assert report["example_labels"] == ["record 1: chosen", "record 1: rejected"]
    assert any("records 2, 3, 4" in w for w in report["warnings"])
    assert any("data.max_length=20" in w for w in report["warnings"])


def test_inspect_follows_train_objective(tmp_path, tiny_tokenizer):
    path = write(tmp_path / "p.jsonl", STRING_PAIRS)
    report = inspect_data(path, config("kto"), tiny_tokenizer)
    assert report["format"] == "kto" and report["counts"]["good"] == report["counts"]["bad"] == 3
    assert set(report["part_lengths"]) == {"prompt", "completion"}
    report = inspect_data(path, config("grpo"), tiny_tokenizer, n_examples=1)
    assert report["format"] == "prompts" and report["example_labels"] == ["record 1: prompt"]
    with pytest.raises(DatasetError, match=r"record 2: cannot read it as pairs"):
        inspect_data(
            write(tmp_path / "b.jsonl", [STRING_PAIRS[0], BAD_ROWS["number list"][0]]),
            load_config(None, []),
            tiny_tokenizer,
        )


def inspect_cli(tiny_model_dir, path, *extra):
    args = ["data", "inspect", str(path), "--set", f"model.name={tiny_model_dir}", "--examples", "1", *extra]
    return subprocess.run([sys.executable, "-m", "smolora.cli.main", *args], capture_output=True, text=True)


def test_cli_inspect_lists_the_dropped_rows(tiny_model_dir, tmp_path):
    r = inspect_cli(tiny_model_dir, write(tmp_path / "p.jsonl", FLAGGED), "--set", "train.objective=simpo")
    assert r.returncode == 0, r.stderr
    assert '"pairs"' in r.stdout and "simpo (train.objective)" in r.stdout
    assert "dropped: record 2: chosen == rejected" in r.stdout
    assert "dropped: record 4: empty rejected" in r.stdout
    assert "record 1: rejected" in r.stdout  # the rendered examples, one per answer
    bad = write(tmp_path / "bad.jsonl", [STRING_PAIRS[0], BAD_ROWS["no assistant at the end"][0]])
    r = inspect_cli(tiny_model_dir, bad)
    assert r.returncode == 2 and "bad.jsonl: record 2: cannot read it as pairs" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3
