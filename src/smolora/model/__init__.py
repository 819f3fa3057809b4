"""Model resolution (store), loading, layer surgery and fine-tuning methods."""

from smolora.model.adapters import METHODS, find_target_modules
from smolora.model.load import load_base, load_for_inference, load_tokenizer, pick_device, pick_dtype
from smolora.model.store import resolve_model
from smolora.model.surgery import apply_surgery

__all__ = [
    "METHODS",
    "apply_surgery",
    "find_target_modules",
    "load_base",
    "load_for_inference",
    "load_tokenizer",
    "pick_device",
    "pick_dtype",
    "resolve_model",
]
