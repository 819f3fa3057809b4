"""`smolora bench --dpo` on a tiny random model: both sides (ours and TRL's DPOTrainer) run and report.

Run as:
    pytest -q tests/test_bench_dpo.py
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from smolora.bench.dpo import SOURCE, dpo_markdown, make_pairs, targets, write_dpo_docs
from smolora.cli.main import app

runner = CliRunner()


def test_pairs_are_fixed_and_differ():
    pairs = make_pairs(SOURCE, 12)
    assert pairs == make_pairs(SOURCE, 12)  # deterministic: the bench data never moves
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    rows = [json.loads(line) for line in SOURCE.read_text().splitlines()]
    assert [p["chosen"] for p in pairs] == [r["output"] for r in rows[:12]]


def test_bench_dpo_both_sides_report(tiny_model_dir, tmp_path):
    out, docs = tmp_path / "dpo.json", tmp_path / "bench.md"
    docs.write_text("# Benchmarks\n\nprose kept\n")
    r = runner.invoke(
        app,
        ["bench", "--dpo", "--model", str(tiny_model_dir), "--steps", "2", "--warmup", "1"]
        + ["--rounds", "1", "--threads", "1", "--json", str(out), "--docs", str(docs)],
    )
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert [run["name"] for run in report["runs"]] == ["smolora-dpo", "trl-dpo"]
    for run in report["runs"]:
        assert "error" not in run, run
        assert run["real_tokens_per_s"] > 0 and run["peak_rss_mib"] > 0 and run["last_loss"] is not None
    ours, theirs = report["runs"]
    assert ours["reference_s"] > 0 and ours["with_reference_tokens_per_s"] <= ours["real_tokens_per_s"]
    # the same pairs: chosen + rejected tokens of 4 pairs per step, both tokenized by the chat template
    assert abs(ours["real_tokens"] - theirs["real_tokens"]) <= 0.1 * theirs["real_tokens"]
    assert len(targets(report)) == 3
    text = docs.read_text()
    assert "prose kept" in text and "trl-dpo" in text and "<!-- bench-dpo:end -->" in text
    write_dpo_docs(docs, dpo_markdown(report))  # a second write replaces the block, not appends
    assert docs.read_text().count("<!-- bench-dpo:start -->") == 1
