"""Config: inheritance, overrides, and every validation error listed at once."""

from __future__ import annotations

import json

import pytest

from smolora.config import build_config, config_schema, load_config, save_config
from smolora.errors import ConfigError


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_and_name_from_file(tmp_path):
    cfg = load_config(write(tmp_path / "my-run.yaml", "data:\n  path: d.jsonl\n"))
    assert cfg.model.name == "smollm2-135m"
    assert cfg.output.name == "my-run"
    assert cfg.lora.r == 16 and cfg.train.lr == "auto" and cfg.train.epochs == "auto"


def test_extends_relative_to_including_file_and_child_wins(tmp_path):
    (tmp_path / "base").mkdir()
    write(tmp_path / "base" / "base.yaml", "train:\n  lr: 1.0e-3\n  epochs: 3\nlora:\n  r: 4\n")
    child = write(tmp_path / "child.yaml", "extends: base/base.yaml\ntrain:\n  epochs: 1\n")
    cfg = load_config(child)
    assert cfg.train.lr == 1e-3 and cfg.train.epochs == 1 and cfg.lora.r == 4


def test_seed_style_underscore_extends_and_json(tmp_path):
    write(tmp_path / "base.json", json.dumps({"lora": {"r": 8}}))
    cfg = load_config(write(tmp_path / "c.yaml", "_extends: base.json\n"))
    assert cfg.lora.r == 8


def test_extends_cycle_detected(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_overrides_coerce_types(tmp_path):
    cfg = load_config(
        None,
        [
            "train.lr=1e-4",
            "train.max_steps=7",
            "model.drop_layers=[1, 2]",
            "data.path=x.jsonl",
            "model.gradient_checkpointing=true",
        ],
    )
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.max_steps == 7
    assert cfg.model.drop_layers == [1, 2]
    assert cfg.model.gradient_checkpointing is True


def test_every_problem_reported_at_once_with_paths():
    with pytest.raises(ConfigError) as e:
        build_config(
            {
                "train": {"lr": -1, "batch_sise": 4},
                "model": {"load_in_4bit": True, "load_in_8bit": True},
                "lora": {"r": 0},
            }
        )
    msg = str(e.value)
    assert "4 problem(s)" in msg
    assert "train.lr" in msg
    assert "train.batch_sise: unknown key (did you mean 'batch_size'?)" in msg
    assert "exclusive" in msg
    assert "lora.r" in msg
    # The same problems as data, for the UI's form: no parsing the message back.
    problems = {p["loc"]: p["msg"] for p in e.value.problems}
    assert list(problems) == ["model", "lora.r", "train.lr", "train.batch_sise"]
    assert problems["train.batch_sise"] == "unknown key (did you mean 'batch_size'?)"
    assert problems["lora.r"] == "Input should be greater than or equal to 1 (got 0)"


def test_all_problems_are_data_while_the_message_shows_the_first_ten():
    with pytest.raises(ConfigError) as e:
        build_config({f"x{i}": 1 for i in range(14)})
    assert len(e.value.problems) == 14
    assert str(e.value).splitlines()[-1] == "  ... and 4 more" and "14 problem(s)" in str(e.value)


def test_method_literal_names_every_method_and_only_those():
    from typing import get_args

    from smolora.config import MethodName
    from smolora.model.adapters import METHODS

    assert set(get_args(MethodName)) == set(METHODS)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["lora.method=dorra"])
    assert e.value.problems == [
        {
            "loc": "lora.method",
            "msg": "unknown method (did you mean 'dora'?); known: lora, rslora, dora, pissa, olora, full, "
            "freeze (got 'dorra')",
        }
    ]
    with pytest.raises(ConfigError, match="lora.method: Input should be a valid string"):
        load_config(None, ["lora.method=3"])


def test_unknown_section_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="unknown key"):
        build_config({"trian": {}})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.lr"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "train: [1, 2\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_save_round_trip_and_schema(tmp_path):
    cfg = load_config(None, ["data.path=[a.jsonl, b.jsonl]", "lora.targets=[q_proj, v_proj]"])
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert again.to_dict() == cfg.to_dict()
    schema = config_schema()
    assert set(schema["properties"]) == {"model", "data", "lora", "train", "eval", "output"}


def test_keys_hypothesis_found_give_one_line_problems():
    """A key named like pydantic's union tags (`literal[`) crashed; one holding a newline split the line."""
    with pytest.raises(ConfigError, match=r"literal\[: unknown key"):
        build_config({"literal[": 1})
    with pytest.raises(ConfigError) as e:
        build_config({"train": {"a\nb": 1, "c\rd": 2}})
    assert len(str(e.value).splitlines()) == 3 and "a\\nb: unknown key" in str(e.value)
