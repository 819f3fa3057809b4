"""The SmoLoRA benchmark worker: one measurement in this process, its result printed as one JSON line.

`smolora bench` starts it once per measurement (bench/launch.py), so each has its own peak RSS.
The protocol is the peers' (`../shared/bench/peers.py`): batch 8, max length 512, answer-only
loss, LoRA r=16 alpha=32 dropout=0.05 on all 7 projections, in SmoLoRA's own precision for the
machine (`--set model.dtype=float32` for the float32 row); the clock opens at the end of the last
warm-up step and closes at the end of the last step; real tokens are the non-pad tokens of the
micro-batches in between. With --heldout the saved adapter is scored on those rows afterwards
(bench/heldout.py), once the peak RSS is read.

Run as:
    python -m smolora.bench.run train --model DIR --data bench.jsonl --steps 2 --warmup 1
    python -m smolora.bench.run generate --model DIR --data bench.jsonl --prompts 8
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
from transformers import TrainerCallback

# The two ways to the memory target: micro-batches (the same gradient, near the default's speed:
# docs/benchmarks.md) of 1 row per forward/backward pass in float32 and of 2 in bf16 (its
# activations take half: 2,864 MiB at 8 x 512 on a 2-core EPYC), and gradient checkpointing
# (recomputing every layer).
LOWMEM = {
    "micro": ["train.micro_batch=1"],  # bench_config makes it 2 where the run computes in bf16
    "checkpoint": ["model.gradient_checkpointing=true"],
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def bench_config(
    model_dir: Path,
    data: Path,
    out_dir: Path,
    steps: int,
    warmup: int,
    threads: int | None,
    lowmem: str | None = None,
    fuse: str | None = None,
    sets: list[str] | None = None,
):
    from smolora.config import load_config

    overrides = [
        f"model.name={model_dir}",
        f"data.path={data}",
        "data.max_length=512",
        "data.val_ratio=0",  # the peers train on every row
        "lora.r=16",
        "lora.alpha=32",
        "lora.dropout=0.05",
        f"lora.targets={json.dumps(TARGETS)}",
        "train.batch_size=8",
        "train.lr=2e-4",
        f"train.max_steps={warmup + steps}",
        f"train.save_every={warmup + steps + 1000}",  # no checkpoint inside the timed window
        f"output.dir={out_dir}",
        "output.name=bench",
    ]
    if threads:
        overrides.append(f"train.threads={threads}")
    overrides += LOWMEM.get(lowmem or "", [])
    if lowmem == "micro" and precision_of(load_config(None, overrides + list(sets or []))) == "bfloat16":
        overrides.append("train.micro_batch=2")
    if fuse:  # auto|true|false: `smolora bench --fusion` runs the other one beside the default
        overrides.append(f"train.fuse_projections={fuse}")
    return load_config(None, overrides + list(sets or []))  # --set: a variant to measure, last so it wins


def precision_of(cfg) -> str:
    """ "float32" or "bfloat16": what this run computes in on this machine (train/speed.py)."""
    from smolora.model.load import pick_device
    from smolora.train.speed import compute_dtype

    return str(compute_dtype(cfg, pick_device(cfg.model.device))).removeprefix("torch.")


def train_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Preprocess (fresh, then cached), then train warmup+steps steps with the peers' clock."""
    from smolora.data import prepare_data
    from smolora.model.load import load_tokenizer
    from smolora.train.recipe import train

    with tempfile.TemporaryDirectory(prefix="smolora-bench-") as tmp:
        os.environ["SMOLORA_HOME"] = tmp  # a fresh data cache: the first preparation is real work
        cfg = bench_config(
            Path(args.model),
            Path(args.data),
            Path(tmp) / "runs",
            args.steps,
            args.warmup,
            args.threads,
            args.lowmem,
            args.fuse,
            args.set,
        )
        tokenizer = load_tokenizer(args.model)
        t0 = time.perf_counter()
        fresh = prepare_data(cfg, tokenizer)
        t1 = time.perf_counter()
        cached = prepare_data(cfg, tokenizer)
        t2 = time.perf_counter()
        rows = fresh.stats["n_train"] + fresh.stats["n_val"]
        clock = Clock()
        # the last warm-up step: outside the clock
        profiler = Profiler(max(args.warmup, 1)) if args.profile else None
        run = train(cfg, show_progress=False, callbacks=[clock] + ([profiler] if profiler else []))
        peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        heldout = score_adapter(args.model, run / "adapter", Path(args.heldout)) if args.heldout else None
    a, b = args.warmup, args.warmup + args.steps
    wall = clock.ends[b] - clock.ends[a]
    real = clock.tokens[b] - clock.tokens[a]
    return {
        "real_tokens_per_s": round(real / wall, 2),
        "step_s": round(wall / args.steps, 3),
        "peak_rss_mib": peak,
        "first_loss": clock.losses[0] if clock.losses else None,
        "last_loss": clock.losses[-1] if clock.losses else None,
        "heldout_loss": heldout,
        "precision": precision_of(cfg),
        "threads": torch.get_num_threads(),
        "fuse_projections": cfg.train.fuse_projections,
        "sets": args.set,
        "steps": args.steps,
        "warmup": args.warmup,
        "rows": rows,
        "preprocess_s": round(t1 - t0, 3),
        "preprocess_examples_per_s": round(rows / (t1 - t0), 1),
        "cached_preprocess_s": round(t2 - t1, 3),
        "cached_hit": bool(cached.stats.get("cached")),
        "profile": profiler.table if profiler else None,
    }


def score_adapter(model_dir: str, adapter: Path, heldout: Path) -> float:
    """The held-out loss of the adapter just trained, on its float32 base (bench/heldout.py)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from smolora.bench.heldout import heldout_loss
    from smolora.model.load import load_tokenizer

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return heldout_loss(PeftModel.from_pretrained(base, str(adapter)), load_tokenizer(model_dir), heldout)


class Profiler(TrainerCallback):
    """torch.profiler over one optimizer step: the top operators by self CPU time."""

    def __init__(self, step: int, rows: int = 15):
        self.step, self.rows, self.prof = step, rows, None
        self.table: list[dict[str, Any]] | None = None

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step + 1 == self.step:
            from torch.profiler import ProfilerActivity, profile

            self.prof = profile(activities=[ProfilerActivity.CPU])
            self.prof.__enter__()

    def on_step_end(self, args, state, control, **kw):
        if self.prof is not None and state.global_step == self.step:
            self.prof.__exit__(None, None, None)
            events = self.prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events) or 1
            top = sorted(events, key=lambda e: -e.self_cpu_time_total)[: self.rows]
            self.table = [
                {"op": e.key, "share": round(e.self_cpu_time_total / total, 4), "calls": e.count} for e in top
            ]
            self.prof = None


class Clock(TrainerCallback):
    """The peers' clock: time and real-token count at the end of every optimizer step.

    train() sets `counter`, the dict the loss adds each micro-batch's non-pad tokens to.
    """

    def __init__(self) -> None:
        self.counter: dict[str, int] = {"tokens": 0}
        self.ends: dict[int, float] = {}
        self.tokens: dict[int, int] = {}
        self.losses: list[float] = []

    def on_step_end(self, args, state, control, **kw):
        self.ends[state.global_step] = time.perf_counter()
        self.tokens[state.global_step] = self.counter["tokens"]

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def load_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Time loading the model from the cache (safetensors), and optionally a fresh conversion."""
    from smolora.config import ModelSection
    from smolora.model.load import load_base

    out: dict[str, Any] = {}
    if args.convert:  # first time: GGUF -> safetensors in a fresh SMOLORA_HOME (~40 s)
        with tempfile.TemporaryDirectory(prefix="smolora-convert-") as tmp:
            os.environ["SMOLORA_HOME"] = tmp
            start = time.perf_counter()
            load_base(ModelSection(name=args.model), "cpu")
            out["first_load_s"] = round(time.perf_counter() - start, 2)
    if args.home:
        os.environ["SMOLORA_HOME"] = args.home
    # The first load in a fresh process includes importing the modelling code: that is what a
    # user waits for; the second is the load alone.
    for key in ("cached_load_s", "cached_reload_s"):
        start = time.perf_counter()
        load_base(ModelSection(name=args.model), "cpu")
        out[key] = round(time.perf_counter() - start, 2)
    return out


def generate_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Greedy generation of the same prompts one at a time and in one batch (KV cache both)."""
    import torch

    from smolora.generate import generate
    from smolora.model.load import load_for_inference

    model, tokenizer, _ = load_for_inference(args.model, "cpu")
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()[: args.prompts]]
    prompts = [r.get("instruction") or r.get("prompt") or r.get("question") for r in rows]
    generate(model, tokenizer, prompts[:1], max_new_tokens=4)  # warm-up
    result: dict[str, Any] = {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens}
    for name, batch_size in (("one_at_a_time", 1), ("batched", len(prompts))):
        # The prompt pass costs the same compute batched or not; time it alone (one new token) so
        # the report can say how much of the difference is decoding.
        start = time.perf_counter()
        generate(model, tokenizer, prompts, max_new_tokens=1, batch_size=batch_size)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        outs = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=batch_size)
        wall = time.perf_counter() - start
        tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) + 1 for o in outs)
        result[name] = {
            "tokens_per_s": round(tokens / wall, 2),
            "wall_s": round(wall, 2),
            "tokens": tokens,
            "prefill_s": round(prefill, 2),
            "decode_tokens_per_s": round((tokens - len(prompts)) / max(wall - prefill, 1e-6), 2),
        }
    result["speedup"] = round(result["batched"]["tokens_per_s"] / result["one_at_a_time"]["tokens_per_s"], 2)
    result["decode_speedup"] = round(
        result["batched"]["decode_tokens_per_s"] / result["one_at_a_time"]["decode_tokens_per_s"], 2
    )
    result["threads"] = torch.get_num_threads()
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m smolora.bench.run", description="One benchmark worker.")
    p.add_argument("worker", choices=["train", "load", "generate"])
    p.add_argument("--model", required=True)
    p.add_argument("--data")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--lowmem", choices=sorted(LOWMEM))
    p.add_argument("--fuse", choices=["auto", "true", "false"])
    p.add_argument("--heldout", help="score the adapter on these {instruction, output} rows afterwards")
    p.add_argument("--set", action="append", default=[], help="a config override, e.g. train.micro_batch=2")
    p.add_argument("--convert", action="store_true")
    p.add_argument("--home")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    worker = {"train": train_worker, "load": load_worker, "generate": generate_worker}[args.worker]
    result = worker(args)
    print("SMOLORA_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
