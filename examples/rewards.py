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

import re

# Each field of the house format, and the words that name it in a chattier answer.
FIELDS = {"product": ("product",), "qty": ("qty", "quantity"), "city": ("city",)}
HOUSE = re.compile(r"product=([^;\n]+); qty=(\d+); city=([^;\n]+)")


def format_ok(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """How close an answer is to the quickstart's house format, 0 to 1, never looking at the right answer.

    An answer that starts with `product=...; qty=<digits>; city=...` earns 0.3, plus 0.15 for each
    value that occurs in the customer's message (a format is filled from the message, not made
    up), plus 0.25 when nothing follows it. Anything else earns at most 0.2: a fifteenth per field
    it names ("Quantity: 3"), halved over several lines. Each step up is one a sampled answer can
    stumble on. An early version paid for the keys alone and GRPO learnt `product=product;
    qty=product; ...`: a reward gets exactly what it measures.
    """
    scores = []
    for prompt, text in zip(prompts, completions, strict=True):
        text = text.strip()
        match = HOUSE.match(text)
        if match:
            message = prompt.rpartition("Message:")[2].lower() or prompt.lower()
            grounded = sum(value.strip().lower() in message for value in match.groups())
            scores.append(0.3 + 0.15 * grounded + (0.25 if match.end() == len(text) else 0.0))
            continue
        lower = text.lower()
        named = sum(any(w in lower for w in words) for words in FIELDS.values())
        scores.append(0.2 / 3 * named * (1.0 if text and "\n" not in text else 0.5))
    return scores


def correct_fields(prompts: list[str], completions: list[str], output: list[str], **columns) -> list[float]:
    """The share of the reference's `key=value` fields that the answer states exactly."""
    scores = []
    for text, reference in zip(completions, output, strict=True):
        fields = [f.strip() for f in reference.split(";")]
        got = {f.strip() for f in text.strip().split(";")}
        scores.append(sum(f in got for f in fields) / len(fields))
    return scores
