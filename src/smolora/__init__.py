"""SmoLoRA: fine-tune language models with LoRA and its relatives.

Run as:
    from smolora import SmoLoRA
    tuner = SmoLoRA("smollm2-135m", dataset="data.jsonl")
    tuner.train()
    print(tuner.generate("Write a haiku about rivers"))
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["SmoLoRA", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `smolora --help` should not pay for importing torch and transformers.
    if name == "SmoLoRA":
        from smolora.api import SmoLoRA

        return SmoLoRA
    raise AttributeError(name)
