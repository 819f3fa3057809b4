"""The few exceptions SmoLoRA raises on purpose. Every message says what to do next.

The CLI prints any `SmoLoRAError` as one line (no traceback) and exits with `exit_code`.

Run as:
    raise DatasetError("data.jsonl:12: not valid JSON (Expecting ',' delimiter)")
"""

from __future__ import annotations


class SmoLoRAError(Exception):
    """A mistake the user can fix; `exit_code` 2 means "bad input"."""

    exit_code = 2


class ConfigError(SmoLoRAError):
    """The run configuration is invalid; the message lists every problem at once.

    `problems` holds them as data, `[{"loc": "train.lr", "msg": "..."}]`, for callers that show
    each beside its field (the UI's form); empty when the error is about the file as a whole.
    """

    def __init__(self, message: str, problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class DatasetError(SmoLoRAError):
    """A data file cannot be read or gives no trainable example; names file and line."""


class ModelError(SmoLoRAError):
    """A model cannot be found, converted or loaded."""


class TrainingError(SmoLoRAError):
    """Training cannot go on (NaN loss, out of memory, no checkpoint to resume from)."""


class IntegrityError(SmoLoRAError):
    """A cached file does not match its recorded sha256."""

    exit_code = 1


class ExportError(SmoLoRAError):
    """A model cannot be merged, exported, pushed or served as asked (parity broken, unsupported shape)."""


def excerpt(value: object, limit: int = 200) -> str:
    """`str(value)` cut to `limit` characters: messages quote user data, and one record can be 100 MB."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
