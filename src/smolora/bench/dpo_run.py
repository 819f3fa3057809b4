"""The DPO benchmark workers: SmoLoRA's `train.objective: dpo` or TRL's DPOTrainer, one per process.

Both train the same pairs (bench/dpo.py writes them) with the same settings: LoRA r=16
alpha=32 dropout 0 on all 7 projections (TRL's DPOTrainer turns dropout off by default,
disable_dropout=True, so 0 on both sides is the same computation), float32, gradient
checkpointing off, batch 4 pairs, max length 256, lr 2e-4, beta 0.1, sigmoid loss. TRL keeps
its default precompute_ref_log_probs=False (a reference forward with the adapter disabled in
every step); SmoLoRA computes the reference log-probabilities once before training, timed
here as `reference_s`. The clock is the SFT bench's: it opens at the end of the last warm-up
step and closes at the end of the last step; real tokens are the non-pad tokens of chosen and
rejected in the batches in between. One JSON line with the prefix "SMOLORA_RESULT ".

Run as:
    python -m smolora.bench.dpo_run ours --model DIR --data pairs.jsonl --steps 2 --warmup 1
    python -m smolora.bench.dpo_run trl --model DIR --data pairs.jsonl --steps 2 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from smolora.bench.run import TARGETS, Clock

BATCH, MAX_LENGTH, LR, BETA, RANK = 4, 256, 2e-4, 0.1, 16


def ours(args: argparse.Namespace) -> dict[str, Any]:
    """SmoLoRA's DPO, its one-time reference pass timed separately."""
    import smolora.train.recipe as recipe
    from smolora.config import load_config

    timing: dict[str, float] = {}
    original = recipe.reference_logps

    def timed_reference(*a, **kw):  # the one pass over every pair before training: our extra cost
        start = time.perf_counter()
        out = original(*a, **kw)
        timing["reference_s"] = time.perf_counter() - start
        return out

    recipe.reference_logps = timed_reference
    with tempfile.TemporaryDirectory(prefix="smolora-bench-dpo-") as tmp:
        os.environ["SMOLORA_HOME"] = tmp
        overrides = [
            f"model.name={args.model}",
            f"data.path={args.data}",
            f"data.max_length={MAX_LENGTH}",
            "data.val_ratio=0",
            f"lora.r={RANK}",
            f"lora.alpha={2 * RANK}",
            "lora.dropout=0",
            f"lora.targets={json.dumps(TARGETS)}",
            "train.objective=dpo",
            f"train.beta={BETA}",
            "train.loss_type=sigmoid",
            f"train.batch_size={BATCH}",
            f"train.lr={LR}",
            f"train.max_steps={args.warmup + args.steps}",
            f"train.save_every={args.warmup + args.steps + 1000}",
            f"output.dir={Path(tmp) / 'runs'}",
            "output.name=bench-dpo",
        ]
        if args.threads:
            overrides.append(f"train.threads={args.threads}")
        clock = Clock()
        recipe.train(load_config(None, overrides), show_progress=False, callbacks=[clock])
    return result(clock.ends, clock.tokens, clock.losses, args, timing.get("reference_s", 0.0))


def trl(args: argparse.Namespace) -> dict[str, Any]:
    """TRL's DPOTrainer as a user would configure it on a CPU: float32, no checkpointing."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    set_seed(42)
    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    ds = Dataset.from_dict(
        {  # conversational, so the chat template renders them as it does for us
            "prompt": [[{"role": "user", "content": r["prompt"]}] for r in rows],
            "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in rows],
            "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in rows],
        }
    )
    lora = LoraConfig(
        r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
    )
    with tempfile.TemporaryDirectory(prefix="trl-dpo-") as out:
        cfg = DPOConfig(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            learning_rate=LR,
            max_steps=args.warmup + args.steps,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=42,
            data_seed=42,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
            dataloader_num_workers=0,
            bf16=False,  # TRL turns bf16 on by default where the CPU supports it
            gradient_checkpointing=False,  # and checkpointing on by default
            max_length=MAX_LENGTH,
            beta=BETA,
            loss_type=["sigmoid"],
            precompute_ref_log_probs=False,  # its default, said aloud
        )
        clock = Clock()
        trainer = counting(DPOTrainer, clock.counter)(
            model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora, callbacks=[clock]
        )
        trainer.train()
    return result(clock.ends, clock.tokens, clock.losses, args, 0.0)


def counting(base, counter: dict[str, int]):
    """The trainer, adding each micro-batch's non-pad tokens (chosen and rejected) to `counter`."""

    class Counting(base):
        def training_step(self, model, inputs, *a, **kw):
            counter["tokens"] += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *a, **kw)

    return Counting


def result(ends, tokens, losses, args, reference_s: float) -> dict[str, Any]:
    """tokens/s over the timed steps, and with the reference pass's share of them in the time.

    The pairs are exactly the ones the steps train on (one epoch), so the timed steps' share of
    the reference pass is reference_s x steps / (warmup + steps).
    """
    a, b = args.warmup, args.warmup + args.steps
    wall, real = ends[b] - ends[a], tokens[b] - tokens[a]
    ref_share = reference_s * args.steps / b
    return {
        "real_tokens_per_s": round(real / wall, 2),
        "with_reference_tokens_per_s": round(real / (wall + ref_share), 2),
        "reference_s": round(reference_s, 2),
        "step_s": round(wall / args.steps, 3),
        "real_tokens": real,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "warmup": args.warmup,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m smolora.bench.dpo_run", description="One DPO bench worker.")
    p.add_argument("side", choices=["ours", "trl"])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"ours": ours, "trl": trl}[args.side](args)
    print("SMOLORA_RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
