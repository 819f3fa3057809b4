"""Tokens and keys are masked in log records (console and train.log) and in saved configs."""

from __future__ import annotations

import logging

import pytest
import yaml

from smolora.config import load_config, save_config
from smolora.logs import setup_logging
from smolora.redact import MASK, is_secret_name, mask_data, mask_text

HF = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ012345"
SK = "sk-proj-" + "abcdefghijklmnopqrstuvwx"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"push with {HF}", "push with hf_***"),
        (f"OPENAI key {SK} used", "OPENAI key sk-*** used"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
        ("token=abc123 next", "token=*** next"),
        ("{'hf_token': 'abc', 'WANDB_API_KEY': 'q'}", "{'hf_token': '***', 'WANDB_API_KEY': '***'}"),
        ('{"password": "hunter2", "user": "me"}', '{"password": "***", "user": "me"}'),
        (
            "https://me:pw123@hub.example/x?access_token=abc&page=2",
            "https://me:***@hub.example/x?access_token=***&page=2",
        ),
        ("smolora serve r --api-key s3cret --port 1", "smolora serve r --api-key *** --port 1"),
        ("client_secret: zzz", "client_secret: ***"),
    ],
)
def test_secrets_are_masked(text, masked):
    assert mask_text(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "pad_token=<|im_end|> eos_token: <|im_end|> max_new_tokens=64 tokens_per_s=812.5",
        "the token is counted; loss 1.23, lr=2e-4, sort_key=3",
        "hf_hub_download failed; sk-learn is not installed",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert mask_text(text) == text


def test_secret_names():
    for name in (
        "token",
        "hf_token",
        "HF_TOKEN",
        "api_key",
        "x-api-key",
        "WANDB_API_KEY",
        "password",
        "--token",
    ):
        assert is_secret_name(name), name
    for name in ("pad_token", "eos_token", "max_new_tokens", "tokenizer", "key", "cache_key", "monkey"):
        assert not is_secret_name(name), name


def test_environment_secrets_are_masked_wherever_they_appear(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "plainvalue-1234")
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to mask everywhere
    assert mask_text("calling with plainvalue-1234 now abc") == f"calling with {MASK} now abc"


def test_mask_data_masks_fields_by_name_and_values_by_shape():
    data = {"hub": {"token": "anything", "repo": "me/x"}, "notes": [f"key {HF}"], "api_key": None, "r": 8}
    assert mask_data(data) == {
        "hub": {"token": MASK, "repo": "me/x"},
        "notes": ["key hf_***"],
        "api_key": None,
        "r": 8,
    }


def test_log_records_are_masked_in_the_console_and_train_log(tmp_path, capsys):
    log_file = tmp_path / "train.log"
    setup_logging(log_file, level=logging.INFO)
    log = logging.getLogger("smolora.test")  # a child logger: handler filters still apply
    log.info("pushing with token=%s to %s", HF, "me/x")
    try:
        raise RuntimeError(f"hub said no to Bearer {SK}")
    except RuntimeError:
        logging.getLogger("smolora").exception("push failed")
    for handler in logging.getLogger("smolora").handlers:
        handler.flush()
    written = log_file.read_text()
    shown = capsys.readouterr().err
    for text in (written, shown):
        assert "aBcDeFg" not in text and "abcdefghijklmnop" not in text, text
    assert "token=*** to me/x" in written and "Bearer ***" in written and "RuntimeError" in written
    setup_logging()  # detach the file handler again


def test_saved_config_masks_secret_values_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF)
    cfg = load_config(
        None, [f"data.system_prompt=Use {HF} and {SK}", "data.path=https://u:pw@example/d.jsonl"]
    )
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert HF not in text and SK not in text and ":pw@" not in text
    saved = yaml.safe_load(text)
    assert saved["data"]["system_prompt"] == "Use *** and sk-***"
    assert saved["data"]["path"] == "https://u:***@example/d.jsonl"
    assert saved["lora"] == cfg.to_dict()["lora"]  # everything else as it was
