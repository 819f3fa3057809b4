"""`smolora bench --dpo`: SmoLoRA's DPO against TRL's DPOTrainer, same pairs, one process each, alternating.

The pairs are fixed: built from the bundled examples/data/quickstart_train.jsonl, one per row
in file order, prompt = its instruction, chosen = its output, rejected = the output of the
next row whose output differs (the last row wraps to the first). As many pairs as the run's
steps take (batch 4 x (warmup + steps)), so both sides train one epoch over the same rows and
SmoLoRA's one-time reference pass covers exactly the pairs it trains on. Settings and the
clock: bench/dpo_run.py.

Run as:
    report = run_dpo("smollm2-135m", steps=20, warmup=2, rounds=1)
    print(dpo_markdown(report))
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from smolora.bench import launch, machine
from smolora.bench.dpo_run import BATCH, BETA, LR, MAX_LENGTH, RANK
from smolora.bench.report import replace_block
from smolora.errors import SmoLoRAError
from smolora.model.store import resolve_model

SOURCE = launch.REPO / "examples" / "data" / "quickstart_train.jsonl"
START, END = "<!-- bench-dpo:start -->", "<!-- bench-dpo:end -->"


def make_pairs(source: Path, n: int) -> list[dict[str, str]]:
    """n fixed pairs from {instruction, output} rows: chosen = the row's output, rejected = the next different one."""
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    if len(rows) < 2:
        raise SmoLoRAError(f"{source}: DPO bench pairs need at least 2 rows")
    pairs = []
    for i in range(n):
        row = rows[i % len(rows)]
        j = (i + 1) % len(rows)
        while rows[j]["output"] == row["output"] and j != i % len(rows):
            j = (j + 1) % len(rows)
        pairs.append({"prompt": row["instruction"], "chosen": row["output"], "rejected": rows[j]["output"]})
    return pairs


def run_side(side: str, model_dir: Path, data: Path, steps: int, warmup: int, threads: int | None):
    cmd = [sys.executable, "-m", "smolora.bench.dpo_run", side, "--model", str(model_dir)]
    cmd += ["--data", str(data), "--steps", str(steps), "--warmup", str(warmup)]
    if threads:
        cmd += ["--threads", str(threads)]
    name = "smolora-dpo" if side == "ours" else "trl-dpo"
    return {"name": name, **launch.run_json_process(cmd, "SMOLORA_RESULT ")}


def run_dpo(
    model: str,
    steps: int,
    warmup: int,
    threads: int | None = None,
    rounds: int = 1,
    source: Path = SOURCE,
    command: str = "",
    progress=print,
) -> dict[str, Any]:
    """Ours, TRL's, ours, TRL's ... (`rounds` times each), one process per run; the report dict."""
    from smolora.model.load import physical_cores

    threads = threads or physical_cores()
    report: dict[str, Any] = {"command": command, "machine": machine.machine()}
    report["load_before"] = machine.load_average()
    report["cpu_flags"] = cpu_flags()
    started = time.perf_counter()
    model_dir = resolve_model(model)
    report["model"] = str(model_dir)
    n = BATCH * (warmup + steps)
    report["pairs"] = {"source": str(source), "n": n}
    runs = []
    with tempfile.TemporaryDirectory(prefix="smolora-dpo-pairs-") as tmp:
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(source, n)))
        for _ in range(rounds):
            for side in ("ours", "trl"):
                progress(f"{'smolora-dpo' if side == 'ours' else 'trl-dpo'}: {warmup} + {steps} steps ...")
                runs.append(run_side(side, model_dir, data, steps, warmup, threads))
                progress(f"  {summary(runs[-1])}")
    report["runs"] = runs
    report["load_after"] = machine.load_average()
    report["total_s"] = round(time.perf_counter() - started, 1)
    return report


def cpu_flags() -> dict[str, bool]:
    text = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    words = set(text.split())
    return {f: f in words for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile")}


def summary(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"{run['name']} failed: {run['error']}"
    return f"{run['name']}: {run['real_tokens_per_s']} real tokens/s, peak RSS {run['peak_rss_mib']} MiB"


def best(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The median-speed run of a tool across the rounds (the middle one; the faster of two)."""
    ok = sorted((r for r in report["runs"] if r["name"] == name and "error" not in r),
                key=lambda r: r["real_tokens_per_s"])  # fmt: skip
    return ok[len(ok) // 2] if ok else None


HEADER = ["tool", "real tok/s (steps)", "with reference pass", "reference s", "step s", "peak RSS MiB",
          "first→last loss", "wall s", "load 1m start→end"]  # fmt: skip


def rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for r in report["runs"]:
        if "error" in r:
            out.append([r["name"], "failed: " + r["error"][:80], *[""] * 7])
            continue
        loss = f"{r['first_loss']:.4f}→{r['last_loss']:.4f}" if r.get("last_loss") is not None else "-"
        load = f"{r['load'][0]}→{r['load'][1]}" if r.get("load") else ""
        out.append([r["name"], f"{r['real_tokens_per_s']:.1f}", f"{r['with_reference_tokens_per_s']:.1f}",
                    f"{r['reference_s']}", f"{r['step_s']:.2f}", f"{r['peak_rss_mib']:,}", loss,
                    str(r.get("wall_s", "")), load])  # fmt: skip
    return out


def targets(report: dict[str, Any]) -> list[list[str]]:
    ours, theirs = best(report, "smolora-dpo"), best(report, "trl-dpo")
    if not ours or not theirs:
        return [["DPO vs TRL", ">= 1.5x", "not measured", ""]]
    speed = ours["real_tokens_per_s"] / theirs["real_tokens_per_s"]
    honest = ours["with_reference_tokens_per_s"] / theirs["real_tokens_per_s"]
    rss = ours["peak_rss_mib"] / theirs["peak_rss_mib"]
    return [
        ["real tok/s vs TRL DPOTrainer (steps only)", ">= 1.5x", f"{speed:.2f}x", verdict(speed >= 1.5)],
        ["  with our reference pass in the time", ">= 1.5x", f"{honest:.2f}x", verdict(honest >= 1.5)],
        ["peak RSS vs TRL DPOTrainer", "<= 1x", f"{rss:.2f}x", verdict(rss <= 1.0)],
    ]


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def dpo_markdown(report: dict[str, Any]) -> str:
    m, flags = report["machine"], report["cpu_flags"]
    flag_text = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())
    return "\n".join(
        [
            f"Command: `{report['command']}` (total {report['total_s']} s, "
            f"{time.strftime('%Y-%m-%d %H:%M %Z', time.localtime())}).",
            "",
            f"Machine: {m['cpu']}, {m['physical_cores']} physical cores / {m['logical_cpus']} logical CPUs, "
            f"{m['memory_gib']} GiB, {flag_text}, CUDA {'yes' if m['cuda'] else 'no'}. Versions: "
            + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
            + f". Load average before: {report['load_before']}, after: {report['load_after']}.",
            "",
            f"Settings (both): {report['pairs']['n']} pairs from {Path(report['pairs']['source']).name}, "
            f"LoRA r={RANK} alpha={2 * RANK} dropout 0, batch {BATCH} pairs, max length {MAX_LENGTH}, "
            f"lr {LR:g}, beta {BETA}, sigmoid loss, float32, no gradient checkpointing.",
            "",
            md_table(HEADER, rows(report)),
            "",
            md_table(["target", "wanted", "measured", ""], targets(report)),
            "",
        ]
    )


def write_dpo_docs(path: Path, generated: str) -> None:
    """Replace the block between the DPO markers of `path` (appended when it has none)."""
    replace_block(path, START, END, generated)
