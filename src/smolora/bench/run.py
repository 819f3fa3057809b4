"""Measure SmoLoRA against the scripts a user would run instead, on the same model and data.

Every training run (SmoLoRA's and each peer's) is its own process, one after another, so
peak RSS (ru_maxrss) is comparable and no run slows another. The protocol is the peers'
(`../shared/bench/peers.py`): batch 8, max length 512, answer-only loss, LoRA r=16
alpha=32 dropout=0.05 on all 7 projections, float32; the clock opens at the end of the last
warm-up step and closes at the end of the last step; real tokens are the non-pad tokens of
the micro-batches in between.

Also here: the fp32 matmul peak on the model's own shapes (the ceiling a training step can
reach), model load time, preprocessing examples/s and generation tokens/s.

Run as:
    smolora bench --steps 10 --warmup 2 --json bench.json
    python -m smolora.bench.run train --model DIR --data bench.jsonl --steps 2 --warmup 1   # one worker
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[3]
PEER_MODES = ["naive", "dynamic", "grouped", "trl", "trl-pack"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def shared_bench_dir() -> Path | None:
    """The peers' directory: $SMOLORA_BENCH_DIR, or ../shared/bench next to the repository."""
    for candidate in (os.environ.get("SMOLORA_BENCH_DIR"), REPO.parent / "shared" / "bench"):
        if candidate and (Path(candidate) / "peers.py").exists():
            return Path(candidate)
    return None


def machine() -> dict[str, Any]:
    import peft
    import torch
    import transformers

    from smolora.model.load import physical_cores

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    versions.update(transformers=transformers.__version__, peft=peft.__version__)
    try:
        import trl

        versions["trl"] = trl.__version__
    except ImportError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "avx512": " avx512f " in flags,
        "amx": " amx_tile " in flags,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "cuda": torch.cuda.is_available(),
        "versions": versions,
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def matmul_peak(model_dir: Path, tokens: int = 1536, seconds: float = 0.5) -> dict[str, Any]:
    """fp32 GFLOP/s of `x @ W^T` for every linear shape of the model, at `tokens` rows.

    The peak is the best shape; the weighted mean weighs each shape by its FLOPs in one
    forward pass (what a training step actually runs).
    """
    import torch

    cfg = json.loads((model_dir / "config.json").read_text())
    d, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * cfg.get(
        "head_dim", d // cfg["num_attention_heads"]
    )
    shapes = {  # (in, out): times per layer
        (d, d): 2,
        (d, kv): 2,
        (d, ff): 2,
        (ff, d): 1,
    }
    layers = cfg["num_hidden_layers"]
    rates, weights = {}, {}
    for (k, m), per_layer in [*shapes.items(), ((d, v), 0)]:
        x, w = torch.randn(tokens, k), torch.randn(m, k)
        x @ w.T
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            x @ w.T
            n += 1
        rate = 2 * tokens * k * m * n / (time.perf_counter() - start) / 1e9
        rates[f"{k}x{m}"] = round(rate, 1)
        weights[f"{k}x{m}"] = 2 * k * m * (per_layer * layers or 1)
    mean = sum(weights.values()) / sum(weights[s] / rates[s] for s in rates)
    return {
        "peak_gflops": max(rates.values()),
        "weighted_gflops": round(mean, 1),
        "per_shape": rates,
        "tokens": tokens,
        "threads": torch.get_num_threads(),
    }


def model_flops_per_token(model_dir: Path) -> float:
    """Nominal training FLOPs per token: 4 x parameters (2 forward, 2 for the input gradients;
    LoRA needs no gradient for the frozen weights)."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        n = sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118
    return 4.0 * n


# --- subprocess runners ------------------------------------------------------------------------


def run_json_process(cmd: list[str], marker: str, timeout: float | None = None) -> dict[str, Any]:
    """Run `cmd`; return the JSON after `marker` on its output, or {"error": ...}.

    The 1-minute load average at the start and the end goes with it: on a shared machine it
    says how much of the CPUs this tool had.
    """
    start, load = time.perf_counter(), os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall_s": round(time.perf_counter() - start, 1)}
    info = {
        "wall_s": round(time.perf_counter() - start, 1),
        "load": [round(load, 2), round(os.getloadavg()[0], 2)],
    }
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(marker):
            return {**json.loads(line[len(marker) :]), **info}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail), **info}


def run_peer(
    mode: str,
    model_dir: Path,
    data: Path,
    steps: int,
    warmup: int,
    peers_dir: Path,
    threads: int | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"peer-{mode}-") as out:
        cmd = [sys.executable, str(peers_dir / "peers.py"), "--mode", mode, "--model", str(model_dir)]
        cmd += ["--data", str(data), "--steps", str(steps), "--warmup", str(warmup), "--out", out]
        if threads:
            cmd += ["--threads", str(threads)]
        result = run_json_process(cmd, "PEER_RESULT ")
    return {"name": mode, **result}


def worker_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "smolora.bench.run", *args]


def serve_bench(model_dir: Path, n: int = 32, concurrency: int = 8) -> dict[str, Any]:
    """benchmarks/serve_load.py's run_serve_bench, when that file is in this checkout."""
    path = REPO / "benchmarks" / "serve_load.py"
    if not path.exists():
        return {"error": f"{path} not found (the serve load test is not in this checkout)"}
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_load", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.run_serve_bench(str(model_dir), n=n, concurrency=concurrency)
    except Exception as e:  # a benchmark of someone else's server must not lose the training numbers
        return {"error": f"{type(e).__name__}: {e}"}


def run_smolora(
    model_dir: Path,
    data: Path,
    steps: int,
    warmup: int,
    threads: int | None = None,
    profile: bool = False,
    lowmem: bool = False,
) -> dict[str, Any]:
    """SmoLoRA's default fast path, or (lowmem) with gradient checkpointing for memory."""
    cmd = worker_command(["train", "--model", str(model_dir), "--data", str(data)])
    cmd += ["--steps", str(steps), "--warmup", str(warmup)]
    if threads:
        cmd += ["--threads", str(threads)]
    if profile:
        cmd += ["--profile"]
    if lowmem:
        cmd += ["--lowmem"]
    name = "smolora-lowmem" if lowmem else "smolora"
    return {"name": name, **run_json_process(cmd, "SMOLORA_RESULT ")}


# --- the SmoLoRA worker (runs in its own process) -------------------------------------------------


def bench_config(
    model_dir: Path,
    data: Path,
    out_dir: Path,
    steps: int,
    warmup: int,
    threads: int | None,
    lowmem: bool = False,
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
    if lowmem:
        overrides.append("model.gradient_checkpointing=true")
    return load_config(None, overrides)


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
        )
        tokenizer = load_tokenizer(args.model)
        t0 = time.perf_counter()
        fresh = prepare_data(cfg, tokenizer)
        t1 = time.perf_counter()
        cached = prepare_data(cfg, tokenizer)
        t2 = time.perf_counter()
        rows = fresh.stats["n_train"] + fresh.stats["n_val"]
        clock = Clock()
        profiler = Profiler(
            max(args.warmup, 1)
        )  # the last warm-up step: outside the clock if args.profile else None
        train(cfg, show_progress=False, callbacks=[clock] + ([profiler] if profiler else []))
    a, b = args.warmup, args.warmup + args.steps
    wall = clock.ends[b] - clock.ends[a]
    real = clock.tokens[b] - clock.tokens[a]
    return {
        "real_tokens_per_s": round(real / wall, 2),
        "step_s": round(wall / args.steps, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "first_loss": clock.losses[0] if clock.losses else None,
        "last_loss": clock.losses[-1] if clock.losses else None,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "warmup": args.warmup,
        "rows": rows,
        "preprocess_s": round(t1 - t0, 3),
        "preprocess_examples_per_s": round(rows / (t1 - t0), 1),
        "cached_preprocess_s": round(t2 - t1, 3),
        "cached_hit": bool(cached.stats.get("cached")),
        "profile": profiler.table if profiler else None,
    }


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
    p.add_argument("--lowmem", action="store_true")
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
