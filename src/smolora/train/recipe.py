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

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, ProgressCallback, TrainingArguments, set_seed

from smolora.config import RunConfig, save_config
from smolora.data import prepare_data
from smolora.errors import TrainingError
from smolora.eval.diagnose import diagnose_run, diagnosis_lines
from smolora.eval.evaluate import SampleGenerations
from smolora.eval.rewards import load_rewards
from smolora.logs import setup_logging
from smolora.model.adapters import METHODS, continue_adapter, start_adapter, trainable_summary
from smolora.model.load import load_base, physical_cores, pick_device, precision_line
from smolora.model.store import resolve_model
from smolora.model.unsloth import load_unsloth
from smolora.runs import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    is_adapter_dir,
    mark_run,
    previous_dir,
    publish_run,
    remove_run,
    require_marked,
    staged_runs,
    staging_dir,
)
from smolora.train.best import evaluation, keep_best
from smolora.train.checkpoints import good_checkpoint, trim_metrics
from smolora.train.distributed import (
    SyncStop,
    check_saved_weights,
    dist_state,
    full_state_dict,
    local_threads,
    on_main,
)
from smolora.train.guards import NonFiniteGuard, UpdateRecorder, is_oom, smaller_batch
from smolora.train.preference import REFERENCE, collator, reference_logps
from smolora.train.progress import RunLogger, tracking_env
from smolora.train.result import save_adapter
from smolora.train.schedule import StepClock, resolve_schedule
from smolora.train.speed import apply_fast_path, fast_path, trains_adapter
from smolora.train.stopping import StopOnSignal
from smolora.train.trainer import SmoLoRATrainer, checkpoint_after_oom, loraplus_optimizer

log = logging.getLogger("smolora")
# transformers 5 warns about its own internal call inside Trainer; nothing for users to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


def prepare_run_dir(cfg: RunConfig, resume: bool) -> Path:
    """The directory to train in: output.dir/name itself, or NAME.staging-<pid> beside a finished run.

    Nothing without the run marker is ever replaced. A finished run stays whole until its re-run
    succeeded (`publish_run`); a failed re-run leaves the old run as it was and its staging
    directory for --resume (or inspection).
    """
    run_dir = cfg.run_dir
    checkpoints = run_dir / CHECKPOINTS_DIR
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
        if (staged / CHECKPOINTS_DIR).exists():
            raise TrainingError(
                f"{staged} holds an unfinished re-run of {run_dir.name}; continue it with --resume, "
                "or remove it yourself to start afresh"
            )
        remove_run(staged)  # a re-run that failed before its first checkpoint: nothing to keep
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        mark_run(run_dir)  # new, or an empty folder the user made for it: nothing there to lose
        return run_dir
    require_marked(run_dir)
    if not is_adapter_dir(run_dir / ADAPTER_DIR):
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


def training_arguments(
    cfg: RunConfig, run_dir: Path, plan: dict[str, Any], has_val: bool
) -> TrainingArguments:
    """transformers' arguments for this run; batching and bf16 as the fast path `plan` chose them.

    `cfg` has its schedule resolved (schedule.apply_schedule): epochs, lr and eval_every are numbers.
    """
    t = cfg.train
    eval_strategy = "steps" if has_val and t.eval_every else "no"
    return TrainingArguments(
        output_dir=str(run_dir / CHECKPOINTS_DIR),
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
        use_cpu=plan["device"] == "cpu",
        bf16=plan["bf16"],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length"
        if plan["batching"] == "grouped" and not cfg.data.streaming
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


def start_logging(cfg: RunConfig, run_dir: Path, state) -> None:
    """train.log and the resolved config.yaml from rank 0 (the others stay quiet); trackers into run_dir."""
    if state.is_main_process:
        setup_logging(run_dir / "train.log", level=logging.getLogger("smolora").level or logging.INFO)
        save_config(cfg, run_dir / CONFIG_FILE)
    else:
        logging.getLogger("smolora").setLevel(logging.WARNING)  # one voice: rank 0's
    tracking_env(cfg, run_dir)


def add_method(model, cfg: RunConfig, unsloth: bool):
    """The fine-tuning method (LoRA and relatives, full, freeze), or the adapter a run continues,
    and gradient checkpointing."""
    if cfg.model.adapter:
        model = continue_adapter(model, cfg.model)
        log.info("continuing the adapter of %s", cfg.model.adapter)
    elif not unsloth:  # Unsloth added its LoRA while loading
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
    return model


def diagnosis(cfg: RunConfig, run_dir: Path, best: dict | None) -> list[dict]:
    """What the loss curves say about the schedule (eval/diagnose.py), into the log and smolora.json."""
    findings = diagnose_run(run_dir, cfg, best)
    for line in diagnosis_lines(findings):
        (log.warning if findings else log.info)("diagnosis: %s", line)
    return findings


def with_callbacks(trainer: SmoLoRATrainer, callbacks: list) -> SmoLoRATrainer:
    # Our RunLogger replaces transformers' printing of raw log dicts and its tqdm bar.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer


def train(
    cfg: RunConfig, resume: bool = False, show_progress: bool = True, callbacks: list | None = None
) -> Path:
    """Run the whole recipe and return the run directory.

    Under `smolora train --nproc N` (torchrun / accelerate launch) every process runs this; rank 0
    alone writes the run directory, its logs and the adapter (see distributed.py).
    """
    device = pick_device(cfg.model.device)
    rewards = load_rewards(cfg.train.rewards) if cfg.train.objective == "grpo" else []  # fail before loading
    if cfg.model.adapter:  # the run it continues: its method is this run's
        _, start = start_adapter(cfg.model)
        cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"method": start.method})})
    state = dist_state(device)  # one process: a no-op; launched: joins the process group
    run_dir = on_main(state, lambda: prepare_run_dir(cfg, resume))
    start_logging(cfg, run_dir, state)
    set_seed(cfg.train.seed)
    if device == "cpu":
        torch.set_num_threads(local_threads(cfg.train.threads, physical_cores()))

    # 1. model and tokenizer (layer surgery happens inside load_base, before any adapter)
    with state.local_main_process_first():  # a first-time model conversion happens once per node
        resolve_model(cfg.model.name, cfg.model.revision)
    unsloth = cfg.model.backend == "unsloth"  # loads the model and adds LoRA in one go (CUDA only)
    own = unsloth and cfg.model.dtype == "auto"  # Unsloth picks for auto itself (model/unsloth.py)
    log.info(
        "precision: %s",
        "Unsloth's own (model.dtype=auto)"
        if own
        else precision_line(cfg.model.dtype, device, trains_adapter(cfg)),
    )
    model, tokenizer = (
        load_unsloth(cfg, device) if unsloth else load_base(cfg.model, device, trains_adapter(cfg))
    )
    log.info(
        "model %s: %d layers on %s (%s)", cfg.model.name, model.config.num_hidden_layers, device, model.dtype
    )

    # 2. data: read, detect, clean, split, render, mask, tokenize (cached by fingerprint)
    if cfg.data.task == "memorize" and cfg.data.val_ratio:
        log.info("data.task=memorize: every row is trained on (data.val_ratio %g -> 0)", cfg.data.val_ratio)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"val_ratio": 0.0})})
    with state.local_main_process_first():  # the tokenization cache is built once, then read by all
        data = prepare_data(cfg, tokenizer)
    cached = " (from cache)" if data.stats.get("cached") else ""
    log.info(
        "data: %s format, %s train / %d val rows%s",
        data.format,
        data.stats["n_train"],
        data.stats["n_val"],
        cached,
    )

    # 3. the schedule (epochs, lr, eval cadence) where the config says auto, then the method
    cfg, schedule = resolve_schedule(cfg, run_dir, data, model.num_parameters(), state)
    model = add_method(model, cfg, unsloth)

    # 4. the trainer
    plan = fast_path(cfg, device)  # chosen per device: batching, bf16, dropout, compile, kernels
    if cfg.train.objective != "sft" and plan["batching"] == "packed":
        plan["batching"] = "bucketed"  # chosen and rejected are compared row by row: no packing
    model = apply_fast_path(model, plan)
    if cfg.train.objective in REFERENCE:  # the starting policy's log-probabilities, once, before training
        data = reference_logps(model, data, cfg, tokenizer.pad_token_id)
    log.info("fast path: %s", ", ".join(f"{k}={v}" for k, v in plan.items() if v is not None))
    counter = {"tokens": 0}
    for callback in callbacks or []:  # e.g. `smolora bench`'s step clock (callback.counter: real tokens)
        callback.counter = counter
    updates = UpdateRecorder()  # did any step change the weights? (what the saved adapter must show)
    stopper = StopOnSignal()  # Ctrl-C / SIGTERM / the UI's Stop: checkpoint, then stop
    sync = (
        [SyncStop(stopper)] if state.num_processes > 1 else []
    )  # after the stopper: all ranks stop together
    eval_set, scorer, best = evaluation(cfg, data, tokenizer)  # what picks the best checkpoint

    def build_trainer(cfg: RunConfig) -> SmoLoRATrainer:  # built again by an out-of-memory retry
        trainer = SmoLoRATrainer(
            model=model,
            args=training_arguments(cfg, run_dir, plan, eval_set is not None),
            train_dataset=data.train,
            eval_dataset=eval_set,
            data_collator=collator(cfg, tokenizer.pad_token_id, plan),
            processing_class=tokenizer,
            optimizers=(loraplus_optimizer(model, cfg), None),
            loss_chunk=cfg.train.loss_chunk,
            counter=counter,
            batching=plan["batching"],
            run_dir=run_dir,
            lr=cfg.train.lr,
            scorer=scorer,
            best=best,
            objective=cfg.train,
            rewards=rewards,
            micro_batch=cfg.train.micro_batch,
        )
        # a few held-out answers every N steps, into generations.jsonl
        samples = [SampleGenerations(cfg, run_dir, tokenizer)] if cfg.eval.generate_every else []
        guard = NonFiniteGuard(run_dir, cfg.train.lr)  # a NaN gradient never reaches the weights
        logger = RunLogger(run_dir, counter, show_progress)
        picks = [best] if best is not None else []
        clock = StepClock()
        extra = [*(callbacks or []), *samples, *picks, clock]
        return with_callbacks(trainer, [logger, guard, *extra, updates, stopper, *sync])

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
            save_config(cfg, run_dir / CONFIG_FILE)  # a later --resume of this run starts at the new size
    if stopper.requested:
        log.warning(
            "stopped at step %d; checkpoint kept in %s", trainer.state.global_step, last_checkpoint(run_dir)
        )
        raise KeyboardInterrupt
    evaluated_last = any(
        "eval_loss" in h and h.get("step") == trainer.state.global_step for h in trainer.state.log_history
    )
    if eval_set is not None and not evaluated_last:  # eval_every may have just landed on the last step
        trainer.evaluate()
    outcome = {"schedule": schedule, "best": keep_best(trainer, best, run_dir)}
    outcome["diagnosis"] = on_main(state, lambda: diagnosis(cfg, run_dir, outcome["best"]))

    # 6. the result (FSDP / ZeRO-3: gather the shards on every rank, write on rank 0, then check it)
    weights = full_state_dict(trainer)
    adapter = on_main(
        state, lambda: save_adapter(model, tokenizer, cfg, run_dir, data, state_dict=weights, outcome=outcome)
    )
    sharded = state.num_processes > 1
    on_main(state, lambda: check_saved_weights(adapter, model, trained=updates.moved, sharded=sharded))
    final = cfg.run_dir
    on_main(state, lambda: publish_run(run_dir, final))  # a re-run replaces the old run only now
    log.info("adapter saved to %s", final / ADAPTER_DIR)
    return final
