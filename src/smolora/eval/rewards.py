"""GRPO's rewards: plain Python functions `(prompts, completions, **columns) -> list[float]`.

`train.rewards` names them: `examples/rewards.py:format_ok` (a function in a file, imported
once) or a built-in: `exact_match[:column]` and `contains[:column]` (against a data column,
default the first of answer, reference, solution, response, output, completion),
`regex:PATTERN` (1.0 when the pattern occurs) and `length:N` (0, or minus the share by which
the answer runs past N words). Their scores are summed. A reward that raises, returns the
wrong number of values or a non-number stops the run, naming the reward and the row.

Run as:
    rewards = load_rewards(["exact_match", "length:20"])
    total, per_reward = score_rewards(rewards, prompts, completions, columns)
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smolora.errors import ConfigError, TrainingError, excerpt
from smolora.eval.metrics import normalize

Reward = Callable[..., list[float]]
REFERENCE_COLUMNS = ("answer", "reference", "solution", "response", "output", "completion")


def _reference(column: str | None, columns: dict[str, list[Any]]) -> list[Any]:
    names = [column] if column else [c for c in REFERENCE_COLUMNS if c in columns]
    if not names or names[0] not in columns:
        want = column or " or ".join(REFERENCE_COLUMNS)
        raise ValueError(f"needs a data column {want}; the data has {sorted(columns) or 'none'}")
    return columns[names[0]]


def exact_match(column: str | None = None) -> Reward:
    def reward(prompts, completions, **columns):
        refs = _reference(column, columns)
        return [float(normalize(c) == normalize(str(r))) for c, r in zip(completions, refs, strict=True)]

    return reward


def contains(column: str | None = None) -> Reward:
    def reward(prompts, completions, **columns):
        refs = _reference(column, columns)
        return [float(normalize(str(r)) in normalize(c)) for c, r in zip(completions, refs, strict=True)]

    return reward


def regex(pattern: str | None) -> Reward:
    try:
        compiled = re.compile(pattern or "")
    except re.error as e:
        raise ConfigError(f"train.rewards: regex:{pattern}: {e}") from None
    if not pattern:
        raise ConfigError("train.rewards: regex needs a pattern, e.g. 'regex:^\\d+$'")

    def reward(prompts, completions, **columns):
        return [float(compiled.search(c) is not None) for c in completions]

    return reward


def length(words: str | None) -> Reward:
    try:
        limit = int(words or "")
        assert limit > 0
    except (ValueError, AssertionError):
        raise ConfigError(f"train.rewards: length:N needs a word count above 0, got {words!r}") from None

    def reward(prompts, completions, **columns):
        return [-max(0, len(c.split()) - limit) / limit for c in completions]

    return reward


BUILTINS: dict[str, Callable[[str | None], Reward]] = {
    "exact_match": exact_match,
    "contains": contains,
    "regex": regex,
    "length": length,
}


def _from_file(spec: str) -> Reward:
    path, _, name = spec.rpartition(":")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"train.rewards: {spec}: no file {file}")
    module_spec = importlib.util.spec_from_file_location(f"smolora_rewards_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: whatever it raises
        raise ConfigError(
            f"train.rewards: {spec}: importing {file} failed ({type(e).__name__}: {excerpt(e)})"
        ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        found = [n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")]
        raise ConfigError(f"train.rewards: {spec}: {file} has no function {name!r}; it has {found}")
    return fn


def load_rewards(specs: list[str]) -> list[tuple[str, Reward]]:
    """(name, function) for each entry of train.rewards; a bad entry is a ConfigError before any model loads."""
    out = []
    for spec in specs:
        head, _, arg = spec.partition(":")
        if head in BUILTINS:
            out.append((spec, BUILTINS[head](arg or None)))
        elif ".py:" in spec:  # logged by the function's name: reward_format_ok
            out.append((spec.rpartition(":")[2], _from_file(spec)))
        else:
            raise ConfigError(
                f"train.rewards: unknown reward {spec!r}; use 'file.py:function' or one of "
                f"{', '.join(f'{b}[:arg]' for b in BUILTINS)}"
            )
    return out


def _call(name: str, fn: Reward, prompts, completions, columns) -> list[float]:
    try:
        values = fn(prompts, completions, **columns)
    except Exception as e:
        row = _failing_row(fn, prompts, completions, columns)
        where = (
            f" on row {row + 1} (completion {excerpt(repr(completions[row]), 80)})" if row is not None else ""
        )
        raise TrainingError(f"reward {name} raised {type(e).__name__}: {excerpt(e)}{where}") from None
    values = list(values) if isinstance(values, (list, tuple)) or hasattr(values, "tolist") else values
    if not isinstance(values, list) or len(values) != len(completions):
        got = f"{len(values)} values" if isinstance(values, list) else type(values).__name__
        raise TrainingError(
            f"reward {name} returned {got} for {len(completions)} completions; return one float each"
        )
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise TrainingError(
                f"reward {name} returned {excerpt(repr(v), 40)} for row {i + 1}; return a finite float"
            )
    return [float(v) for v in values]


def _failing_row(fn: Reward, prompts, completions, columns) -> int | None:
    """The first row that fails on its own: what the error message points at."""
    for i in range(len(completions)):
        try:
            fn(prompts[i : i + 1], completions[i : i + 1], **{k: v[i : i + 1] for k, v in columns.items()})
        except Exception:
            return i
    return None


def score_rewards(
    rewards: list[tuple[str, Reward]], prompts: list[str], completions: list[str], columns: list[dict]
) -> tuple[list[float], dict[str, float]]:
    """(summed reward per completion, mean of each reward); `columns[i]` are row i's data columns."""
    keys = sorted({k for c in columns for k in c})
    by_column = {k: [c.get(k) for c in columns] for k in keys}
    total = [0.0] * len(completions)
    means = {}
    for name, fn in rewards:
        values = _call(name, fn, prompts, completions, by_column)
        total = [t + v for t, v in zip(total, values, strict=True)]
        means[name] = sum(values) / max(len(values), 1)
    return total, means
