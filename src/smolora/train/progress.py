"""What a training run tells the world: metrics.jsonl, a progress bar, and the tracking integrations.

Run as:
    tracking_env(cfg, run_dir)     # tensorboard / mlflow / wandb write into the run directory
    trainer.add_callback(RunLogger(run_dir, counter, show_progress=True))
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

from smolora.config import RunConfig
from smolora.runs import METRICS_FILE

log = logging.getLogger("smolora")
TIMINGS = ("_runtime", "_samples_per_second", "_steps_per_second")  # Trainer's own eval clock, not a score


TRAINER_KEYS = {"loss", "grad_norm", "learning_rate", "epoch", "num_tokens"}


class RunLogger(TrainerCallback):
    """Appends one JSON line per log event to metrics.jsonl and drives the progress bar.

    `counter` is shared with the trainer's loss function, which adds the real (non-pad)
    tokens of every micro-batch, so tokens/s counts only work that was worth doing.
    """

    def __init__(self, run_dir: Path, counter: dict[str, int], show_progress: bool = True):
        self.path = run_dir / METRICS_FILE
        self.counter = counter
        self.show_progress = show_progress
        self.progress: Progress | None = None
        self.task = None
        self.last_time = time.perf_counter()
        self.last_tokens = 0
        self.tokens_per_s = 0.0
        self.last_loss: float | None = None

    def on_train_begin(self, args, state, control, **kw):
        self.last_time = time.perf_counter()
        self.last_tokens = self.counter["tokens"]
        if self.show_progress and state.is_world_process_zero:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} steps"),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=state.max_steps, completed=state.global_step, loss="-", tps="-"
            )

    def on_step_end(self, args, state, control, **kw):
        if self.progress is not None:
            loss = f"{self.last_loss:.4f}" if self.last_loss is not None else "-"
            self.progress.update(
                self.task, completed=state.global_step, loss=loss, tps=f"{self.tokens_per_s:.0f}"
            )

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kw):
        if not logs or not state.is_world_process_zero:
            return
        row: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if "loss" in logs:
            now = time.perf_counter()
            tokens = self.counter["tokens"]
            self.tokens_per_s = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9)
            self.last_time, self.last_tokens = now, tokens
            self.last_loss = float(logs["loss"])
            row.update(
                loss=self.last_loss,
                lr=logs.get("learning_rate"),
                grad_norm=_num(logs.get("grad_norm")),
                tokens_per_s=round(self.tokens_per_s, 2),
                tokens=tokens,
            )
        for key, value in logs.items():  # eval_loss, the generation metrics (train/best.py) and the
            # preference / reward objectives' own (reward_margin, reward, kl: train/trainer.py)
            if key in ("train_loss", "train_runtime") or (
                key.startswith("eval_") and not key.endswith(TIMINGS)
            ):
                row[key] = _num(value)
            elif "loss" in logs and key not in TRAINER_KEYS and isinstance(value, (int, float)):
                row[key] = _num(value)
        if len(row) > 2:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            scores = [
                f"{k.removeprefix('eval_').replace('_', ' ')} {v:.4g}"
                for k, v in row.items()
                if k.startswith("eval_")
            ]
            if scores:
                log.info("step %d: eval %s", state.global_step, ", ".join(scores))

    def on_train_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _num(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


_SET_BY_US: dict[str, str] = {}  # environment values tracking_env set, so the next run may replace them


def tracking_env(cfg: RunConfig, run_dir: Path) -> None:
    """Point transformers' tracking integrations at the run directory, offline-safe."""
    if "tensorboard" in cfg.train.report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    if "mlflow" in cfg.train.report_to:
        # The user's own tracking server wins; one we set for an earlier run in this process does not.
        if os.environ.get("MLFLOW_TRACKING_URI") in (None, _SET_BY_US.get("MLFLOW_TRACKING_URI")):
            os.environ["MLFLOW_TRACKING_URI"] = _SET_BY_US["MLFLOW_TRACKING_URI"] = (
                (run_dir / "mlruns").resolve().as_uri()
            )
        # mlflow 3 refuses a plain-folder store unless told; it needs no server or database.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    if "wandb" in cfg.train.report_to and not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
        if os.environ.get("WANDB_DIR") in (None, _SET_BY_US.get("WANDB_DIR")):
            os.environ["WANDB_DIR"] = _SET_BY_US["WANDB_DIR"] = str(run_dir)
