"""Data: read files, detect their shape, clean, render with the chat template, mask, cache.

Run as:
    from smolora.data import prepare_data
    data = prepare_data(cfg, tokenizer)     # PreparedData: .train, .val (or None), .stats, ...
"""

from smolora.data.clean import clean_examples
from smolora.data.formats import FORMATS, detect_format, domain_tag, to_examples
from smolora.data.inspect import inspect_data
from smolora.data.pipeline import prepare_data
from smolora.data.read import read_records
from smolora.data.render import encode_example, ensure_chat_template, render_prompt

__all__ = [
    "FORMATS",
    "clean_examples",
    "detect_format",
    "domain_tag",
    "encode_example",
    "ensure_chat_template",
    "inspect_data",
    "prepare_data",
    "read_records",
    "render_prompt",
    "to_examples",
]
