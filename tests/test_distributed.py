"""Several processes: `smolora train --nproc 2` on CPU (gloo) against one process, same global batch.

The two-process runs launch real workers through torchrun, so each takes tens of seconds
(process start-up and imports, twice over); everything else here is a plain unit test.

Why the curves can match exactly: with `train.batching=padded` both runs draw one seeded
permutation of the rows (accelerate's seedable sampler, seeded with train.seed). One process
takes rows [0:4] for step 1; two processes with batch 2 take [0:2] and [2:4] (accelerate hands
consecutive batches to consecutive ranks), so every optimizer step sees the same four rows. The
loss is normalised by the label count of the whole global batch in both runs, and DDP's
gradient average is undone by the world size, so the updates are the same up to float
summation order. Measured difference: ~1e-7; the tolerance below is 1e-4 (relative), which also
absorbs the two loss paths (DDP runs the model's own forward, one process the chunked head).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smolora.config import load_config
from smolora.errors import ConfigError, TrainingError
from smolora.train.distributed import check_saved_weights, global_tokens, on_main
from smolora.train.launch import LaunchOptions, launch_command, train_cli_args, wants_launch
from smolora.train.recipe import train

STEPS = 4
TOL = 1e-4  # relative, on every logged loss; see the module docstring


def overrides(model_dir: Path, data: Path, out: Path, batch: int, name: str) -> list[str]:
    return [
        f"model.name={model_dir}",
        f"data.path={data}",
        "data.max_length=64",
        "train.lr=1e-2",
        f"train.max_steps={STEPS}",
        "train.save_every=2",
        "train.keep_checkpoints=5",
        "train.eval_every=null",  # one evaluation at the end: the checkpoints are the save_every ones
        "train.batching=padded",  # a seeded random order that both runs share (see above)
        "model.dtype=float32",  # the same numbers on any CPU (auto is bf16 where it has it, and fuses)
        f"train.batch_size={batch}",
        f"output.dir={out}",
        f"output.name={name}",
    ]


def launch_two(sets: list[str], home: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "smolora.cli.main", "-q", "train", "--nproc", "2", *extra]
    for s in sets:
        args += ["--set", s]
    env = {
        **os.environ,
        "SMOLORA_HOME": str(home),
        "OMP_NUM_THREADS": "1",  # one thread per process: 2 processes on a 2-core box
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("LOCAL_RANK", None)
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=None)


def step_rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in step_rows(run)]


@pytest.fixture(scope="module")
def two_proc_run(tiny_model_dir, tmp_path_factory, request):
    """One 2-process run (batch 2 each) shared by the tests below."""
    base = tmp_path_factory.mktemp("ddp")
    data = base / "qa.jsonl"
    rows = [{"question": f"What is {i} plus one?", "answer": f"It is {i + 1}."} for i in range(40)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sets = overrides(tiny_model_dir, data, base / "runs", 2, "two")
    r = launch_two(sets, base / "home")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {"run": base / "runs" / "two", "data": data, "sets": sets, "base": base, "stdout": r.stdout}


@pytest.mark.distributed
def test_two_processes_match_one_with_the_same_global_batch(two_proc_run, tiny_model_dir, tmp_path):
    two = two_proc_run["run"]
    one = train(
        load_config(None, overrides(tiny_model_dir, two_proc_run["data"], tmp_path / "runs", 4, "one")),
        show_progress=False,
    )
    assert len(losses(two)) == STEPS  # rank 1 wrote nothing: no duplicated lines
    assert losses(two) == pytest.approx(losses(one), rel=TOL)
    # tokens/s is the global figure: the token counter is summed over both ranks
    assert step_rows(two)[-1]["tokens"] == step_rows(one)[-1]["tokens"] > 0
    # the same update, so the same adapter
    a, b = (load_file(r / "adapter" / "adapter_model.safetensors") for r in (one, two))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    # the launching process printed one line for the whole run
    assert two_proc_run["stdout"].count("done:") == 1


@pytest.mark.distributed
def test_only_rank_zero_writes_one_complete_run_directory(two_proc_run, tiny_model_dir):
    run = two_proc_run["run"]
    assert sorted(p.name for p in run.parent.iterdir()) == ["two"]
    assert sorted(p.name for p in run.iterdir()) == [
        ".smolora-run",  # the run marker (runs.RUN_MARKER)
        "adapter",
        "checkpoints",
        "config.yaml",
        "metrics.jsonl",
        "train.log",
    ]
    ckpt = run / "checkpoints" / "checkpoint-2"
    assert (ckpt / "rng_state_0.pth").exists() and (ckpt / "rng_state_1.pth").exists()
    # complete (shapes, every LoRA layer, non-zero norms) and loadable in plain PEFT
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run / "adapter")
    summary = check_saved_weights(run / "adapter", model)
    assert summary["lora_layers"] == 14  # 2 layers x q,k,v,o,gate,up,down
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


@pytest.mark.distributed
def test_resume_under_ddp_continues_the_same_curve(two_proc_run):
    run = two_proc_run["run"]
    crashed = two_proc_run["base"] / "runs-crashed" / "two"
    shutil.copytree(run, crashed)
    shutil.rmtree(crashed / "adapter")
    shutil.rmtree(crashed / "checkpoints" / "checkpoint-4")
    (crashed / "metrics.jsonl").write_text("")
    sets = [
        s if not s.startswith("output.dir=") else f"output.dir={crashed.parent}" for s in two_proc_run["sets"]
    ]
    r = launch_two(sets, two_proc_run["base"] / "home", "--resume")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert losses(crashed) == pytest.approx(losses(run)[2:], rel=TOL)  # steps 3 and 4 again
    check_saved_weights(crashed / "adapter")


# --- the launcher, without launching ------------------------------------------------------


def test_launch_command_torchrun_single_node(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cmd, env = launch_command(LaunchOptions(nproc=4), ["train", "c.yaml"])
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node"] and cmd[4] == "4"
    assert "--standalone" in cmd  # a free port: runs side by side never collide
    assert cmd[-4:] == ["-m", "smolora.cli.main", "train", "c.yaml"]
    assert int(env["OMP_NUM_THREADS"]) >= 1


def test_launch_command_two_nodes_and_accelerate(tmp_path):
    opts = LaunchOptions(nproc=8, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29400)
    cmd, _ = launch_command(opts, ["train", "c.yaml"])
    text = " ".join(cmd)
    assert "--nnodes 2 --node_rank 1 --master_addr 10.0.0.1 --master_port 29400" in text
    assert "--standalone" not in cmd
    acc = tmp_path / "fsdp.yaml"
    acc.write_text("distributed_type: FSDP\n")
    cmd, _ = launch_command(
        LaunchOptions(nproc=8, nnodes=2, node_rank=1, master_addr="h", accelerate_config=str(acc)), ["train"]
    )
    text = " ".join(cmd)
    assert "accelerate.commands.launch --config_file" in text
    assert "--num_processes 16 --num_machines 2 --machine_rank 1 --main_process_ip h" in text


def test_launch_options_are_checked_before_anything_starts(tmp_path):
    with pytest.raises(ConfigError, match="--master-addr"):
        launch_command(LaunchOptions(nproc=2, nnodes=2), ["train"])
    with pytest.raises(ConfigError, match="node ranks"):
        launch_command(LaunchOptions(nproc=2, nnodes=2, node_rank=2, master_addr="h"), ["train"])
    with pytest.raises(ConfigError, match="examples/accelerate"):
        launch_command(LaunchOptions(accelerate_config=str(tmp_path / "missing.yaml")), ["train"])


def test_workers_never_launch_again(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert wants_launch(LaunchOptions(nproc=2))
    assert not wants_launch(LaunchOptions(nproc=1))
    assert wants_launch(LaunchOptions(accelerate_config="x.yaml"))
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not wants_launch(LaunchOptions(nproc=2))
    assert not wants_launch(LaunchOptions(accelerate_config="x.yaml"))


def test_worker_arguments_drop_the_launch_flags():
    args = train_cli_args(Path("c.yaml"), ["train.lr=1e-4"], resume=True, quiet=True)
    assert args == ["--quiet", "train", "c.yaml", "--set", "train.lr=1e-4", "--resume"]


def test_train_help_shows_the_launch_options():
    from typer.testing import CliRunner

    from smolora.cli.main import app

    r = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for flag in ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port", "Example:"):
        assert flag in r.output


# --- rank helpers in one process ------------------------------------------------------------


def test_rank_helpers_are_no_ops_in_one_process():
    class One:
        num_processes = 1

    assert on_main(One(), lambda: 7) == 7
    counter = {"tokens": 10}
    global_tokens(counter, {})
    assert counter == {"tokens": 10}


# --- the adapter completeness guard -----------------------------------------------------------


@pytest.fixture
def lora_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from smolora.config import LoraSection
    from smolora.model.adapters import METHODS

    model = METHODS["lora"](AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraSection(r=4))
    with torch.no_grad():  # as if trained: B leaves zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    return model


def test_a_complete_adapter_passes(lora_model, tmp_path):
    lora_model.save_pretrained(tmp_path / "ok")
    assert check_saved_weights(tmp_path / "ok", lora_model)["lora_layers"] == 14


def _resave(src: Path, dst: Path, change) -> Path:
    from safetensors.torch import save_file

    tensors = load_file(src / "adapter_model.safetensors")
    dst.mkdir()
    save_file(change(tensors), dst / "adapter_model.safetensors")
    return dst


@pytest.mark.parametrize(
    ("case", "change", "message"),
    [
        # ZeRO-3 without gathering: every parameter is an empty placeholder
        ("empty", lambda t: {k: torch.empty(0) for k in t}, "empty"),
        # FSDP sharded save: rank 0's half of each matrix
        ("shard", lambda t: {k: v[: max(1, v.shape[0] // 2)] for k, v in t.items()}, "incomplete"),
        # a layer lost on the way
        ("missing", lambda t: {k: v for k, v in t.items() if "layers.1.mlp.down_proj" not in k}, "missing"),
        # the untrained copy saved instead of the trained one
        ("untrained", lambda t: {k: (v * 0 if "lora_B" in k else v) for k, v in t.items()}, "lora_B is zero"),
    ],
)
def test_an_incomplete_adapter_fails_loudly(lora_model, tmp_path, case, change, message):
    lora_model.save_pretrained(tmp_path / "ok")
    bad = _resave(tmp_path / "ok", tmp_path / case, change)
    with pytest.raises(TrainingError, match=message):
        check_saved_weights(bad, lora_model)


def test_no_weights_file_fails(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(TrainingError, match="no weights"):
        check_saved_weights(tmp_path / "nothing")
