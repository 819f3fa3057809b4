"""Prefix caching: the keys and values of the prompt start that requests share (the chat
template's default system prompt, your own long system prompt, few-shot examples) are computed
once per adapter and copied into each new batch, so a prefill runs only the tokens after it.

No configuration: the shared start is learnt from the prompts themselves. The first prompt is
remembered; when the next ones start with the same tokens (at least MIN_PREFIX of them), that
start is run once and kept. A prompt that shares only part of it shrinks it (the cache is cropped,
nothing is recomputed), so it settles on what really is common. One prefix per adapter; every
chore (an adapter loaded or unloaded, the names may be reused) forgets them all.

The copy goes in front of each row, and each row's own tokens are left-padded after it:
`prefix | padding | prompt rest`. The mask has zeros in the middle and the position ids continue
from the prefix, which is all the attention needs.

Run as:
    prefixes = Prefixes()
    prefix = prefixes.lookup("default", [job.ids for job in jobs])  # None, a kept one, or one to compute
    if prefix is not None and prefix.cache is None:
        prefix.cache = ...  # a forward pass over prefix.ids; then
        prefixes.keep("default", prefix)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

MIN_PREFIX = 16  # shorter shared starts are not worth a forward pass of their own


@dataclass
class Prefix:
    ids: tuple[int, ...]
    cache: Any = None  # DynamicCache of one row: every layer's keys/values for `ids`


def common_length(a: Any, b: Any) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def shared_length(seen: Any, prompts: list[list[int]], room: int) -> int:
    """How many first tokens `seen` (a kept or remembered prompt, or None) and all `prompts` share."""
    others = prompts if seen is None else [seen, *prompts]
    if len(others) < 2:
        return 0
    return min(room, *(common_length(others[0], p) for p in others[1:]))


@dataclass
class Prefixes:
    entries: dict[str | None, Prefix] = field(default_factory=dict)  # adapter -> its shared start
    last: dict[str | None, tuple[int, ...]] = field(default_factory=dict)  # adapter -> a recent prompt

    def clear(self) -> None:
        self.entries.clear()
        self.last.clear()

    def lookup(self, name: str | None, prompts: list[list[int]]) -> Prefix | None:
        """The prefix to use for these prompts of adapter `name`: a kept one (possibly cropped to
        what they share), or a new one with `cache=None` that the caller must compute and `keep`.
        None: nothing worth sharing. Every prompt keeps at least one token of its own."""
        room = min(len(p) for p in prompts) - 1
        kept, last = self.entries.get(name), self.last.get(name)
        self.last[name] = tuple(prompts[-1])
        shared = shared_length(kept.ids if kept else None, prompts, room)
        if kept is not None and shared >= MIN_PREFIX:
            if shared < len(kept.ids):  # crop what is kept to what is common
                cache = copy.deepcopy(kept.cache)
                for layer in cache.layers:  # not Cache.crop: its argument changed meaning across versions
                    layer.keys, layer.values = layer.keys[:, :, :shared], layer.values[:, :, :shared]
                kept = self.entries[name] = Prefix(kept.ids[:shared], cache)
            return kept
        # Nothing (or too little) in common with what is kept: learn from the last prompt instead.
        shared = shared_length(last, prompts, room)
        return Prefix(tuple(prompts[0][:shared])) if shared >= MIN_PREFIX else None

    def keep(self, name: str | None, prefix: Prefix) -> None:
        self.entries[name] = prefix


def batch_cache(prefix: Prefix, rows: int) -> Any:
    """A cache for `rows` new rows that all start with `prefix` (a copy: decoding appends to it)."""
    cache = copy.deepcopy(prefix.cache)
    cache.batch_repeat_interleave(rows)
    return cache
