"""The `smolora bench` report: records, the table, the targets met or missed, and its Markdown.

`write_docs` replaces only the block between the `<!-- bench:start -->` / `<!-- bench:end -->`
markers of a Markdown file; the prose around it is kept.

Run as:
    print(markdown(report))
    write_docs(Path("docs/benchmarks.md"), markdown(report))   # smolora bench --docs docs/benchmarks.md
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from smolora.bench.launch import MEMORY_MODES

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def command_line(
    steps: int,
    warmup: int,
    modes: list[str],
    skip: bool,
    json_out: Path | None,
    fusion: bool = False,
    precision: str = "auto",
) -> str:
    cmd = f"smolora bench --steps {steps} --warmup {warmup}" + (" --fusion" if fusion else "")
    cmd += f" --precision {precision}" if precision != "auto" else ""
    cmd += " --skip-peers" if skip else f" --peers {','.join(modes)}"
    return cmd + (f" --json {json_out}" if json_out else "")


def records(report: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("name", "precision", "real_tokens_per_s", "step_s", "peak_rss_mib", "last_loss", "heldout_loss")
    return [{k: r.get(k) for k in (*keys, "error") if k in r} for r in report["runs"]]


PEERS = ("grouped", "trl", "trl-pack")  # the best plain-HF setting and TRL's two


def precision_of(run: dict[str, Any]) -> str:
    return run.get("precision") or "float32"


def peak_of(report: dict[str, Any], precision: str) -> float:
    """The matmul peak of that precision (float32's when bf16 was not measured)."""
    bf16 = report.get("matmul_bf16") if precision == "bfloat16" else None
    return (bf16 or report["matmul"])["peak_gflops"]


def share_of_peak(report: dict[str, Any], tps: float, precision: str) -> float:
    """The fraction of that precision's matmul peak `tps` real tokens/s amount to (4 x parameters a token)."""
    return tps * report["flops_per_token"] / 1e9 / peak_of(report, precision)


def smolora_row(runs: dict[str, dict[str, Any]], precision: str) -> dict[str, Any] | None:
    """SmoLoRA's default-settings row in `precision`: "smolora" or "smolora-<precision>"."""
    for name in ("smolora", f"smolora-{precision}"):
        if name in runs and precision_of(runs[name]) == precision:
            return runs[name]
    return None


def best_peer(runs: dict[str, dict[str, Any]], precision: str) -> float | None:
    """The fastest of grouped/trl/trl-pack in `precision` (peers.py's float32, or its --bf16 rows)."""
    suffix = "-bf16" if precision == "bfloat16" else ""
    rates = [runs[m + suffix]["real_tokens_per_s"] for m in PEERS if m + suffix in runs]
    return max(rates, default=None)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """tool, precision, real tok/s, step s, peak RSS, last loss, held-out loss, SmoLoRA / tool (same
    precision), share of that precision's matmul peak, wall s, load."""
    runs = {r["name"]: r for r in report["runs"] if "error" not in r}
    rows = []
    for r in report["runs"]:
        if "error" in r:
            rows.append(
                [r["name"], "", "failed", "", "", "", "", "", "", str(r.get("wall_s", "")), load_text(r)]
            )
            continue
        tps, precision = r["real_tokens_per_s"], precision_of(r)
        ours = smolora_row(runs, precision)
        ratio = f"{ours['real_tokens_per_s'] / tps:.2f}x" if ours and r is not ours else ""
        share = share_of_peak(report, tps, precision)
        loss, held = r.get("last_loss"), r.get("heldout_loss")
        rows.append(
            [
                r["name"],
                precision.replace("bfloat16", "bf16").replace("float32", "fp32"),
                f"{tps:.1f}",
                f"{r['step_s']:.2f}",
                f"{r['peak_rss_mib']:,}",
                f"{loss:.4f}" if loss is not None else "-",
                f"{held:.4f}" if held is not None else "-",
                ratio,
                f"{share:.0%}",
                f"{r.get('wall_s', '')}",
                load_text(r),
            ]
        )
    return rows


HEADER = [
    "tool",
    "precision",
    "real tok/s",
    "step s",
    "peak RSS MiB",
    "last loss",
    "held-out loss",
    "SmoLoRA ÷ tool (same precision)",
    "% matmul peak (same precision)",
    "wall s",
    "load 1m start→end",
]


def load_text(run: dict[str, Any]) -> str:
    load = run.get("load")
    return f"{load[0]}→{load[1]}" if load else ""


def targets(report: dict[str, Any]) -> list[list[str]]:
    """Each target: what was asked, what was measured, met or by how much it was missed."""
    runs = {r["name"]: r for r in report["runs"] if "error" not in r}
    ours = runs.get("smolora")
    out = []

    def add(name: str, want: float, got: float | None, unit: str, higher: bool = True) -> None:
        if got is None:
            out.append([name, f"{want:g}{unit}", "not measured", ""])
            return
        ok = got >= want if higher else got <= want
        miss = "" if ok else f" (missed by {abs(got - want) / want:.0%})"
        out.append(
            [
                name,
                f"{'>=' if higher else '<='} {want:g}{unit}",
                f"{got:.2f}{unit}",
                ("met" if ok else "MISSED") + miss,
            ]
        )

    tps = ours["real_tokens_per_s"] if ours else None
    own = precision_of(ours) if ours else "float32"
    fp32, bf16 = smolora_row(runs, "float32"), smolora_row(runs, "bfloat16")
    if "naive" in runs and fp32:
        add(
            "real tok/s vs naive (fp32)",
            3.0,
            fp32["real_tokens_per_s"] / runs["naive"]["real_tokens_per_s"],
            "x",
        )
    for precision in report.get("precisions") or ["float32"]:
        mine, best = smolora_row(runs, precision), best_peer(runs, precision)
        if best:
            add(
                f"{precision}: real tok/s vs best of {'/'.join(PEERS)}",
                1.5,
                mine and mine["real_tokens_per_s"] / best,
                "x",
            )
    if fp32 and bf16:
        add(
            "bf16 real tok/s vs SmoLoRA float32",
            2.0,
            bf16["real_tokens_per_s"] / fp32["real_tokens_per_s"],
            "x",
        )
        if fp32.get("heldout_loss") and bf16.get("heldout_loss"):
            gap = abs(bf16["heldout_loss"] - fp32["heldout_loss"]) / fp32["heldout_loss"] * 100
            add("held-out loss, bf16 vs float32 (difference)", 1.0, gap, "%", higher=False)
    add(f"share of {own} matmul peak", 0.7, tps and share_of_peak(report, tps, own), "")
    add("peak RSS, batch 8 x 512", 3072, ours and ours["peak_rss_mib"], " MiB", higher=False)
    best = best_peer(runs, own)
    for name, what in MEMORY_MODES.values():
        if name in runs:
            low = runs[name]
            add(f"peak RSS, {what}", 3072, low["peak_rss_mib"], " MiB", higher=False)
            add(f"  its real tok/s vs best {own} peer", 1.5, best and low["real_tokens_per_s"] / best, "x")
    add("model load from cache", 3.0, report.get("load", {}).get("cached_load_s"), " s", higher=False)
    add("preprocessing", 5000, ours and ours.get("preprocess_examples_per_s"), " ex/s")
    add("batched vs one-at-a-time generation", 3.0, report.get("generation", {}).get("speedup"), "x")
    return out


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(report: dict[str, Any]) -> str:
    m, mm = report["machine"], report["matmul"]
    ours = next((r for r in report["runs"] if r["name"] == "smolora"), {})
    parts = [
        f"Command: `{report['command']}` (total {report['total_s']} s, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime())}).",
        "",
        f"Machine: {m['cpu']}, {m['physical_cores']} physical cores / {m['logical_cpus']} logical CPUs, "
        f"{m['memory_gib']} GiB, AVX-512 {'yes' if m['avx512'] else 'no'}, native bf16 "
        f"{', '.join(m.get('bf16_flags') or []) or 'no'}, CUDA {'yes' if m['cuda'] else 'no'}. "
        f"Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        f"Load average (1, 5, 15 min) before: {report['load_before']}, after: {report['load_after']} "
        f"(above {m['logical_cpus']} means other work shared the CPUs during the run).",
        "",
        matmul_text(report, "fp32", mm),
        "",
    ]
    if "matmul_bf16" in report:
        parts += [matmul_text(report, "bf16", report["matmul_bf16"]), ""]
    if "heldout_rows" in report:
        parts += [
            f"Held-out loss: every tool trains on the bench data less its last {report['heldout_rows']} rows "
            "and is scored on those after its steps (mean answer-token cross-entropy, float32, "
            "bench/heldout.py).",
            "",
        ]
    parts += [
        md_table(HEADER, table_rows(report)),
        "",
        md_table(["target", "wanted", "measured", ""], targets(report)),
        "",
    ]
    if ours and "preprocess_s" in ours:
        parts += [
            f"Preprocessing ({ours['rows']} rows: read, detect, clean, render, tokenize, mask, save): "
            f"{ours['preprocess_s']} s fresh = {ours['preprocess_examples_per_s']} examples/s; "
            f"second time {ours['cached_preprocess_s']} s from the cache (cache hit: {ours['cached_hit']}).",
            "",
        ]
    if "load" in report:
        parts += [f"Model load: {json.dumps(report['load'])}.", ""]
    if "generation" in report:
        g = report["generation"]
        if "error" in g:
            parts += [f"Generation: failed ({g['error']}).", ""]
        else:
            parts += [
                f"Generation ({g['prompts']} prompts, up to {g['max_new_tokens']} new tokens, greedy, KV cache): "
                f"one at a time {g['one_at_a_time']['tokens_per_s']} tokens/s, batched "
                f"{g['batched']['tokens_per_s']} tokens/s ({g['speedup']}x).",
                "",
            ]
            if "decode_speedup" in g:
                one, many = g["one_at_a_time"], g["batched"]
                parts += [
                    f"Of that, the prompt pass (timed alone with one new token): one at a time "
                    f"{one['prefill_s']} s, batched {many['prefill_s']} s; decoding after it: one at a time "
                    f"{one['decode_tokens_per_s']} tokens/s, batched {many['decode_tokens_per_s']} tokens/s "
                    f"({g['decode_speedup']}x).",
                    "",
                ]
    if ours.get("profile"):
        parts += [
            "SmoLoRA, one training step under torch.profiler (self CPU time):",
            "",
            md_table(
                ["operator", "share", "calls"],
                [[p["op"], f"{p['share']:.1%}", str(p["calls"])] for p in ours["profile"]],
            ),
            "",
        ]
    if "serve" in report:
        parts += [f"Serve load test: `{json.dumps(report['serve'])}`", ""]
    return "\n".join(parts)


def matmul_text(report: dict[str, Any], name: str, mm: dict[str, Any]) -> str:
    return (
        f"{name} matmul on the model's shapes ({mm['tokens']} rows, {mm['threads']} threads): peak "
        f"{mm['peak_gflops']} GFLOP/s, FLOP-weighted mean {mm['weighted_gflops']} GFLOP/s "
        f"({', '.join(f'{k}: {v}' for k, v in mm['per_shape'].items())}). One training token costs "
        f"{report['flops_per_token'] / 1e9:.3f} GFLOP nominal (4 x parameters), so the peak allows "
        f"{mm['peak_gflops'] / (report['flops_per_token'] / 1e9):.0f} tokens/s."
    )


def write_docs(path: Path, generated: str) -> None:
    replace_block(path, START, END, generated)


def replace_block(path: Path, start: str, end: str, generated: str) -> None:
    """Put `generated` between the `start` and `end` marker lines of `path`, keeping the rest.

    Only a line that is the marker alone counts: prose that quotes a marker (this page's own
    intro does) is not a block. A file without the block gets it appended, never overwritten;
    the new text is written beside the file and renamed over it, so a crash leaves the old one."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    bare = [line.strip() for line in lines]
    block = f"{start}\n{generated.rstrip()}\n{end}\n"
    first = bare.index(start) if start in bare else len(bare)
    if end in bare[first:]:
        text = "".join(lines[:first]) + block + "".join(lines[bare.index(end, first) + 1 :])
    else:
        text = text.rstrip("\n") + "\n\n" + block
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
