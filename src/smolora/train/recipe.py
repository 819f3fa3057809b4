"""The training recipe, top to bottom: config -> data -> model -> Trainer -> run directory.

A run directory holds `config.yaml` (resolved), `metrics.jsonl`, `train.log`,
`checkpoints/` (every `train.save_every` steps, the last `train.keep_checkpoints` kept) and
`adapter/` (PEFT format plus `smolora.json`: base model, its sha256, layer surgery, chat
template, data fingerprint, library versions).

Run as:
    from smolora.config import load_config
    from smolora.train.recipe import train
    run_dir = train(load_config("examples/quickstart.yaml"))
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainingArguments, set_seed

from smolora.config import RunConfig, save_config
from smolora.data import prepare_data
from smolora.data.collate import BucketSampler, Collator
from smolora.errors import TrainingError
from smolora.model.adapters import METHODS, save_weights, trainable_summary
from smolora.model.load import ADAPTER_META, load_base, physical_cores, pick_device
from smolora.model.loss import chunked_lm_loss
from smolora.model.store import read_manifest, resolve_model
from smolora.redact import mask_text
from smolora.runs import (
    fsync_dir,
    mark_run,
    previous_dir,
    publish_run,
    remove_run,
    require_marked,
    staged_runs,
    staging_dir,
)
from smolora.train.checkpoints import (
    STAGING,
    disk_full_error,
    fsync_tree,
    good_checkpoint,
    is_disk_full,
    publish,
    trim_metrics,
)
from smolora.train.distributed import (
    SyncStop,
    check_saved_weights,
    dist_state,
    full_state_dict,
    global_tokens,
    local_threads,
    on_main,
)
from smolora.train.guards import NonFiniteGuard, UpdateRecorder, check_loss, is_oom, smaller_batch
from smolora.train.progress import RunLogger, setup_logging
from smolora.train.speed import apply_fast_path, fast_path, load_unsloth, pick_batching
from smolora.train.stopping import StopOnSignal

log = logging.getLogger("smolora")
# transformers 5 warns about its own internal call inside Trainer; nothing for users to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


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
        **kw: Any,
    ):
        self.batching = batching  # read by _get_train_sampler, which super().__init__ may call
        self.staging = False  # True while a checkpoint is being written (see _save_checkpoint)
        super().__init__(*args, **kw)
        self.run_dir = run_dir if run_dir is not None else Path(self.args.output_dir).parent
        self.lr = lr
        self.loss_chunk = loss_chunk
        self.counter = counter if counter is not None else {"tokens": 0}
        self.synced: dict[str, int] = {}  # the global token count at the last log (several processes)
        # Our loss divides by the label count of the whole accumulated batch (num_items_in_batch),
        # so Trainer must count it and must not divide by the accumulation steps again.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
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

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        check_loss(loss, self.state.global_step + 1, self.run_dir, self.lr)  # NaN/inf: stop, say where
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
                publish(staged, root / f"checkpoint-{step}", step, self.args.save_total_limit)
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
        super().log(logs, *args, **kw)


def prepare_run_dir(cfg: RunConfig, resume: bool) -> Path:
    """The directory to train in: output.dir/name itself, or NAME.staging-<pid> beside a finished run.

    Nothing without the run marker is ever replaced. A finished run stays whole until its re-run
    succeeded (`publish_run`); a failed re-run leaves the old run as it was and its staging
    directory for --resume (or inspection).
    """
    run_dir = cfg.run_dir
    checkpoints = run_dir / "checkpoints"
    if resume:
        staged = [s for s, _ in staged_runs(run_dir) if good_checkpoint(s)[0] is not None]
        if staged:  # a re-run of a finished name that stopped or crashed: continue it
            return staged[0]
        checkpoint, skipped = good_checkpoint(run_dir)
        if checkpoint is None:
            why = "; ".join(f"{name}: {problem}" for name, problem in skipped)
            raise TrainingError(
                f"--resume: no complete checkpoint in {checkpoints}{f' ({why})' if why else ''}; "
                "start the run without --resume"
            )
        return run_dir
    for staged, alive in staged_runs(run_dir):
        if alive:
            continue  # another trainer of this name, still running: its directory, not ours
        if (staged / "checkpoints").exists():
            raise TrainingError(
                f"{staged} holds an unfinished re-run of {run_dir.name}; continue it with --resume, "
                "or remove it yourself to start afresh"
            )
        remove_run(staged)  # a re-run that failed before its first checkpoint: nothing to keep
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        mark_run(run_dir)  # new, or an empty folder the user made for it: nothing there to lose
        return run_dir
    require_marked(run_dir)
    if not (run_dir / "adapter" / ADAPTER_META).exists():
        if checkpoints.exists():
            raise TrainingError(
                f"{run_dir} holds an unfinished run; continue it with --resume, or start a fresh one with "
                f"--set output.name={cfg.output.name}-2"
            )
        remove_run(run_dir)  # a run that failed before its first checkpoint: nothing to keep
        mark_run(run_dir)
        return run_dir
    # A finished run with the same name: train beside it, replace it only on success.
    if previous_dir(run_dir).exists():
        require_marked(previous_dir(run_dir))  # refused now, not after the whole run
    staged = staging_dir(run_dir)
    mark_run(staged)
    return staged


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint, saying which newer ones are incomplete or corrupt."""
    checkpoint, skipped = good_checkpoint(run_dir)
    for name, problem in skipped:
        fallback = checkpoint.name if checkpoint else "none left"
        log.warning("skipping %s: %s; falling back to %s", name, problem, fallback)
    return checkpoint


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


def training_arguments(cfg: RunConfig, run_dir: Path, device: str, has_val: bool) -> TrainingArguments:
    t = cfg.train
    eval_strategy = "steps" if has_val and t.eval_every else "no"
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        logging_steps=t.log_every,
        save_strategy="steps",
        save_steps=t.save_every,
        save_total_limit=t.keep_checkpoints,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_every,
        prediction_loss_only=True,
        report_to=t.report_to or "none",
        run_name=cfg.output.name,
        seed=t.seed,
        data_seed=t.seed,
        use_cpu=device == "cpu",
        bf16=device == "cuda" and cfg.model.dtype in ("auto", "bfloat16") and torch.cuda.is_bf16_supported(),
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length"
        if batching_mode(cfg, device) == "grouped" and not cfg.data.streaming
        else "random",
        # A stream is sharded per rank (each reads its own part) instead of rank 0 reading for all.
        accelerator_config={"dispatch_batches": False} if cfg.data.streaming else None,
        length_column_name="length",
        # train.compile compiles the decoder layers (speed.compile_layers): our loss calls the
        # decoder directly, so a compiled wrapper around the whole model would never run.
        torch_compile=False,
        save_only_model=False,
        # Every trainable weight (LoRA A/B) gets a gradient each step: skip DDP's extra graph walk.
        ddp_find_unused_parameters=False,
    )


def batching_mode(cfg: RunConfig, device: str) -> str:
    """bucketed (equal-length rows together), or packed where flash-attention reads position_ids."""
    return pick_batching(cfg, device)


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


def library_versions() -> dict[str, str]:
    import peft
    import transformers

    import smolora

    return {
        "smolora": smolora.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def save_adapter(
    model, tokenizer, cfg: RunConfig, run_dir: Path, data: dict[str, Any], state_dict: dict | None = None
) -> Path:
    """PEFT adapter (or full weights) + tokenizer + smolora.json, written atomically.

    `state_dict`: the gathered weights when FSDP / ZeRO-3 sharded them (see distributed.py).
    """
    out = run_dir / "adapter"
    tmp = run_dir / "adapter.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        # PiSSA/OLoRA are converted to a LoRA that fits the untouched base
        save_weights(model, tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        (tmp / ADAPTER_META).write_text(json.dumps(adapter_meta(cfg, tokenizer, data), indent=2))
        fsync_tree(tmp)  # on disk before the rename that says the run is finished
    except Exception as e:  # any writer: torch, safetensors (SafetensorError), the json
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full_error(run_dir, 0, e, what=f"the adapter in {out}") from None
        raise
    if out.exists():  # a resumed run saves again: the old adapter goes only once the new one is whole
        old = run_dir / "adapter.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    fsync_dir(run_dir)
    return out


def adapter_meta(cfg: RunConfig, tokenizer, data: dict[str, Any]) -> dict[str, Any]:
    """adapter/smolora.json: what loading, serving and exporting need to rebuild the model's inputs."""
    manifest = read_manifest(resolve_model(cfg.model.name, cfg.model.revision)) or {}
    weights = manifest.get("files", {}).get("model.safetensors", {})
    return {
        "base_model": cfg.model.name,
        "base_sha256": weights.get("sha256") or manifest.get("source_sha256"),
        "method": cfg.lora.method,
        "drop_layers": cfg.model.drop_layers,
        "keep_layers": cfg.model.keep_layers,
        "chat_template": tokenizer.chat_template,
        # masked like config.yaml: a token pasted into the system prompt is not kept on disk
        "system_prompt": mask_text(cfg.data.system_prompt) if cfg.data.system_prompt else None,
        "data_fingerprint": data["fingerprint"],
        "data_format": data["format"],
        "versions": library_versions(),
    }


def checkpoint_after_oom(trainer: SmoLoRATrainer, run_dir: Path, previous: Path | None) -> Path | None:
    """Save the state at the last finished step (the failed step left only partial gradients)."""
    import gc

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
    return run_dir / "checkpoints" / f"checkpoint-{step}"


def train(
    cfg: RunConfig, resume: bool = False, show_progress: bool = True, callbacks: list | None = None
) -> Path:
    """Run the whole recipe and return the run directory.

    Under `smolora train --nproc N` (torchrun / accelerate launch) every process runs this; rank 0
    alone writes the run directory, its logs and the adapter (see distributed.py).
    """
    device = pick_device(cfg.model.device)
    state = dist_state(device)  # one process: a no-op; launched: joins the process group
    run_dir = on_main(state, lambda: prepare_run_dir(cfg, resume))
    if state.is_main_process:
        setup_logging(run_dir / "train.log", level=logging.getLogger("smolora").level or logging.INFO)
        save_config(cfg, run_dir / "config.yaml")
    else:
        logging.getLogger("smolora").setLevel(logging.WARNING)  # one voice: rank 0's
    tracking_env(cfg, run_dir)
    set_seed(cfg.train.seed)
    if device == "cpu":
        torch.set_num_threads(local_threads(cfg.train.threads, physical_cores()))

    # 1. model and tokenizer (layer surgery happens inside load_base, before any adapter)
    with state.local_main_process_first():  # a first-time model conversion happens once per node
        resolve_model(cfg.model.name, cfg.model.revision)
    unsloth = cfg.model.backend == "unsloth"  # loads the model and adds LoRA in one go (CUDA only)
    model, tokenizer = load_unsloth(cfg, device) if unsloth else load_base(cfg.model, device)
    log.info(
        "model %s: %d layers on %s (%s)", cfg.model.name, model.config.num_hidden_layers, device, model.dtype
    )

    # 2. data: read, detect, clean, split, render, mask, tokenize (cached by fingerprint)
    with state.local_main_process_first():  # the tokenization cache is built once, then read by all
        data = prepare_data(cfg, tokenizer)
    stats = data["stats"]
    log.info(
        "data: %s format, %s train / %d val rows%s",
        data["format"],
        stats["n_train"],
        stats["n_val"],
        " (from cache)" if stats.get("cached") else "",
    )

    # 3. the fine-tuning method (LoRA and relatives, full, freeze)
    if not unsloth:
        model = METHODS[cfg.lora.method](model, cfg.lora)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    trainable, total = trainable_summary(model)
    log.info(
        "method %s: %s trainable of %s parameters (%.2f%%)",
        cfg.lora.method,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )

    # 4. the trainer
    plan = fast_path(cfg, device)  # chosen per device: batching, dropout, compile, kernels
    model = apply_fast_path(model, plan)
    mode = plan["batching"]
    log.info("fast path: %s", ", ".join(f"{k}={v}" for k, v in plan.items() if v is not None))
    counter = {"tokens": 0}
    updates = UpdateRecorder()  # did any step change the weights? (what the saved adapter must show)
    stopper = StopOnSignal()  # Ctrl-C / SIGTERM / the UI's Stop: checkpoint, then stop

    def build_trainer(cfg: RunConfig) -> SmoLoRATrainer:  # built again by an out-of-memory retry
        trainer = SmoLoRATrainer(
            model=model,
            args=training_arguments(cfg, run_dir, device, data["val"] is not None),
            train_dataset=data["train"],
            eval_dataset=data["val"],
            data_collator=Collator(tokenizer.pad_token_id, packed=mode == "packed"),
            processing_class=tokenizer,
            optimizers=(loraplus_optimizer(model, cfg), None),
            loss_chunk=cfg.train.loss_chunk,
            counter=counter,
            batching=mode,
            run_dir=run_dir,
            lr=cfg.train.lr,
        )
        # Our RunLogger replaces transformers' printing of raw log dicts and its tqdm bar.
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(RunLogger(run_dir, counter, show_progress))
        trainer.add_callback(
            NonFiniteGuard(run_dir, cfg.train.lr)
        )  # a NaN gradient never reaches the weights
        for callback in callbacks or []:  # e.g. `smolora bench`'s step clock (callback.counter: real tokens)
            callback.counter = counter
            trainer.add_callback(callback)
        if cfg.eval.generate_every:  # a few held-out answers every N steps, into generations.jsonl
            from smolora.eval.evaluate import SampleGenerations

            trainer.add_callback(SampleGenerations(cfg, run_dir, tokenizer))
        trainer.add_callback(updates)
        trainer.add_callback(stopper)
        if state.num_processes > 1:
            trainer.add_callback(SyncStop(stopper))  # after the stopper: every rank stops at the same step
        return trainer

    # 5. train (resuming restores optimizer, scheduler, RNG and dataloader position)
    checkpoint = last_checkpoint(run_dir) if resume else None
    if checkpoint:
        log.info("resuming from %s", checkpoint)
        on_main(state, lambda: trim_metrics(run_dir, int(checkpoint.name.split("-")[-1])))
    with stopper.installed():
        while True:
            trainer = build_trainer(cfg)
            try:
                trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
                break
            except Exception as e:  # out of memory: a smaller micro-batch, from the last finished step
                if not is_oom(e):
                    raise
                if state.num_processes > 1:
                    raise TrainingError(
                        f"out of memory on rank {state.process_index} at step {trainer.state.global_step + 1}: "
                        f"lower train.batch_size (now {cfg.train.batch_size}) and raise train.grad_accum, "
                        f"or lower data.max_length (now {cfg.data.max_length})"
                    ) from None
                cfg = smaller_batch(cfg, trainer.state.global_step, e)
            checkpoint = checkpoint_after_oom(trainer, run_dir, checkpoint)
            save_config(cfg, run_dir / "config.yaml")  # a later --resume of this run starts at the new size
    if stopper.requested:
        log.warning(
            "stopped at step %d; checkpoint kept in %s", trainer.state.global_step, last_checkpoint(run_dir)
        )
        raise KeyboardInterrupt
    evaluated_last = any(
        "eval_loss" in h and h.get("step") == trainer.state.global_step for h in trainer.state.log_history
    )
    if data["val"] is not None and not evaluated_last:  # eval_every may have just landed on the last step
        trainer.evaluate()

    # 6. the result (FSDP / ZeRO-3: gather the shards on every rank, write on rank 0, then check it)
    weights = full_state_dict(trainer)
    adapter = on_main(state, lambda: save_adapter(model, tokenizer, cfg, run_dir, data, state_dict=weights))
    sharded = state.num_processes > 1
    on_main(state, lambda: check_saved_weights(adapter, model, trained=updates.moved, sharded=sharded))
    final = cfg.run_dir
    on_main(state, lambda: publish_run(run_dir, final))  # a re-run replaces the old run only now
    log.info("adapter saved to %s", final / "adapter")
    return final
