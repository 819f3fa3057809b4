"""The evaluation report: RUN/eval/report.md and a self-contained RUN/eval/report.html.

Both hold the run's config summary, the loss curve (train and eval, from metrics.jsonl), the
base vs fine-tuned metric table, the diagnosis (smolora.eval.diagnose: what went wrong and the
setting to change) and sample prompts side by side (reference, base, fine-tuned);
with eval.generate_every, also how the answers changed during training. The plots are PNG
files under RUN/plots/ (linked from the Markdown) and embedded as base64 in the HTML, so the
HTML file can be mailed or attached on its own.

Run as:
    paths = write_report(Path("runs/quickstart"), cfg, metrics, samples)
    print(paths["html"])
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from smolora.config import RunConfig
from smolora.eval.diagnose import report_lines
from smolora.runs import (
    EVAL_DIR,
    GENERATIONS_FILE,
    METRICS_FILE,
    PLOTS_DIR,
    find_adapter_dir,
    read_jsonl,
    read_meta,
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1f2328;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
.sub{color:#57606a;margin-top:0}table{border-collapse:collapse;width:100%;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #d0d7de;padding:.35rem .55rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.better{color:#1a7f37;font-weight:600}.worse{color:#cf222e;font-weight:600}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1.2rem}img{max-width:100%;border:1px solid #d0d7de}
td.text{white-space:pre-wrap;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.82rem}
.samples th:first-child{width:34%}.samples td.num{width:1%}.hit{background:#dafbe1}.miss{background:#fff8c5}.kv td:first-child{color:#57606a;width:30%}
"""
PREFERENCE_NOTE = (
    " preference_accuracy: % of held-out pairs whose summed log-probability of the chosen answer beats the"
    " rejected one; preference_margin: mean of that difference; reward_margin: beta x its change since the"
    " starting point (the base column, 0 there); reward (grpo): mean train.rewards of greedy answers."
    " eval_loss is on the chosen answers; the training log's eval loss is the objective's."
)


def loss_plot(log_rows: list[dict[str, Any]], path: Path) -> bytes:
    """Train loss per logged step and eval loss where measured, as a PNG (also written to `path`)."""
    from matplotlib.figure import Figure

    train = [(r["step"], r["loss"]) for r in log_rows if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in log_rows if r.get("eval_loss") is not None]
    fig = Figure(figsize=(7, 3.6), dpi=110)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="#0969da", linewidth=1.4)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", color="#cf222e", linewidth=1.4)
    if not (train or evals):
        ax.text(0.5, 0.5, "no training log (metrics.jsonl)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("loss during training")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def metrics_plot(metrics: dict[str, Any], path: Path) -> bytes | None:
    """Grouped bars, base vs fine-tuned, for the 0-100 generation metrics."""
    from matplotlib.figure import Figure

    from smolora.eval.metrics import METRICS

    names = [n for n in METRICS if n in metrics["fine_tuned"]]
    if not names:
        return None
    fig = Figure(figsize=(7, 3.6), dpi=110)
    ax = fig.add_subplot()
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [metrics["base"][n] for n in names], 0.4, label="base", color="#8c959f")
    ax.bar(
        [x + 0.2 for x in xs],
        [metrics["fine_tuned"][n] for n in names],
        0.4,
        label="fine-tuned",
        color="#1a7f37",
    )
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 100)
    ax.set_ylabel("score (0-100)")
    ax.set_title(f"generation metrics on {metrics['n']} held-out prompts")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def config_summary(cfg: RunConfig, run_dir: Path) -> list[tuple[str, str]]:
    adapter = find_adapter_dir(run_dir)
    meta = read_meta(adapter) if adapter else None
    sha = meta.base_sha256 if meta else None
    data_format = meta.data_format if meta and meta.data_format is not None else cfg.data.format
    lora = cfg.lora
    method = (
        lora.method if lora.method in ("full", "freeze") else f"{lora.method} r={lora.r} alpha={lora.alpha}"
    )
    # A trained run's config.yaml holds numbers; "auto" only where the schedule was never resolved.
    epochs, lr = (v if isinstance(v, str) else f"{v:g}" for v in (cfg.train.epochs, cfg.train.lr))
    steps = f"max_steps {cfg.train.max_steps}" if cfg.train.max_steps else f"{epochs} epoch(s)"
    rows = [
        ("run", str(run_dir)),
        (
            "base model",
            cfg.model.name + (f" (sha256 {sha[:12]}...)" if sha else ""),
        ),
        ("method", method),
        (
            "training",
            f"{steps}, lr {lr}, batch {cfg.train.batch_size} x accum {cfg.train.grad_accum}",
        ),
        (
            "data",
            _paths(cfg.data.path) + (f" (val: {_paths(cfg.data.val_path)})" if cfg.data.val_path else ""),
        ),
        ("data format", str(data_format)),
        ("max_length", str(cfg.data.max_length)),
        ("generation", f"greedy, max_new_tokens {cfg.eval.max_new_tokens}"),
    ]
    if cfg.train.objective != "sft":
        rows.insert(3, ("objective", f"{cfg.train.objective}, beta {cfg.train.strength:g}"))
        rows.insert(4, ("compared with", cfg.model.adapter or "the base model (adapter switched off)"))
    return rows


def _paths(p: str | list[str] | None) -> str:
    return ", ".join(p) if isinstance(p, list) else str(p)


def training_summary(log_rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    losses = [r for r in log_rows if r.get("loss") is not None]
    evals = [r for r in log_rows if r.get("eval_loss") is not None]
    runtime = next((r["train_runtime"] for r in reversed(log_rows) if r.get("train_runtime")), None)
    tps = [r["tokens_per_s"] for r in losses if r.get("tokens_per_s")]
    out = []
    if losses:
        out.append(("steps", str(losses[-1]["step"])))
        out.append(("train loss", f"{losses[0]['loss']:.4f} -> {losses[-1]['loss']:.4f}"))
    if evals:
        out.append(("eval loss", f"{evals[0]['eval_loss']:.4f} -> {evals[-1]['eval_loss']:.4f}"))
    if runtime:
        out.append(("train time", f"{runtime:.0f} s"))
    if tps:
        out.append(("tokens/s (mean)", f"{sum(tps) / len(tps):.0f}"))
    return out


def metric_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric: base, fine-tuned, change and whether the change is an improvement."""
    lower = set(metrics.get("lower_is_better", []))
    rows = []
    for name, tuned in metrics["fine_tuned"].items():
        base = metrics["base"].get(name)
        if base is None:
            continue
        diff = tuned - base
        better = (diff < 0) if name in lower else (diff > 0)
        rows.append(
            {
                "name": name,
                "base": base,
                "fine_tuned": tuned,
                "diff": diff,
                "better": better if diff else None,
            }
        )
    return rows


def fmt(name: str, value: float) -> str:
    if name == "perplexity":
        return f"{value:.2f}"
    if name == "eval_loss" or "/" in name or "margin" in name or name.startswith("reward"):
        # losses, lm-eval's 0-1 scores, and the log-probability margins and rewards
        return f"{value:.4f}"
    return f"{value:.1f}"


def generation_history(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """RUN/generations.jsonl (eval.generate_every) grouped by prompt, in step order."""
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for row in read_jsonl(run_dir / GENERATIONS_FILE):
        by_prompt.setdefault(row["prompt"], []).append(row)
    return by_prompt


def write_report(
    run_dir: Path, cfg: RunConfig, metrics: dict[str, Any], samples: list[dict[str, Any]]
) -> dict[str, Path]:
    """Write plots, report.md and report.html; return their paths."""
    log_rows = read_jsonl(run_dir / METRICS_FILE)
    plots = run_dir / PLOTS_DIR
    images = {"loss": loss_plot(log_rows, plots / "loss.png")}
    bars = metrics_plot(metrics, plots / "metrics.png")
    if bars is not None:
        images["metrics"] = bars
    from smolora.eval.preference import objective_figure  # preference runs: reward / margin curves

    fig = objective_figure(log_rows, cfg.train.objective)
    if fig is not None:
        images["objective"] = _save(fig, plots / "objective.png")
    parts = {
        "config": config_summary(cfg, run_dir),
        "training": training_summary(log_rows),
        "metrics": metric_rows(metrics),
        "samples": samples[: cfg.eval.num_samples],
        "history": generation_history(run_dir),
        "diagnosis": report_lines(metrics),
    }
    out = run_dir / EVAL_DIR
    md, page = out / "report.md", out / "report.html"
    md.write_text(render_markdown(metrics, parts, sorted(images)), encoding="utf-8")
    page.write_text(render_html(metrics, parts, images), encoding="utf-8")
    return {"report": md, "html": page, "plot": plots / "loss.png"}


def _verdict(metrics: dict[str, Any]) -> str:
    """One sentence with the headline numbers: exact match and eval loss, base -> fine-tuned."""
    rows = {r["name"]: r for r in metric_rows(metrics)}
    said = []
    for name in ("exact_match", "eval_loss"):
        if name in rows:
            r = rows[name]
            word = "better" if r["better"] else "worse" if r["better"] is False else "unchanged"
            said.append(f"{name} {fmt(name, r['base'])} -> {fmt(name, r['fine_tuned'])} ({word})")
    return f"Base -> fine-tuned: {'; '.join(said)}." if said else ""


def _md_cell(text: str, limit: int = 300) -> str:
    text = text if len(text) <= limit else text[:limit] + "..."
    return text.replace("|", "\\|").replace("\n", "<br>") or " "


def render_markdown(metrics: dict[str, Any], parts: dict[str, Any], images: list[str]) -> str:
    lines = [
        f"# Evaluation: {Path(metrics['run']).name}",
        "",
        f"Base vs fine-tuned on {metrics['n_examples']} examples of `{metrics['data']}`. "
        + _verdict(metrics),
        "",
        "## Run",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {_md_cell(v)} |" for k, v in parts["config"] + parts["training"]],
        "",
        "## Metrics",
        "",
        "| metric | base | fine-tuned | change |",
        "|---|---:|---:|---:|",
    ]
    for r in parts["metrics"]:
        mark = " (better)" if r["better"] else " (worse)" if r["better"] is False else ""
        lines.append(
            f"| {r['name']} | {fmt(r['name'], r['base'])} | {fmt(r['name'], r['fine_tuned'])} | "
            f"{r['diff']:+.4g}{mark} |"
        )
    lines += [
        "",
        "Generation metrics are 0-100 (higher is better); eval_loss and perplexity are on the answer "
        "tokens (lower is better); lm-eval scores (task/metric) are on lm-eval's own scale."
        + (PREFERENCE_NOTE if metrics.get("objective", "sft") != "sft" else ""),
        "",
        *(
            ["## Diagnosis", "", *[f"- {line}" for line in parts["diagnosis"]], ""]
            if parts["diagnosis"]
            else []
        ),
        "## Loss curve",
        "",
        *[f"![{name}](../plots/{name}.png)" for name in images],
        "",
    ]
    if parts["samples"]:
        lines += ["## Samples", "", "| prompt | reference | base | fine-tuned |", "|---|---|---|---|"]
        for s in parts["samples"]:
            cells = [s["prompt"], s["reference"], s["base"], s["fine_tuned"]]
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        lines.append("")
    if parts["history"]:
        lines += ["## Answers during training", "", "| prompt | step | answer |", "|---|---:|---|"]
        for prompt, rows in parts["history"].items():
            lines += [f"| {_md_cell(prompt, 200)} | {r['step']} | {_md_cell(r['output'])} |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def _e(text: Any) -> str:
    return html.escape(str(text))


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def render_html(metrics: dict[str, Any], parts: dict[str, Any], images: dict[str, bytes]) -> str:
    from smolora.eval.metrics import normalize

    name = Path(metrics["run"]).name
    kv = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in parts["config"] + parts["training"])
    rows = []
    for r in parts["metrics"]:
        cls = "better" if r["better"] else "worse" if r["better"] is False else ""
        rows.append(
            f"<tr><td>{_e(r['name'])}</td><td class=num>{fmt(r['name'], r['base'])}</td>"
            f"<td class=num>{fmt(r['name'], r['fine_tuned'])}</td>"
            f"<td class='num {cls}'>{r['diff']:+.4g}</td></tr>"
        )
    samples = []
    for s in parts["samples"]:
        cells = []
        for key in ("base", "fine_tuned"):
            hit = normalize(s[key]) == normalize(s["reference"])
            cells.append(f"<td class='text {'hit' if hit else 'miss'}'>{_e(s[key])}</td>")
        samples.append(
            f"<tr><td class=text>{_e(s['prompt'])}</td><td class=text>{_e(s['reference'])}</td>{''.join(cells)}</tr>"
        )
    history = []
    for prompt, hist in parts["history"].items():
        for i, r in enumerate(hist):
            head = (
                f"<td class=text rowspan={len(hist)}>{_e(prompt)}</td>"
                f"<td class=text rowspan={len(hist)}>{_e(r['reference'])}</td>"
                if i == 0
                else ""
            )
            history.append(
                f"<tr>{head}<td class=num>{r['step']}</td><td class=text>{_e(r['output'])}</td></tr>"
            )
    sample_section = (
        "<h2>Samples</h2><p class=sub>green: exact match with the reference</p>"
        "<table class=samples><tr><th>prompt</th><th>reference</th><th>base</th><th>fine-tuned</th></tr>"
        + "".join(samples)
        + "</table>"
        if samples
        else ""
    )
    history_section = (
        "<h2>Answers during training</h2><p class=sub>greedy answers to held-out prompts every "
        "eval.generate_every steps</p><table class=samples><tr><th>prompt</th><th>reference</th>"
        "<th>step</th><th>answer</th></tr>" + "".join(history) + "</table>"
        if history
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SmoLoRA eval: {_e(name)}</title>
<style>{CSS}</style></head><body>
<h1>Evaluation: {_e(name)}</h1>
<p class=sub>Base vs fine-tuned on {metrics["n_examples"]} examples of <code>{_e(metrics["data"])}</code>.
{_e(_verdict(metrics))}</p>
<h2>Run</h2><table class=kv>{kv}</table>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>base</th><th>fine-tuned</th><th>change</th></tr>{"".join(rows)}</table>
<p class=sub>Generation metrics are 0-100 (higher is better); eval_loss and perplexity are on the answer
tokens (lower is better); lm-eval scores (task/metric) are on lm-eval's own scale.{_e(PREFERENCE_NOTE) if metrics.get("objective", "sft") != "sft" else ""}</p>
{"<h2>Diagnosis</h2><ul>" + "".join(f"<li>{_e(x)}</li>" for x in parts["diagnosis"]) + "</ul>" if parts["diagnosis"] else ""}
<h2>Loss curve and scores</h2>
<div class=grid>{"".join(_img(png, key) for key, png in images.items())}</div>
{sample_section}
{history_section}
</body></html>
"""
