"""Data at scale: preprocessing throughput and peak memory, in-memory vs streaming.

Generates a question/answer JSONL file of N rows, then measures each mode in its own
subprocess (so `ru_maxrss`, the peak resident set, belongs to that mode alone):

- memory:    `prepare_data` (read all, clean, dedupe, split, render, tokenize, Arrow cache)
- memory-npN: the same with `data.num_proc: N` worker processes
- stream:    one pass over the `data.streaming: true` IterableDataset (render + tokenize on the fly)

Throughput is examples (input rows) per second of wall time; "base" is the process's RSS
after imports and the tokenizer, before any data is touched.

Run as:
    SMOLORA_HOME=/tmp/sh python benchmarks/data_scale.py --rows 100000 1000000 --modes stream memory
    python benchmarks/data_scale.py --rows 20000 --modes memory memory-np2 stream --tokenizer PATH
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "order lamp chair table Lisbon Porto Paris Berlin ship deliver invoice quantity price blue red "
    "green small large wooden metal express standard customer address street number week monday "
    "friday please confirm cancel return refund warranty model colour size box pallet"
).split()


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Question/answer rows, about 25 + 40 words each; every row distinct (dedupe keeps all)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            q = " ".join(rng.choices(WORDS, k=rng.randint(12, 36)))
            a = " ".join(rng.choices(WORDS, k=rng.randint(20, 60)))
            f.write(json.dumps({"question": f"#{i} {q}?", "answer": f"{a}."}) + "\n")


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def child(mode: str, data: str, tokenizer_dir: str, home: str) -> dict:
    """One measurement in this (fresh) process."""
    os.environ["SMOLORA_HOME"] = home  # a fresh data cache: measure the work, not a cache hit
    from smolora.config import load_config
    from smolora.data import prepare_data
    from smolora.model.load import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    sets = [f"data.path={data}", "data.max_length=256", "train.max_steps=1"]
    if mode.startswith("memory-np"):
        sets.append(f"data.num_proc={int(mode.removeprefix('memory-np'))}")
    if mode == "stream":
        sets.append("data.streaming=true")
    cfg = load_config(None, sets)
    base = rss_mb()
    t0 = time.perf_counter()
    if mode == "stream":
        from smolora.data.stream import prepare_stream

        out = prepare_stream(cfg, tok, repeat=False)
        n_rows = sum(1 for _ in out.train)
        n_examples = sum(1 for _ in open(data, encoding="utf-8"))
    else:
        out = prepare_data(cfg, tok)
        n_rows = out.stats["n_train"] + out.stats["n_val"]
        n_examples = out.stats["counts"]["input"]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "mode": mode,
        "examples": n_examples,
        "rows": n_rows,
        "seconds": round(seconds, 1),
        "examples_per_s": round(n_examples / seconds),
        "base_rss_mb": round(base),
        "peak_rss_mb": round(peak),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--modes", nargs="+", default=["stream", "memory"])
    home = os.environ.get("SMOLORA_HOME", "/tmp/sh")
    ap.add_argument("--tokenizer", default=str(Path(home) / "models" / "smollm2-135m"))
    ap.add_argument("--workdir", default=None, help="Where the generated files go (default: a temp dir).")
    ap.add_argument("--json", dest="json_out", default=None, help="Append result lines to this file.")
    ap.add_argument("--child", nargs=4, metavar=("MODE", "DATA", "TOKENIZER", "HOME"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="smolora-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{'rows':>9} {'mode':>11} {'seconds':>8} {'examples/s':>10} {'base MB':>8} {'peak MB':>8}")
    for rows in args.rows:
        data = work / f"qa_{rows}.jsonl"
        if not data.exists():
            generate(data, rows)
        for mode in args.modes:
            home = tempfile.mkdtemp(prefix="home-", dir=work)
            env = {**os.environ, "HF_HUB_OFFLINE": "1"}
            cmd = [sys.executable, __file__, "--child", mode, str(data), args.tokenizer, home]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{mode} on {rows} rows failed")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["file_mb"] = round(data.stat().st_size / 2**20)
            print(
                f"{rows:>9} {mode:>11} {r['seconds']:>8} {r['examples_per_s']:>10} "
                f"{r['base_rss_mb']:>8} {r['peak_rss_mb']:>8}",
                flush=True,
            )
            if args.json_out:
                with open(args.json_out, "a") as f:
                    f.write(json.dumps({"rows_generated": rows, **r}) + "\n")


if __name__ == "__main__":
    main()
