"""A clean stop on Ctrl-C / SIGINT / SIGTERM: finish the step, save a checkpoint, exit.

The first signal asks the Trainer to save a checkpoint at the end of the current optimizer
step and to stop; `smolora train CONFIG --resume` continues from there. A second signal
interrupts at once (the previous checkpoint is kept). The web UI's Stop button sends
SIGINT, so it gets the same clean stop as a user pressing Ctrl-C.

Run as:
    stopper = StopOnSignal()
    trainer.add_callback(stopper)
    with stopper.installed():
        trainer.train()
    if stopper.requested:
        raise KeyboardInterrupt
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from transformers import TrainerCallback

log = logging.getLogger("smolora")


class StopOnSignal(TrainerCallback):
    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: the user means now
            raise KeyboardInterrupt
        self.requested = True
        log.warning(
            "%s received: saving a checkpoint at the end of this step, then stopping (again to abort)",
            signal.Signals(signum).name,
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control

    @contextmanager
    def installed(self) -> Iterator[StopOnSignal]:
        """Handle SIGINT and SIGTERM while training (main thread only: Python's rule for handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        # Installed explicitly, so a trainer started with SIGINT ignored (`nohup`, `cmd &`) still stops.
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
