"""CLI commands that need no model: init, config show/schema, --help everywhere."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from smolora.cli.main import app
from smolora.config import load_config

runner = CliRunner()


def test_init_writes_a_valid_commented_config(tmp_path, qa_file):
    out = tmp_path / "my.yaml"
    r = runner.invoke(
        app, ["init", "--out", str(out), "--data", str(qa_file)], input="smollm2-135m\nanswers\n"
    )
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "# SmoLoRA run config" in text and "detected format: qa" in text
    cfg = load_config(out)
    assert cfg.data.format == "qa" and cfg.data.fields == {"prompt": "question", "response": "answer"}
    assert (cfg.train.epochs, cfg.train.lr) == ("auto", "auto")  # the schedule is picked from the data


def test_config_show_and_schema(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lora:\n  r: 4\n")
    r = runner.invoke(app, ["config", "show", str(cfg), "--set", "train.lr=0.001", "--json"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)
    assert shown["lora"]["r"] == 4 and shown["train"]["lr"] == 0.001
    r = runner.invoke(app, ["config", "schema"])
    assert r.exit_code == 0 and '"properties"' in r.output


def all_commands(group=None, prefix=()):
    import typer.main

    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a sub-group
            yield from all_commands(cmd, (*prefix, name))
        else:
            yield [*prefix, name]


def test_core_commands_registered():
    names = {" ".join(c) for c in all_commands()}
    assert {
        "train",
        "generate",
        "chat",
        "eval",
        "data inspect",
        "config show",
        "config schema",
        "init",
    } <= names


@pytest.mark.parametrize("cmd", list(all_commands()), ids=" ".join)
def test_every_command_has_help_with_an_example(cmd):
    r = runner.invoke(app, [*cmd, "--help"])
    assert r.exit_code == 0
    assert "Example:" in r.output
