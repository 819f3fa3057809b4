"""pydantic's ValidationError as the problems a user reads: the field path, what is wrong, did-you-mean.

`build_config` raises them as one `ConfigError`: its message lists the first `MAX_PROBLEMS`
(`src: 2 problem(s):`, then one `  path: message` line each) for the terminal, and its
`problems` holds every one as data ({"loc": "train.lr", "msg": "..."}) for the UI's form.

Run as:
    problems = validation_problems(err, RunConfig)
    print(problems_message(problems, "my.yaml"))
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from smolora.errors import excerpt

MAX_PROBLEMS = 10  # validation problems listed in one message (the count says how many in all)


def did_you_mean(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """The closest known key to an unknown one at `loc`, else the keys its section has."""
    model = root
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return ""
        model = ann
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(model.model_fields)})"


def printable(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def validation_problems(err: ValidationError, root: type[BaseModel]) -> list[dict[str, str]]:
    """Every distinct problem, in pydantic's order: [{"loc": "data.max_length", "msg": "..."}]."""
    problems: dict[str, dict[str, str]] = {}
    for e in err.errors():
        tag = lambda p: isinstance(p, str) and p.startswith(("function-", "literal["))  # noqa: E731
        # pydantic's union-branch tags are dropped; an unknown key is the user's, whatever it reads.
        keep_last = e["type"] == "extra_forbidden"
        loc = tuple(p for i, p in enumerate(e["loc"]) if not tag(p) or (keep_last and i == len(e["loc"]) - 1))
        # A key is user text: a newline or escape code in it must not start a line of its own.
        path = excerpt(printable(".".join(str(p) for p in loc)), 100) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = f"unknown key{did_you_mean(root, loc)}"
        else:
            got = f" (got {excerpt(repr(e['input']), 80)})" if "input" in e else ""
            msg = f"{excerpt(e['msg'].removeprefix('Value error, '), 200)}{got}"
        # Union types report one error per branch; keep each line once.
        problems.setdefault(f"{path}: {msg}", {"loc": path, "msg": msg})
    return list(problems.values())


def problems_message(problems: list[dict[str, str]], source: str = "config") -> str:
    """`source: N problem(s):` and the first MAX_PROBLEMS as `  loc: msg` lines (then how many more)."""
    lines = [f"{p['loc']}: {p['msg']}" for p in problems]
    shown = lines[:MAX_PROBLEMS] + [f"... and {len(lines) - MAX_PROBLEMS} more"] * (len(lines) > MAX_PROBLEMS)
    return f"{source}: {len(lines)} problem(s):\n  " + "\n  ".join(shown)
