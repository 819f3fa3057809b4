"""Reward functions for GRPO (`train.objective: grpo`), plain Python: (prompts, completions, **columns) -> floats.

Every data column other than the prompt reaches a reward as a keyword list, one value per
completion (here the quickstart data's `output`). Name them in a config as
`train.rewards: [examples/rewards.py:format_ok]`; built-ins need no file (`exact_match:output`,
`regex:PATTERN`, `length:N`).

Run as:
    from examples.rewards import format_ok
    print(format_ok(["..."], ["product=mug; qty=2; city=Oslo"]))   # [1.0]
"""

from __future__ import annotations

KEYS = ("product=", "qty=", "city=")


def format_ok(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """The quickstart's house format `product=...; qty=...; city=...`, in thirds: one line, at most
    12 words, and the share of the three keys present. It never looks at the right answer."""
    scores = []
    for text in completions:
        text = text.strip()
        one_line = bool(text) and "\n" not in text
        short = 0 < len(text.split()) <= 12
        keys = sum(key in text for key in KEYS) / len(KEYS)
        scores.append((one_line + short + keys) / 3)
    return scores


def correct_fields(prompts: list[str], completions: list[str], output: list[str], **columns) -> list[float]:
    """The share of the reference's `key=value` fields that the answer states exactly."""
    scores = []
    for text, reference in zip(completions, output, strict=True):
        fields = [f.strip() for f in reference.split(";")]
        got = {f.strip() for f in text.strip().split(";")}
        scores.append(sum(f in got for f in fields) / len(fields))
    return scores
