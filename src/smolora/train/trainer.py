"""transformers' Trainer with SmoLoRA's loss, sampler and checkpoints, and the optimizer it is given.

The loss runs the lm head only at labelled positions, in chunks (model/loss.py), and is
normalised by the label count of the whole accumulated batch; buckets of equal-length rows
come from data/collate.py; checkpoints are written into `checkpoints/.staging` and renamed
into place (train/checkpoints.py).

Run as:
    trainer = SmoLoRATrainer(model=model, args=args, train_dataset=data.train, loss_chunk=1024)
    trainer.train()
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from smolora.config import RunConfig, TrainSection
from smolora.data.collate import BucketSampler
from smolora.model.loss import chunked_lm_loss
from smolora.runs import CHECKPOINTS_DIR
from smolora.train.checkpoints import STAGING, disk_full_error, is_disk_full, publish
from smolora.train.distributed import global_tokens
from smolora.train.grpo import grpo_loss
from smolora.train.guards import check_loss
from smolora.train.preference import preference_loss


class SmoLoRATrainer(Trainer):
    """transformers' Trainer with our loss: lm head only at labelled positions, in chunks."""

    def __init__(
        self,
        *args: Any,
        loss_chunk: int = 1024,
        counter: dict[str, int] | None = None,
        batching: str = "bucketed",
        run_dir: Path | None = None,
        lr: float = 0.0,
        scorer: Callable[[Any], dict[str, float]] | None = None,
        best: Any = None,
        objective: TrainSection | None = None,
        rewards: list | None = None,
        micro_batch: int | None = None,
        **kw: Any,
    ):
        self.batching = batching  # read by _get_train_sampler, which super().__init__ may call
        self.staging = False  # True while a checkpoint is being written (see _save_checkpoint)
        super().__init__(*args, **kw)
        self.run_dir = run_dir if run_dir is not None else Path(self.args.output_dir).parent
        self.lr = lr
        self.scorer = scorer  # generation metrics added to each evaluation (train/best.py)
        self.best = best  # train/best.py's BestCheckpoint: its step's checkpoint is never trimmed
        self.loss_chunk = loss_chunk
        self.counter = counter if counter is not None else {"tokens": 0}
        self.synced: dict[str, int] = {}  # the global token count at the last log (several processes)
        # sft, or the preference / reward objective (train/preference.py, train/grpo.py) and its settings
        self.objective = objective if objective is not None and objective.objective != "sft" else None
        self.rewards = rewards or []
        self.micro_batch = micro_batch if self.objective is None else None  # rows per forward (sft)
        self.logged: dict[str, dict[str, list[float]]] = {
            "train": {},
            "eval": {},
        }  # their metrics, until logged
        # Our SFT loss divides by the label count of the whole accumulated batch (num_items_in_batch),
        # so Trainer must count it and must not divide by the accumulation steps again; the
        # preference losses are means over the micro-batch, which Trainer divides as usual.
        self.model_accepts_loss_kwargs = self.objective is None

    def _run_epoch(self, *args, **kwargs):
        # transformers checks "enough steps?" only after a step, so resuming from a checkpoint saved at
        # the very end (a crash between it and the adapter save) would train one step past the
        # schedule; with nothing left to do the epoch is skipped and the run goes on to save.
        if self.state.max_steps and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.objective is not None:
            return self.objective_loss(model, inputs, return_outputs)
        mask = inputs.get("attention_mask")
        if model.training:
            self.counter["tokens"] += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        total, n = chunked_lm_loss(
            model,
            inputs["input_ids"],
            mask,
            inputs["labels"],
            chunk=self.loss_chunk,
            position_ids=inputs.get("position_ids"),
            plain=self.is_fsdp_enabled or self.is_deepspeed_enabled,
        )
        denominator = num_items_in_batch if num_items_in_batch is not None else max(n, 1)
        loss = total / denominator
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch counts the labels of all ranks and DDP averages the gradients over
            # ranks: scale back up so N processes x batch b step like 1 process x batch N*b.
            loss = loss * self.accelerator.num_processes
        return (loss, {"loss": loss}) if return_outputs else loss

    def objective_loss(self, model, inputs, return_outputs=False):
        """The preference or reward objective's loss; its metrics are kept for the next log."""
        t, plain = self.objective, self.is_fsdp_enabled or self.is_deepspeed_enabled
        if t.objective == "grpo":
            loss, metrics = grpo_loss(model, inputs, t, self.rewards, self.processing_class, self.loss_chunk)
        else:
            loss, metrics = preference_loss(model, inputs, t, self.loss_chunk, plain)
        tokens = metrics.pop("tokens", None)
        if model.training:
            mask = inputs.get("attention_mask", inputs.get("prompt_mask"))
            self.counter["tokens"] += int(tokens if tokens is not None else mask.sum())
        for key, value in metrics.items():
            self.logged["train" if model.training else "eval"].setdefault(key, []).append(value)
        return (loss, {"loss": loss}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if self.objective is None:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.objective_loss(model, inputs)
        return loss.detach(), None, None

    def _drain(self, mode: str, prefix: str = "") -> dict[str, float]:
        kept, self.logged[mode] = self.logged[mode], {}
        return {f"{prefix}{k}": round(sum(v) / len(v), 6) for k, v in kept.items() if v}

    def evaluation_loop(self, *args, **kwargs):
        # Added here, before Trainer logs the metrics: they land in log_history (and so in
        # checkpoints, for a resumed run's best-checkpoint choice), metrics.jsonl and on_evaluate.
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        if self.scorer is not None:
            output.metrics.update({f"{prefix}_{k}": v for k, v in self.scorer(self.model).items()})
        output.metrics.update(self._drain("eval", f"{prefix}_"))
        return output

    def training_step(self, model, inputs, num_items_in_batch=None):
        # preference/reward batches have no input_ids; micro_batch is None for them
        if not self.micro_batch or self.micro_batch >= len(inputs["input_ids"]) or num_items_in_batch is None:
            loss = super().training_step(model, inputs, num_items_in_batch)
        else:
            loss = self.micro_steps(model, inputs, num_items_in_batch)
        check_loss(loss, self.state.global_step + 1, self.run_dir, self.lr)  # NaN/inf: stop, say where
        return loss

    def micro_steps(self, model, inputs, num_items_in_batch):
        """Forward and backward `micro_batch` rows at a time: only their activations are alive at
        once, and as each part's loss is divided by the label count of the whole batch, the
        gradients add up to the whole batch's (up to float rounding; dropout masks differ)."""
        rows = inputs["input_ids"].shape[0]
        starts = range(0, rows, self.micro_batch)
        loss = None
        for i, start in enumerate(starts):
            part = {
                k: v[start : start + self.micro_batch] if torch.is_tensor(v) else v for k, v in inputs.items()
            }
            mask = part.get("attention_mask")
            if mask is not None and "position_ids" not in part:
                # bucketed rows are padded on the right to the longest of the batch: cut to this part's
                width = int(mask.sum(1).max())
                part = {
                    k: v[:, :width] if torch.is_tensor(v) and v.dim() == 2 else v for k, v in part.items()
                }
            # all but the last part: no gradient all-reduce between processes yet
            sync = i == len(starts) - 1
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(model):
                step = super().training_step(model, part, num_items_in_batch)
            loss = step if loss is None else loss + step
        return loss

    def _get_output_dir(self, trial=None) -> str:
        root = super()._get_output_dir(trial)
        return os.path.join(root, STAGING) if self.staging else root

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint, written into checkpoints/.staging and renamed into place with a manifest."""
        root, step = Path(self._get_output_dir(trial)), self.state.global_step
        staged = root / STAGING / f"checkpoint-{step}"
        if self.args.should_save:
            shutil.rmtree(root / STAGING, ignore_errors=True)  # what a crash mid-write left behind
        self.accelerator.wait_for_everyone()
        self.staging = True
        try:
            super()._save_checkpoint(model, trial)
        except Exception as e:  # any writer: torch (OSError, RuntimeError), safetensors (SafetensorError)
            shutil.rmtree(root / STAGING, ignore_errors=True)
            if is_disk_full(e):
                raise disk_full_error(self.run_dir, step, e) from None
            raise
        finally:
            self.staging = False
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            try:
                best = self.best.best_step(self.state) if self.best is not None else None
                publish(staged, root / f"checkpoint-{step}", step, self.args.save_total_limit, protect=best)
            except Exception as e:
                shutil.rmtree(root / STAGING, ignore_errors=True)
                if is_disk_full(e):
                    raise disk_full_error(self.run_dir, step, e) from None
                raise
        self.accelerator.wait_for_everyone()

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        columns = getattr(dataset, "column_names", None) or []
        if self.batching != "bucketed" or "length" not in columns:
            return super()._get_train_sampler(train_dataset)  # grouped / random / streams
        # Buckets of one micro-batch: each one is padded on its own.
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return BucketSampler(dataset["length"], self.args.per_device_train_batch_size, seed)

    def log(self, logs: dict[str, float], *args: Any, **kw: Any) -> None:
        global_tokens(self.counter, self.synced)  # every rank logs at the same steps: tokens/s is global
        if "loss" in logs:  # a training log: the objective's metrics since the last one
            logs = {**logs, **self._drain("train")}
        super().log(logs, *args, **kw)


def loraplus_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer | None:
    if not cfg.lora.plus_ratio:
        return None
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=cfg.train.lr,
        loraplus_lr_ratio=cfg.lora.plus_ratio,
        weight_decay=cfg.train.weight_decay,
    )


def checkpoint_after_oom(trainer: SmoLoRATrainer, run_dir: Path, previous: Path | None) -> Path | None:
    """Save the state at the last finished step (the failed step left only partial gradients)."""
    trainer.model.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    step = trainer.state.global_step
    if step == 0:
        return None  # nothing learnt yet: start again
    if previous is not None and previous.name == f"checkpoint-{step}":
        return previous
    trainer._save_checkpoint(trainer.model, trial=None)
    return run_dir / CHECKPOINTS_DIR / f"checkpoint-{step}"
