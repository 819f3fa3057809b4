"""Sampling works everywhere it can be asked for: `smolora generate --sample`, `SmoLoRA.generate
(do_sample=True)` and the UI chat at a temperature above 0 all once died with `TypeError: got
multiple values for keyword argument 'do_sample'`. One helper, `sampling_kwargs`, builds the
decoding arguments for all three now.

The effect checks use the tiny random model with its own output head (`chatty_model_dir`: with
the embeddings tied, a random model only echoes the template's last newline, so every greedy
answer would be empty). At temperature 50 sampling is near uniform over 300 tokens, so 12
sampled tokens match the greedy ones with probability ~0 (seeds are fixed anyway); top_p close
to 0 keeps only the most likely token, which is greedy.

Run as:
    pytest -q tests/test_sampling.py
"""

from __future__ import annotations

import sys

import pytest
import torch
from typer.testing import CliRunner

from helpers import json_rows
from smolora.cli.main import app
from smolora.errors import ConfigError
from smolora.generate import sampling_kwargs

runner = CliRunner()
PROMPTS = ["What is 3 plus one?", "Write a haiku about rivers and the sea."]


def cli_generate(chatty_model_dir, *flags: str) -> list[str]:
    torch.manual_seed(0)
    r = runner.invoke(
        app, ["generate", str(chatty_model_dir), *PROMPTS, "--max-new-tokens", "12", "--json", *flags]
    )
    assert r.exit_code == 0, r.output
    return [row["output"] for row in json_rows(r.output)]


def test_cli_generate_sample_and_temperature(chatty_model_dir):
    greedy = cli_generate(chatty_model_dir)
    assert len(greedy) == 2 and all(greedy)
    assert cli_generate(chatty_model_dir, "--sample", "--temperature", "50") != greedy
    # --temperature only matters with --sample, and a temperature of 0 is greedy
    assert cli_generate(chatty_model_dir, "--temperature", "50") == greedy
    assert cli_generate(chatty_model_dir, "--sample", "--temperature", "0") == greedy


def test_cli_generate_bad_temperature_is_one_line_exit_2(chatty_model_dir, monkeypatch, capsys):
    from smolora.cli.main import main

    argv = ["smolora", "generate", str(chatty_model_dir), "hi", "--sample", "--temperature", "-1"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "temperature must be >= 0" in err and "Traceback" not in err


def test_api_generate_do_sample_temperature_top_p(chatty_model_dir):
    from smolora import SmoLoRA

    tuner = SmoLoRA(str(chatty_model_dir))
    greedy = tuner.generate(PROMPTS, max_new_tokens=12)
    assert all(greedy)
    torch.manual_seed(0)
    hot = tuner.generate(PROMPTS, max_new_tokens=12, do_sample=True, temperature=50.0)
    assert hot != greedy
    torch.manual_seed(0)
    assert tuner.generate(PROMPTS, max_new_tokens=12, do_sample=True, temperature=50.0, top_p=1.0) == hot
    # top_p near 0 keeps only the likeliest token: sampling becomes greedy however hot
    torch.manual_seed(0)
    assert tuner.generate(PROMPTS, max_new_tokens=12, do_sample=True, temperature=50.0, top_p=1e-9) == greedy


def test_ui_chat_streams_at_a_temperature(chatty_model_dir):
    from smolora.ui.chat import stream_answer

    messages = [{"role": "user", "content": PROMPTS[0]}]
    greedy = "".join(stream_answer(str(chatty_model_dir), messages, 12, temperature=0.0))
    assert greedy.strip()
    torch.manual_seed(0)
    hot = "".join(stream_answer(str(chatty_model_dir), messages, 12, temperature=50.0))
    assert hot != greedy
    torch.manual_seed(0)
    assert "".join(stream_answer(str(chatty_model_dir), messages, 12, temperature=50.0)) == hot


def test_sampling_kwargs_is_greedy_unless_asked_and_hot_enough():
    assert sampling_kwargs(False, 0.7, 0.9) == {"do_sample": False}
    assert sampling_kwargs(True, 1e-40) == {"do_sample": False}  # would divide the logits into inf
    assert sampling_kwargs(True, 0.7, 0.9) == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
    for bad in ((True, -1.0, 1.0), (True, 1.0, 0.0), (True, 1.0, 1.5)):
        with pytest.raises(ConfigError, match="temperature must be >= 0 and top_p in"):
            sampling_kwargs(*bad)
