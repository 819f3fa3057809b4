"""The Data view's server side: `inspect_data` (what `smolora data inspect` prints) plus a histogram.

The data settings and the tokenizer come from the Train form's current values, so what is
shown is exactly what that training run would see. Tokenizers are kept per model name.

Run as:
    report = inspect_file(Path("data/qa.jsonl"), ["model.name=tiny-llama", "data.max_length=64"], Path("."))
    print(report["format"], report["histogram"])
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from smolora.config import RunConfig, apply_overrides, build_config

_tokenizers: dict[str, Any] = {}
_lock = threading.Lock()


def tokenizer_for(name: str, revision: str | None = None) -> Any:
    from smolora.model.load import load_tokenizer
    from smolora.model.store import resolve_model

    with _lock:
        if name not in _tokenizers:
            _tokenizers[name] = load_tokenizer(resolve_model(name, revision))
        return _tokenizers[name]


def histogram(lengths: list[int], max_length: int, bins: int = 24) -> dict[str, Any]:
    """Equal-width bins from 0 to max(longest, max_length), so the max_length line always fits."""
    top = max([max_length, *lengths]) if lengths else max_length
    width = max(1, -(-top // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min(bins - 1, n // width)] += 1
    return {
        "width": width,
        "counts": counts,
        "max_length": max_length,
        "over": sum(n > max_length for n in lengths),
    }


def token_lengths(path: str, cfg: RunConfig, tokenizer: Any) -> list[int]:
    """Untruncated token lengths of every example (inspect_data reports only their summary)."""
    from smolora.data.pipeline import load_examples
    from smolora.data.render import encode_examples

    examples, *_ = load_examples(path, cfg.data)
    d = cfg.data
    _, info = encode_examples(examples, tokenizer, d.max_length, d.train_on, d.chunk_overlap)
    return info["lengths"]  # measured before truncation


def inspect_file(path: Path, overrides: list[str], workspace: Path, n_examples: int = 3) -> dict[str, Any]:
    from smolora.data import inspect_data
    from smolora.ui.workspace import model_ref

    cfg = build_config(apply_overrides({}, [*overrides, f"data.path={path}"]), "form")
    tokenizer = tokenizer_for(model_ref(workspace, cfg.model.name), cfg.model.revision)
    report = inspect_data(str(path), cfg, tokenizer, n_examples=n_examples)
    try:
        lengths = token_lengths(str(path), cfg, tokenizer)
        report["histogram"] = histogram(lengths, cfg.data.max_length)
    except Exception as e:  # the histogram is a nicety; the report above is what matters
        report["histogram"] = None
        report["histogram_error"] = f"{type(e).__name__}: {e}"
    report["model"] = cfg.model.name
    return report
