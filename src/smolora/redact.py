"""Keep tokens and keys out of logs, saved configs and anything the UI or server shows.

What is masked: Hugging Face tokens (`hf_...`), `sk-...` API keys, `Bearer xxx`, passwords in
URLs (`https://user:pw@host`), the value of any field, option or variable named like a secret
(`token`, `hf_token`, `api_key`, `WANDB_API_KEY`, `password`, `secret`, ...), and the literal
value of every such environment variable that is set. Tokenizer fields (`pad_token`,
`eos_token`, ...) are not secrets and stay as they are.

(Named `redact`, not `secrets`, so it never shadows the standard library's `secrets`.)

Run as:
    mask_text("push with token=hf_abcdefghijklmnopqrstuvwxyz12")   # -> "push with token=***"
    handler.addFilter(redact_record)                                # every record it writes is masked
    mask_data({"hub": {"token": "hf_..."}})                         # -> {"hub": {"token": "***"}}
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

MASK = "***"
# Names whose value is a secret: the last part of the name (split on _ - .), or its last two.
SECRET_WORDS = {
    "token",
    "password",
    "passwd",
    "secret",
    "apikey",
    "credential",
    "credentials",
    "authorization",
}
SECRET_PAIRS = {("api", "key"), ("access", "key"), ("secret", "key"), ("private", "key"), ("auth", "key")}
# Tokenizer vocabulary, not credentials.
NOT_SECRETS = {"pad_token", "eos_token", "bos_token", "unk_token", "sep_token", "cls_token", "mask_token"}
# Environment values shorter than this are left alone: masking "1" or "abc" everywhere is noise.
MIN_ENV_SECRET = 8

PATTERNS = [
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), "hf_" + MASK),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), "sk-" + MASK),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]+"), r"\1 " + MASK),
    (re.compile(r"(?i)\b(basic)\s+[A-Za-z0-9+/=]{8,}"), r"\1 " + MASK),
    (re.compile(r"(://[^/\s:@]+):[^/\s@]+@"), r"\1:" + MASK + "@"),
]
# Names that end like a secret; `is_secret_name` has the last word. The name must touch its
# separator, so `max_new_tokens=5` or prose ("the token is") never match.
_NAME = r"[A-Za-z0-9_.\-]*(?:token|passw(?:or)?d|secret|credentials?|authorization|key)"
# `name=value`, `name: value`, `"name": "value"`, `?name=value&`.
NAMED_VALUE = re.compile(
    rf"""(?i)(?P<name>{_NAME})(?P<sep>["']?\s*[:=]\s*["']?)(?P<value>[^\s"',;&)}}\]]+)"""
)
# `--token VALUE`, `--api-key VALUE` in command lines.
FLAG_VALUE = re.compile(rf"""(?i)(?P<name>--{_NAME})(?P<sep>\s+)(?P<value>[^\s"']+)""")


def is_secret_name(name: str) -> bool:
    name = name.strip().lstrip("-").lower()
    if name in NOT_SECRETS:
        return False
    parts = [p for p in re.split(r"[_\-.]", name) if p]
    if not parts:
        return False
    return parts[-1] in SECRET_WORDS or tuple(parts[-2:]) in SECRET_PAIRS


def env_secrets() -> list[str]:
    """Values of secret-named environment variables (HF_TOKEN, WANDB_API_KEY, ...), longest first."""
    values = {v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= MIN_ENV_SECRET}
    return sorted(values, key=len, reverse=True)


def _named(match: re.Match) -> str:
    name, sep, value = match.group("name", "sep", "value")
    # `Authorization: Bearer ***` is already masked by PATTERNS; keep the scheme readable.
    if not is_secret_name(name) or value.startswith(MASK) or value.lower() in ("bearer", "basic"):
        return match.group(0)
    return f"{name}{sep}{MASK}"


def mask_text(text: str) -> str:
    """`text` with every token, key and password it holds replaced by ***."""
    if not text:
        return text
    for value in env_secrets():
        text = text.replace(value, MASK)
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    text = NAMED_VALUE.sub(_named, text)
    return FLAG_VALUE.sub(_named, text)


def mask_data(data: Any) -> Any:
    """A copy of plain data (dicts, lists, strings) with secret-named fields and secret-looking values masked."""
    if isinstance(data, dict):
        return {
            k: (MASK if is_secret_name(str(k)) and v not in (None, "") else mask_data(v))
            for k, v in data.items()
        }
    if isinstance(data, list | tuple):
        return [mask_data(v) for v in data]
    if isinstance(data, str):
        return mask_text(data)
    return data


def redact_record(record: logging.LogRecord) -> bool:
    """A logging filter (any callable works as one): mask the message and any traceback, keep the record."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: leave it for logging's own error report
        return True
    record.msg, record.args = mask_text(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = mask_text(record.exc_text)
    return True


def install(logger: logging.Logger) -> None:
    """Mask every record the logger's handlers write (handler filters also see child loggers' records)."""
    for handler in logger.handlers:
        if redact_record not in handler.filters:
            handler.addFilter(redact_record)
