"""Plain helpers the tests share: the tiny tokenizer and model, question/answer data, the settings
of a tiny run, and what more than one test file drives the CLI, the server, the hub fake and the UI
with. Fixtures live in conftest.py; everything a test imports lives here (never from another test file).

Run as:
    from helpers import make_tiny_model, tiny_config, write_qa
    cfg = tiny_config(tiny_model_dir, write_qa(tmp_path / "qa.jsonl"), tmp_path, "train.max_steps=2")
    run = train(cfg, show_progress=False)           # tmp_path/runs/tiny
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The capital of France is Paris.",
    "Write a haiku about rivers and the sea.",
    "Extract the product and the city: order 3 lamps to Lisbon.",
    "product=lamp; qty=3; city=Lisbon",
    "Summarize the following text in one sentence.",
    "question answer instruction input output response system user assistant",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}=-_/",
] * 20


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def make_tiny_model(vocab_size: int, arch: str = "llama", layers: int = 2):
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Qwen2Config

    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    if arch == "llama":
        config = LlamaConfig(**common)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    elif arch == "gemma3":
        config = Gemma3TextConfig(**common, head_dim=8, sliding_window=64)
    else:
        raise ValueError(arch)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def write_qa(path: Path, n: int = 40) -> Path:
    """n question/answer pairs ("What is 3 plus one?" / "It is 4.") as JSON lines; the path back."""
    rows = [{"question": f"What is {i} plus one?", "answer": f"It is {i + 1}."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_overrides(model_dir, data, out: Path, *extra: str) -> list[str]:
    """The `--set` list of a tiny run into out/runs/tiny; `extra` come last, so they win.

    Short sequences and batches keep a step in milliseconds; lr 1e-2 moves the loss within a few
    steps; a checkpoint every 4 steps (five kept) gives resume tests something to resume from.
    One epoch and one evaluation at the end keep step and checkpoint counts what the tests
    expect; tests of the auto schedule and of best-checkpoint selection set them back to auto.
    """
    return [
        f"model.name={model_dir}",
        f"data.path={data}",
        "data.max_length=64",
        "train.batch_size=4",
        "train.lr=1e-2",
        "train.epochs=1",
        "train.eval_every=null",
        "train.save_every=4",
        "train.keep_checkpoints=5",
        f"output.dir={out / 'runs'}",
        "output.name=tiny",
        *extra,
    ]


def tiny_config(model_dir, data, out: Path, *extra: str):
    """The validated config of a tiny run (see tiny_overrides)."""
    from smolora.config import load_config

    return load_config(None, tiny_overrides(model_dir, data, out, *extra))


def arch_config(arch: str):
    """A four-layer transformers config of `arch` (llama, qwen2, gemma3) for layer surgery; Qwen2 and
    Gemma 3 mix sliding-window and full attention, window 16 tokens."""
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":  # layers 2 and 3 use the sliding window
        return Qwen2Config(**common, use_sliding_window=True, sliding_window=16, max_window_layers=2)
    types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    return Gemma3TextConfig(**common, head_dim=8, sliding_window=16, layer_types=types)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path: to tell that nobody wrote into a shared run."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def json_rows(text: str) -> list[dict]:
    """The JSON objects `--json` prints, one after another (rich indents them over several lines)."""
    decoder, rows, i = json.JSONDecoder(), [], 0
    while (i := text.find("{", i)) != -1:
        row, i = decoder.raw_decode(text, i)
        rows.append(row)
    return rows


# --- smolora push against the fake hub (the `fake_hub` fixture) ----------------------------------


def push_cli(fake_hub, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_ENDPOINT": fake_hub["url"],
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "hf_fake_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "smolora.cli.main", "push", *args], capture_output=True, text=True, env=env
    )


def last_commit(fake_hub) -> dict:
    return [c for c in fake_hub["calls"] if c["call"] == "commit"][-1]


# --- smolora serve as a subprocess -------------------------------------------------------------


def other_adapter(run, root):
    """A second adapter for the same base without a second training: the first one, its B matrices scaled."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = root / "runs" / "second"
    shutil.copytree(run / "adapter", out / "adapter")
    weights = out / "adapter" / "adapter_model.safetensors"
    tensors = {k: v * -20 if "lora_B" in k else v for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    return out


def start_server(run, tmp_path_factory, *flags):
    """A `smolora serve` subprocess of run on a free port, once /health answers: (process, url, log)."""
    import httpx

    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "smolora.cli.main",
        "serve",
        str(run),
        "--port",
        str(port),
        "--threads",
        "1",
        *flags,
    ]
    env = {**os.environ, "SMOLORA_HOME": str(tmp_path_factory.mktemp("serve-home"))}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    while True:  # until the model is loaded, or the process died
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            time.sleep(0.3)


# --- the web UI's HTTP API (the `ui_ws` and `ui_client` fixtures) --------------------------------

UI_TOKEN = "test-token-0123456789abcdef"
UI_HEADERS = {"X-SmoLoRA": "1", "Authorization": f"Bearer {UI_TOKEN}"}
UI_BASE = "http://127.0.0.1:7860"  # a loopback Host, as a browser on this machine sends


def workspace_overrides(name: str, *extra: str) -> list[str]:
    """The overrides the UI sends for a tiny run: paths relative to the workspace, no output.dir."""
    return [
        "model.name=tiny-llama",
        "data.path=qa.jsonl",
        "data.max_length=64",
        "train.batch_size=4",
        "train.lr=1e-2",
        f"output.name={name}",
        *extra,
    ]


def train_run(ws: Path, name: str, *extra: str) -> Path:
    """A finished run in the workspace, trained in-process (seconds on the tiny model)."""
    from smolora.config import load_config
    from smolora.train.recipe import train

    overrides = [
        *workspace_overrides(name, "train.max_steps=6", "train.save_every=3", *extra),
        f"model.name={ws / 'tiny-llama'}",
        f"data.path={ws / 'qa.jsonl'}",
        f"output.dir={ws / 'runs'}",
    ]
    return train(load_config(None, overrides), show_progress=False)


# --- smolora bench: a report of the right shape, without running any model -------------------------


def fake_report() -> dict:
    run = {"step_s": 10.0, "peak_rss_mib": 1000, "last_loss": 1.5, "wall_s": 60}
    return {
        "command": "smolora bench --steps 2",
        "total_s": 1.0,
        "machine": {
            "cpu": "cpu",
            "physical_cores": 2,
            "logical_cpus": 2,
            "memory_gib": 8,
            "avx512": False,
            "cuda": False,
            "versions": {"torch": "x"},
        },
        "load_before": [1, 1, 1],
        "load_after": [1, 1, 1],
        "matmul": {"peak_gflops": 100.0, "weighted_gflops": 80.0, "per_shape": {}, "tokens": 8, "threads": 2},
        "flops_per_token": 0.5e9,
        "runs": [
            {"name": "smolora", "real_tokens_per_s": 150.0, **run, "preprocess_examples_per_s": 6000.0},
            {"name": "naive", "real_tokens_per_s": 40.0, **run},
            {"name": "grouped", "real_tokens_per_s": 120.0, **run},
            {"name": "trl", "error": "exit 1: boom", "wall_s": 3},
        ],
        "load": {"cached_load_s": 2.0},
        "generation": {
            "prompts": 8,
            "max_new_tokens": 32,
            "one_at_a_time": {"tokens_per_s": 10.0, "prefill_s": 2.2, "decode_tokens_per_s": 14.0},
            "batched": {"tokens_per_s": 20.0, "prefill_s": 2.5, "decode_tokens_per_s": 49.0},
            "speedup": 2.0,
            "decode_speedup": 3.5,
        },
    }


def smolora_main(*args, stderr_only: bool = False) -> tuple[int, str]:
    """`smolora ARGS` as the console script runs it (cli.main: a SmoLoRAError is one line, exit 2),
    in CliRunner's isolation: (exit code, stdout + stderr, or stderr alone)."""
    from typer.testing import CliRunner

    from smolora.cli.main import main

    argv = sys.argv
    with CliRunner().isolation(env={"COLUMNS": "400"}) as (out, err, _):
        sys.argv = ["smolora", *map(str, args)]
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        finally:
            sys.argv = argv
        return code, ("" if stderr_only else out.getvalue().decode()) + err.getvalue().decode()


def fake_bench_workers(monkeypatch, tmp_path: Path, answer) -> list[list[str]]:
    """`smolora bench` with its worker processes faked: each command is recorded and answered by
    `answer(cmd)`; an empty peers.py stands for ../shared/bench; the matmul peak is fake_report()'s.
    The commands list comes back (it fills as the bench runs)."""
    from smolora.bench import launch, machine

    commands: list[list[str]] = []
    peers = tmp_path / "peers"
    peers.mkdir()
    (peers / "peers.py").write_text("")
    monkeypatch.setattr(
        launch, "run_json_process", lambda cmd, marker, timeout=None: commands.append(cmd) or answer(cmd)
    )
    monkeypatch.setattr(launch.load_peers(), "shared_bench_dir", lambda: peers)  # benchmarks/run_peers.py
    matmul = fake_report()["matmul"]
    monkeypatch.setattr(machine, "matmul_peak", lambda model_dir, dtype="float32": matmul | {"dtype": dtype})
    return commands
