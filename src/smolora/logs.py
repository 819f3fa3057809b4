"""Logging set-up, kept free of heavy imports so `smolora --help` starts fast.

Every handler masks tokens and keys (`smolora.redact`) before it writes a record.

Run as:
    setup_logging(Path("runs/x/train.log"))
"""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console

from smolora.redact import install as install_redaction


def setup_logging(log_file: Path | None = None, level: int = logging.INFO) -> None:
    """Rich console output for people, a plain log file per run for the record."""
    from rich.logging import RichHandler

    root = logging.getLogger("smolora")
    # train.log keeps the record (schedule, best step, diagnosis) even when the console is quiet (-q).
    root.setLevel(min(level, logging.INFO) if log_file is not None else level)
    root.handlers = [h for h in root.handlers if not isinstance(h, logging.FileHandler)]
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(RichHandler(console=Console(stderr=True), show_path=False, show_time=False))
    for h in root.handlers:
        h.setLevel(level)
    if log_file is not None:
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        fh.setLevel(logging.DEBUG)
        root.addHandler(fh)
    install_redaction(root)  # tokens and keys never reach the console or train.log
    root.propagate = False
