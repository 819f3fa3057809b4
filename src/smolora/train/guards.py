"""Training guards: stop on a NaN/inf loss or gradient, shrink the micro-batch on out-of-memory.

A non-finite loss (checked after every micro-batch) or gradient (checked before every
optimizer step, so a bad update never reaches the weights) stops the run with the step,
the last good checkpoint and a lower learning rate to try. Out-of-memory is not fatal while
the micro-batch can shrink: `smaller_batch` halves `train.batch_size` and doubles
`train.grad_accum` (the same effective batch), and the recipe continues from the last step.

Run as:
    trainer.add_callback(NonFiniteGuard(run_dir, cfg.train.lr))
    ...
    except Exception as e:
        if is_oom(e):
            cfg = smaller_batch(cfg, step, e)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from smolora.config import RunConfig
from smolora.errors import TrainingError
from smolora.train.checkpoints import good_checkpoint

log = logging.getLogger("smolora")


def non_finite_error(what: str, step: int, run_dir: Path, lr: float) -> TrainingError:
    ckpt, _ = good_checkpoint(run_dir)
    kept = (
        f"the last good checkpoint is {ckpt.name} (continue from it with --resume)"
        if ckpt
        else "no checkpoint was saved yet"
    )
    return TrainingError(
        f"{what} at step {step}: training stopped before the bad update, nothing saved after it; {kept}. "
        f"Lower the learning rate (train.lr is {lr:g}; try --set train.lr={lr / 4:g}), or check the data "
        "around this step"
    )


class NonFiniteGuard(TrainerCallback):
    """Refuses an optimizer step whose gradients hold NaN or inf."""

    def __init__(self, run_dir: Path, lr: float):
        self.run_dir, self.lr = run_dir, lr

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        for name, p in model.named_parameters():
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                what = f"gradient of {name} is not finite"
                raise non_finite_error(what, state.global_step + 1, self.run_dir, self.lr)


class UpdateRecorder(TrainerCallback):
    """Whether any optimizer step ran with a non-zero learning rate and a non-zero gradient.

    Only then must some lora_B be non-zero in the saved adapter: with warmup, step 1's learning
    rate is 0, so a one-step smoke run legitimately saves lora_B == 0; so does a GRPO run whose
    rewards never differed within a group (every advantage 0, every gradient 0).
    """

    def __init__(self) -> None:
        self.moved = False

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, model=None, **kw):
        if self.moved or optimizer is None or not any(g.get("lr", 0) > 0 for g in optimizer.param_groups):
            return
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.moved = any(p.grad is not None and bool(p.grad.any()) for p in params)


def check_loss(loss: torch.Tensor, step: int, run_dir: Path, lr: float) -> None:
    if not bool(torch.isfinite(loss).all()):
        raise non_finite_error(f"loss is {float(loss)}", step, run_dir, lr)


def is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(e, MemoryError)
    )


def smaller_batch(cfg: RunConfig, step: int, e: BaseException) -> RunConfig:
    """Half the micro-batch, twice the accumulation; a TrainingError when it cannot shrink."""
    t = cfg.train
    if t.batch_size <= 1:
        raise TrainingError(
            f"out of memory at step {step} with train.batch_size=1 ({type(e).__name__}): lower "
            f"data.max_length (now {cfg.data.max_length}), or set train.saved_activations=bf16 or "
            "model.gradient_checkpointing=true, or use a smaller model"
        )
    train = t.model_copy(update={"batch_size": t.batch_size // 2, "grad_accum": t.grad_accum * 2})
    log.warning(
        "out of memory at step %d with train.batch_size=%d: retrying from step %d with batch_size=%d, "
        "grad_accum=%d (effective batch %d -> %d); set these in the config to skip the retry",
        step + 1,
        t.batch_size,
        step,
        train.batch_size,
        train.grad_accum,
        t.batch_size * t.grad_accum,
        train.batch_size * train.grad_accum,
    )
    return cfg.model_copy(update={"train": train})
