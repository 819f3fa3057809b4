"""The peer scripts (what a user would run instead of SmoLoRA), one process after another.

The peers themselves are not copied here: they live in ../shared/bench/peers.py (or
$SMOLORA_BENCH_DIR), and this runner calls them as subprocesses. Run alone it prints their
results; `smolora bench` loads this file from the checkout (smolora.bench.launch.load_peers)
and runs the peers beside SmoLoRA with `--peers`. Without that directory it says so and exits.

Run as:
    python benchmarks/run_peers.py --modes naive,grouped --steps 2 --warmup 1
    python benchmarks/run_peers.py --model ~/.cache/smolora/models/smollm2-135m --json peers.json
    python benchmarks/run_peers.py --modes grouped --bf16 --heldout heldout.jsonl --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from smolora.bench import launch

REPO = Path(__file__).resolve().parents[1]
PEER_MODES = ["naive", "dynamic", "grouped", "trl", "trl-pack"]


def shared_bench_dir() -> Path | None:
    """The peers' directory: $SMOLORA_BENCH_DIR, or ../shared/bench next to the repository."""
    for candidate in (os.environ.get("SMOLORA_BENCH_DIR"), REPO.parent / "shared" / "bench"):
        if candidate and (Path(candidate) / "peers.py").exists():
            return Path(candidate)
    return None


def run_peer(
    mode: str,
    model_dir: Path,
    data: Path,
    steps: int,
    warmup: int,
    peers_dir: Path,
    threads: int | None = None,
    bf16: bool = False,
    heldout: Path | None = None,
) -> dict[str, Any]:
    """One peer in its own process: its PEER_RESULT, with the wall time and the load average around it.

    bf16: peers.py --bf16 (the Trainer's bf16 autocast), the row named MODE-bf16; heldout: run it
    through peer_heldout.py, which adds the loss on those rows (the same as SmoLoRA's)."""
    with tempfile.TemporaryDirectory(prefix=f"peer-{mode}-") as out:
        cmd = [sys.executable, str(peers_dir / "peers.py")]
        if heldout:
            cmd[1:1] = [str(REPO / "benchmarks" / "peer_heldout.py"), "--heldout", str(heldout), "--peers"]
            cmd.append("--")
        cmd += ["--mode", mode, "--model", str(model_dir)]
        cmd += ["--data", str(data), "--steps", str(steps), "--warmup", str(warmup), "--out", out]
        if threads:
            cmd += ["--threads", str(threads)]
        if bf16:
            cmd.append("--bf16")
        result = launch.run_json_process(cmd, "PEER_RESULT ")
    return {
        "name": mode + ("-bf16" if bf16 else ""),
        "precision": "bfloat16" if bf16 else "float32",
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", default=",".join(PEER_MODES), help="Comma-separated peer modes.")
    parser.add_argument("--model", default=None, help="HF model directory (default: smollm2-135m's cache).")
    parser.add_argument("--data", type=Path, default=None, help="Default: bench.jsonl next to peers.py.")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bf16", action="store_true", help="peers.py --bf16: the Trainer's bf16 autocast.")
    parser.add_argument("--heldout", type=Path, default=None, help="Also score each peer on these rows.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()

    peers_dir = shared_bench_dir()
    if peers_dir is None:
        sys.exit(
            "peers not found: expected ../shared/bench/peers.py next to the repository, or set SMOLORA_BENCH_DIR"
        )
    if args.model is None:
        from smolora.model.store import resolve_model

        args.model = resolve_model("smollm2-135m")
    data = args.data or peers_dir / "bench.jsonl"
    if args.heldout is not None and not args.heldout.is_file():  # found out before minutes of training
        parser.error(f"--heldout {args.heldout}: no such file")
    results = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        result = run_peer(
            mode,
            Path(args.model),
            data,
            args.steps,
            args.warmup,
            peers_dir,
            args.threads,
            args.bf16,
            args.heldout,
        )
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
