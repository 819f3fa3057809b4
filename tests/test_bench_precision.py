"""`smolora bench` in two precisions, and the held-out loss every tool is scored by.

The workers are faked where only the command matters (tests/test_cli_options.py's way); the
held-out split and loss run for real on the tiny model, and so does benchmarks/peer_heldout.py
around the real peers.py when ../shared/bench is beside this checkout (it lives outside the
repository: skipped where it is not).

Run as:
    pytest -q tests/test_bench_precision.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import fake_bench_workers
from smolora.bench.heldout import HELDOUT, encode, heldout_loss, split_heldout
from smolora.errors import SmoLoRAError
from smolora.model import precision

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO.parent / "shared" / "bench" / "peers.py"


def bench_rows(path: Path, n: int) -> Path:
    rows = [{"instruction": f"What is {i} plus one?", "output": f"It is {i + 1}."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def workers(monkeypatch, tmp_path):
    """Fake workers that answer bf16 rows at twice the float32 rate, peers at half SmoLoRA's."""

    def answer(cmd):
        if "--mode" in cmd:  # a peer: peers.py --bf16
            bf16 = "--bf16" in cmd
        else:  # SmoLoRA: model.dtype set, or auto (bf16 where the injected flags have it)
            bf16 = "model.dtype=bfloat16" in cmd or (
                "model.dtype=float32" not in cmd and own[0] == "bfloat16"
            )
        rate = (300.0 if bf16 else 150.0) / (2 if "--mode" in cmd else 1)
        run = {"real_tokens_per_s": rate, "step_s": 1.0, "peak_rss_mib": 10, "last_loss": 1.0, "wall_s": 1}
        run["heldout_loss"] = 2.0 if bf16 else 2.01
        return run if "--mode" in cmd else run | {"precision": "bfloat16" if bf16 else "float32"}

    own = ["float32"]
    commands = fake_bench_workers(monkeypatch, tmp_path, answer)

    def flags(have):
        own[0] = "bfloat16" if precision.cpu_bf16(have) else "float32"
        monkeypatch.setattr(precision, "cpu_flags", lambda: have)

    return commands, flags


def bench(tiny_model_dir, data, tmp_path, *extra):
    from typer.testing import CliRunner

    from smolora.cli.main import app

    docs, records = tmp_path / "bench.md", tmp_path / "bench.json"
    args = ["bench", "--model", str(tiny_model_dir), "--data", str(data), "--peers", "grouped", "--no-lowmem"]
    r = CliRunner().invoke(
        app,
        [
            *args,
            "--no-extras",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--json",
            str(records),
            "--docs",
            str(docs),
            *extra,
        ],
    )
    return r, docs, records


def test_bf16_cpu_runs_every_tool_in_both_precisions(tiny_model_dir, tmp_path, workers):
    commands, flags = workers
    flags({"avx512f", "avx512_bf16"})
    data = bench_rows(tmp_path / "bench.jsonl", 200)
    r, docs, records = bench(tiny_model_dir, data, tmp_path)
    assert r.exit_code == 0, r.output
    names = [(x["name"], x["precision"]) for x in json.loads(records.read_text())]
    assert names == [
        ("smolora", "bfloat16"),  # the default here
        ("smolora-float32", "float32"),
        ("grouped", "float32"),
        ("grouped-bf16", "bfloat16"),
    ]
    train = [c for c in commands if "train" in c]
    assert (
        "model.dtype=float32" not in train[0]
        and train[1][train[1].index("--set") + 1] == "model.dtype=float32"
    )
    peers = [c for c in commands if "--mode" in c]
    assert [("--bf16" in c) for c in peers] == [False, True]
    assert all("peer_heldout.py" in c[1] for c in peers)  # scored on the held-out rows too
    # every tool trains on the same rows, without the held-out ones, and is scored on those
    trained = {c[c.index("--data") + 1] for c in commands}
    held = {c[c.index("--heldout") + 1] for c in commands}
    assert len(trained) == 1 and len(held) == 1 and trained != {str(data)}
    text = docs.read_text()
    assert "bf16 matmul on the model's shapes" in text and "native bf16 avx512_bf16" in text
    assert f"less its last {HELDOUT} rows" in text
    assert "bf16 real tok/s vs SmoLoRA float32 | >= 2x | 2.00x | met" in text
    assert "held-out loss, bf16 vs float32 (difference) | <= 1% | 0.50% | met" in text
    assert "bfloat16: real tok/s vs best of grouped/trl/trl-pack | >= 1.5x | 2.00x | met" in text


def test_cpu_without_bf16_runs_float32_unless_asked(tiny_model_dir, tmp_path, workers):
    commands, flags = workers
    flags({"avx2", "fma"})
    data = bench_rows(tmp_path / "bench.jsonl", 200)
    r, docs, records = bench(tiny_model_dir, data, tmp_path)
    assert r.exit_code == 0, r.output
    assert [x["name"] for x in json.loads(records.read_text())] == ["smolora", "grouped"]
    assert "bf16 matmul" not in docs.read_text() and not any("--bf16" in c for c in commands)
    commands.clear()
    r, docs, records = bench(tiny_model_dir, data, tmp_path, "--precision", "both")
    assert r.exit_code == 0, r.output
    assert [x["name"] for x in json.loads(records.read_text())] == [
        "smolora",
        "smolora-bfloat16",
        "grouped",
        "grouped-bf16",
    ]
    assert "--precision both" in docs.read_text()
    commands.clear()
    r, _, records = bench(tiny_model_dir, data, tmp_path, "--precision", "bfloat16")
    assert [x["name"] for x in json.loads(records.read_text())] == ["smolora-bfloat16", "grouped-bf16"]


@pytest.mark.parametrize("bad", ["fp8", "", "FLOAT32"])
def test_precision_option_rejects_what_it_does_not_know(tiny_model_dir, tmp_path, workers, bad):
    from helpers import smolora_main

    data = bench_rows(tmp_path / "b.jsonl", 20)
    code, out = smolora_main("bench", "--model", str(tiny_model_dir), "--data", str(data), "--precision", bad)
    assert code == 2 and "--precision" in out and "choose auto, float32, bfloat16 or both" in out
    assert not workers[0]  # nothing ran


def test_split_holds_out_the_last_rows(tmp_path):
    data = bench_rows(tmp_path / "bench.jsonl", 200)
    train, held = split_heldout(data, tmp_path / "split")
    lines = data.read_text().splitlines()
    assert (
        train.read_text().splitlines() == lines[:-HELDOUT]
        and held.read_text().splitlines() == lines[-HELDOUT:]
    )
    small = bench_rows(tmp_path / "small.jsonl", 10)  # a quarter of a small file
    assert len(split_heldout(small, tmp_path / "s2")[1].read_text().splitlines()) == 2
    with pytest.raises(SmoLoRAError, match="at least 4"):
        split_heldout(bench_rows(tmp_path / "three.jsonl", 3), tmp_path / "s3")
    assert data.read_text().splitlines() == lines  # the user's file is left as it was


def test_heldout_loss_is_answer_only_float32_and_leaves_the_model_as_it_was(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).to(torch.bfloat16).train()
    held = bench_rows(tmp_path / "held.jsonl", 5)
    got = heldout_loss(model, tok, held, batch_size=2)  # padded batches give the same as one by one
    assert model.training and model.dtype == torch.bfloat16
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    total = count = 0
    for line in held.read_text().splitlines():
        ids, labels = encode(json.loads(line), tok)
        assert labels.count(-100) > 0 and labels[-1] != -100  # the prompt masked, the answer kept
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor([ids])).logits[0, :-1]
        target = torch.tensor(labels[1:])
        total += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        count += int((target != -100).sum())
    assert got == pytest.approx(total / count, rel=1e-4)


@pytest.mark.skipif(
    not PEERS.exists(), reason="../shared/bench/peers.py is outside the repository, not beside it here"
)
def test_peer_heldout_wraps_the_real_peer_script(tiny_model_dir, tmp_path):
    data = bench_rows(tmp_path / "train.jsonl", 16)
    held = bench_rows(tmp_path / "held.jsonl", 4)
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "peer_heldout.py"),
        "--heldout",
        str(held),
        "--peers",
        str(PEERS),
    ]
    cmd += ["--", "--mode", "grouped", "--model", str(tiny_model_dir), "--data", str(data), "--steps", "1"]
    cmd += ["--warmup", "1", "--bs", "4", "--max-len", "64", "--threads", "1", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(x[12:]) for x in proc.stdout.splitlines() if x.startswith("PEER_RESULT ")]
    assert len(results) == 2 and "heldout_loss" not in results[0]  # the peer's own line, unchanged
    assert results[1] == results[0] | {"heldout_loss": results[1]["heldout_loss"]}
    assert 0 < results[1]["heldout_loss"] < 20


@pytest.mark.parametrize(
    ("flags", "sets", "rows"),
    [({"avx512_bf16"}, [], 2), ({"avx2"}, [], 1), ({"avx512_bf16"}, ["model.dtype=float32"], 1)],
)
def test_memory_mode_takes_two_rows_per_pass_in_bf16(
    tiny_model_dir, tmp_path, monkeypatch, flags, sets, rows
):
    from smolora.bench.run import bench_config

    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    data = bench_rows(tmp_path / "bench.jsonl", 20)
    cfg = bench_config(tiny_model_dir, data, tmp_path, 1, 0, None, lowmem="micro", sets=sets)
    assert cfg.train.micro_batch == rows  # bf16 activations take half: 2 rows fit where float32 fits 1


def test_run_peers_rejects_a_missing_heldout_file_before_training(tmp_path):
    """benchmarks/run_peers.py --heldout MISSING: exit 2 with the file named, no peer started
    (it used to train every peer first and then fail with a traceback)."""
    bench_dir = tmp_path / "bench"
    bench_dir.mkdir()
    (bench_dir / "peers.py").write_text("raise SystemExit('a peer must not run')\n")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "run_peers.py"
    env = {**os.environ, "SMOLORA_BENCH_DIR": str(bench_dir)}
    done = subprocess.run(
        [sys.executable, str(script), "--model", str(tmp_path), "--heldout", str(tmp_path / "nope.jsonl")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--heldout" in done.stderr and "nope.jsonl: no such file" in done.stderr
    assert "a peer must not run" not in done.stdout + done.stderr
