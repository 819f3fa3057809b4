"""The schedule a run gets when its config leaves it to us: epochs, learning rate, eval cadence.

`train.epochs: auto`, `train.lr: auto` and `train.eval_every: auto` are the defaults. They are
chosen here from what the run knows before its first step (rows, batch, method, LoRA scale,
model size, task) and written into the run's config.yaml as numbers, so a `--resume` (or a
retry at a smaller batch after out-of-memory) keeps the schedule it started with. Any explicit
value wins. The choice and its reason are one log line and `schedule` in adapter/smolora.json.

Why these numbers (measured on the bundled 135M model, docs/efficacy.md):
- Small data needs several passes: one epoch of 188 rows (22 steps) left the train loss at
  2.5. Runs get at least MIN_STEPS optimizer steps, in whole epochs, at most MAX_EPOCHS; the
  best checkpoint by validation loss and early stopping (train/best.py) take back the epochs
  that turn out to be too many, so erring long is cheap and erring short is not.
- LoRA on small models wants a far higher learning rate than full fine-tuning: the quickstart's
  sweep put lr 1e-3 well ahead of 1e-4 (eval loss 0.080 vs 2.161, docs/sweep.md). The LoRA
  update is scale x B @ A, so the rate is divided by how far the scale (alpha / r, or
  alpha / sqrt(r) for rsLoRA) is above the usual 2.
- Memorizing facts (data.task: memorize) needs many more passes than learning a format: five
  epochs at lr 1e-3 recalled 14% of 300 facts. Those runs stop as soon as the facts are
  recalled (train/best.py), so the cap is generous.

Run as:
    choice = auto_schedule(cfg, n_train=169, n_params=134_515_008, world=1)
    print(choice["reason"])    # 169 rows -> 5 epochs = 110 steps (22 per epoch), lr 1e-03: ...
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from smolora.config import RunConfig, save_config
from smolora.runs import CONFIG_FILE

log = logging.getLogger("smolora")

MIN_STEPS = 100  # optimizer steps a fine-tune gets at least (in whole epochs)
MAX_EPOCHS = 8  # ... but no more passes than this over small data
MEMORIZE_MIN_EPOCHS = 20  # facts are recalled after many passes, not a few
MEMORIZE_MAX_EPOCHS = 30
MEMORIZE_MIN_STEPS = 400
MEMORIZE_LR_FACTOR = 2.0  # new facts need the weights moved further than a new format does
EVALS_PER_RUN = 8  # eval cadence: about this many evaluations over the schedule
MEMORIZE_CHECKS_EVERY = 2  # epochs between recall checks when memorizing
# Preference and reward objectives move a policy that already answers well: a gentler step than
# SFT's (DPO with LoRA is commonly run at 5e-6..1e-4, ORPO, which also does SFT, a little higher).
OBJECTIVE_LR_FACTOR = {"dpo": 0.1, "kto": 0.1, "simpo": 0.1, "orpo": 0.2, "grpo": 0.1}
CLOCK_STEPS = 5  # steps measured before the time estimate is logged


def auto_lr(cfg: RunConfig, n_params: int) -> tuple[float, str]:
    """The learning rate for this method, model size and task, and why, in a few words."""
    lr, why = method_lr(cfg, n_params)
    if cfg.train.objective != "sft":
        factor = OBJECTIVE_LR_FACTOR[cfg.train.objective]
        return lr * factor, f"{why}, x{factor:g} for {cfg.train.objective}"
    if cfg.data.task == "memorize":
        return lr * MEMORIZE_LR_FACTOR, f"{why}, x{MEMORIZE_LR_FACTOR:g} to memorize"
    return lr, why


def method_lr(cfg: RunConfig, n_params: int) -> tuple[float, str]:
    method = cfg.lora.method
    billions = n_params / 1e9
    size = f"{n_params / 1e6:.0f}M" if billions < 1 else f"{billions:.1f}B"
    if method in ("full", "freeze"):
        lr = 5e-5 if billions < 0.5 else 2e-5 if billions < 3 else 1e-5
        return lr, f"{method} fine-tuning of {size} parameters"
    lr = 1e-3 if billions < 0.5 else 5e-4 if billions < 3 else 2e-4
    scale = cfg.lora.alpha / (math.sqrt(cfg.lora.r) if method == "rslora" else cfg.lora.r)
    # The update is scale x B @ A: a larger scale moves the weights further per step.
    factor = min(4.0, max(0.25, 2.0 / scale))
    lr *= factor
    scaled = f", x{factor:.2g} for scale {scale:.3g}" if factor != 1.0 else ""
    return lr, f"{method} r={cfg.lora.r} on {size} parameters{scaled}"


def auto_epochs(cfg: RunConfig, steps_per_epoch: int, n_train: int) -> tuple[float, str]:
    if cfg.train.objective == "grpo":  # every step samples new answers: one pass over the prompts
        return 1, "grpo: one pass over the prompts, answers sampled anew at every step"
    if cfg.data.task == "memorize":
        epochs = min(
            MEMORIZE_MAX_EPOCHS, max(MEMORIZE_MIN_EPOCHS, math.ceil(MEMORIZE_MIN_STEPS / steps_per_epoch))
        )
        return epochs, "memorize: many passes, stopping once the facts are recalled"
    epochs = min(MAX_EPOCHS, max(1, math.ceil(MIN_STEPS / steps_per_epoch)))
    size = "small data" if epochs > 1 else "enough data for one pass"
    return epochs, f"{size} (at least {MIN_STEPS} steps, at most {MAX_EPOCHS} epochs)"


def auto_schedule(cfg: RunConfig, n_train: int, n_params: int, world: int = 1) -> dict[str, Any]:
    """Epochs, lr and eval_every for `cfg` (explicit values kept) with the total steps and a reason."""
    t = cfg.train
    per_step = t.batch_size * t.grad_accum * max(1, world)
    steps_per_epoch = max(1, math.ceil(n_train / per_step))
    reasons = []
    epochs, lr = t.epochs, t.lr
    if epochs == "auto":
        epochs, why = auto_epochs(cfg, steps_per_epoch, n_train)
        if not t.max_steps:  # max_steps sets the length: the epochs chosen are never used
            reasons.append(why)
    if lr == "auto":
        lr, why = auto_lr(cfg, n_params)
        reasons.append(why)
    steps = t.max_steps or max(1, math.ceil(epochs * steps_per_epoch))
    eval_every = t.eval_every
    if eval_every == "auto":
        if cfg.data.task == "memorize":
            eval_every = max(1, min(steps, MEMORIZE_CHECKS_EVERY * steps_per_epoch))
        else:
            eval_every = max(1, steps // EVALS_PER_RUN)
    span = (
        f"max_steps {steps}"
        if t.max_steps
        else f"{epochs:g} epochs = {steps} steps ({steps_per_epoch} per epoch)"
    )
    reason = f"{n_train} rows -> {span}, lr {lr:.0e}, eval every {eval_every or 'end'}"
    if reasons:
        reason += ": " + "; ".join(reasons)
    return {
        "epochs": epochs,
        "lr": lr,
        "eval_every": eval_every,
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "reason": reason,
    }


def apply_schedule(cfg: RunConfig, choice: dict[str, Any]) -> RunConfig:
    """`cfg` with the chosen numbers in place of "auto" (what config.yaml records)."""
    train = cfg.train.model_copy(
        update={
            "epochs": float(choice["epochs"]),
            "lr": float(choice["lr"]),
            "eval_every": choice["eval_every"],
        }
    )
    return cfg.model_copy(update={"train": train})


def resolve_schedule(cfg: RunConfig, run_dir: Path, data, n_params: int, state) -> tuple[RunConfig, dict]:
    """Numbers for train.epochs / lr / eval_every left at auto, logged with why; config.yaml records them."""
    n_train = data.stats["n_train"]
    if not isinstance(n_train, int):  # a stream: its length is unknown, so max_steps sets the length
        n_train = cfg.train.max_steps * cfg.train.batch_size * cfg.train.grad_accum
    choice = auto_schedule(cfg, n_train, n_params, state.num_processes)
    log.info("schedule: %s", choice["reason"])
    cfg = apply_schedule(cfg, choice)
    if state.is_main_process:
        save_config(cfg, run_dir / CONFIG_FILE)
    return cfg, {k: choice[k] for k in ("epochs", "lr", "eval_every", "steps", "reason")}


class StepClock(TrainerCallback):
    """Logs, after the first few steps, how long the whole schedule will take at that pace."""

    def __init__(self, steps: int = CLOCK_STEPS):
        self.steps = steps
        self.start: tuple[float, int] | None = None

    def on_step_end(self, args, state, control, **kw):
        if self.start is None:  # the first step includes warm-up (allocation, kernels): not counted
            self.start = (time.perf_counter(), state.global_step)
            return
        t0, step0 = self.start
        done = state.global_step - step0
        if done == self.steps and state.is_world_process_zero:
            per_step = (time.perf_counter() - t0) / done
            left = max(0, state.max_steps - state.global_step) * per_step
            log.info(
                "time: %.2f s/step over %d steps -> about %s for the remaining %d steps (evaluations extra)",
                per_step,
                done,
                _duration(left),
                state.max_steps - state.global_step,
            )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
