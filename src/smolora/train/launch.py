"""Start the same training recipe on several processes, GPUs or nodes.

`smolora train CONFIG --nproc N` re-runs `python -m smolora.cli.main train CONFIG ...` (the same
arguments minus the launch flags) once per process under PyTorch's own launcher
(`torch.distributed.run`, a.k.a. torchrun): DDP, NCCL on GPUs, gloo on CPU. With
`train.accelerate_config: FILE` it goes through `accelerate launch --config_file FILE`
instead, which is how FSDP and DeepSpeed ZeRO are switched on (see examples/accelerate/).
Inside the launched processes nothing is launched again: the launcher sets LOCAL_RANK.

Run as:
    cmd, env = launch_command(LaunchOptions(nproc=2), ["train", "my.yaml", "--set", "train.max_steps=50"])
    subprocess.run(cmd, env=env, check=True)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from smolora.errors import ConfigError, TrainingError

DEFAULT_PORT = 29500
log = logging.getLogger("smolora")


@dataclass
class LaunchOptions:
    nproc: int | None = None  # processes per node (None: 1, or what the accelerate config says)
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    accelerate_config: str | None = None


def inside_launch() -> bool:
    """True in a process started by torchrun / accelerate launch (they set LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def wants_launch(opts: LaunchOptions) -> bool:
    """Several processes asked for, or an accelerate config, and we are not a launched worker yet."""
    if inside_launch():
        return False
    return (opts.nproc or 1) > 1 or opts.nnodes > 1 or opts.accelerate_config is not None


def check_options(opts: LaunchOptions) -> None:
    """Fail before starting anything: every multi-node run needs the address of node 0."""
    if opts.nproc is not None and opts.nproc < 1:
        raise ConfigError(f"--nproc {opts.nproc}: give 1 or more processes per node")
    if opts.nnodes < 1 or not 0 <= opts.node_rank < opts.nnodes:
        raise ConfigError(
            f"--node-rank {opts.node_rank} with --nnodes {opts.nnodes}: node ranks run from 0 to nnodes-1"
        )
    if opts.nnodes > 1 and not opts.master_addr:
        raise ConfigError(
            "--nnodes > 1 needs --master-addr HOST (the address of node 0, reachable from every node) "
            "and the same --master-port on every node"
        )
    if opts.accelerate_config and not Path(opts.accelerate_config).exists():
        raise ConfigError(
            f"train.accelerate_config: {opts.accelerate_config} not found; "
            "see examples/accelerate/ for DDP, FSDP and DeepSpeed configs"
        )


def launch_command(opts: LaunchOptions, cli_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The launcher command line and its environment; `cli_args` are the `smolora` arguments."""
    check_options(opts)
    script = ["-m", "smolora.cli.main", *cli_args]
    env = dict(os.environ)
    nproc = opts.nproc or 1
    if "OMP_NUM_THREADS" not in env:
        # torchrun would force 1 thread (with a warning); a fair share of the cores is faster on CPU.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")  # N processes x M tokenizer threads oversubscribes
    if opts.accelerate_config:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", opts.accelerate_config]
        if opts.nproc is not None or opts.nnodes > 1:
            # accelerate counts processes over all machines; ours is per node, like torchrun's.
            cmd += ["--num_processes", str(nproc * opts.nnodes), "--num_machines", str(opts.nnodes)]
        if opts.nnodes > 1:
            cmd += ["--machine_rank", str(opts.node_rank), "--main_process_ip", str(opts.master_addr)]
        if opts.master_port is not None or opts.nnodes > 1:
            cmd += ["--main_process_port", str(opts.master_port or DEFAULT_PORT)]
        return [*cmd, *script], env
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    if opts.nnodes == 1 and opts.master_addr is None and opts.master_port is None:
        cmd += ["--standalone"]  # a free local port: two runs on one machine never collide
    else:
        cmd += [
            "--nnodes",
            str(opts.nnodes),
            "--node_rank",
            str(opts.node_rank),
            "--master_addr",
            opts.master_addr or "127.0.0.1",
            "--master_port",
            str(opts.master_port or DEFAULT_PORT),
        ]
    return [*cmd, *script], env


def train_cli_args(
    config: Path | None, overrides: list[str], resume: bool, quiet: bool = False, verbose: bool = False
) -> list[str]:
    """`smolora` arguments that repeat a `train` call without its launch flags."""
    args = ["--quiet"] if quiet else ["--verbose"] if verbose else []
    args.append("train")
    if config is not None:
        args.append(str(config))
    for item in overrides:
        args += ["--set", item]
    if resume:
        args.append("--resume")
    return args


def sharding_without_gpu(accelerate_config: str | None) -> str | None:
    """FSDP / DeepSpeed named in the accelerate config on a machine without CUDA, else None."""
    if not accelerate_config:
        return None
    import torch
    import yaml

    kind = str((yaml.safe_load(Path(accelerate_config).read_text()) or {}).get("distributed_type", ""))
    return kind if kind in ("FSDP", "DEEPSPEED") and not torch.cuda.is_available() else None


def run_launch(opts: LaunchOptions, cli_args: list[str]) -> None:
    """Run the launcher in the foreground; a failure becomes one TrainingError line."""
    cmd, env = launch_command(opts, cli_args)
    kind = sharding_without_gpu(opts.accelerate_config)
    if kind:
        # accelerate applies FSDP / DeepSpeed to GPUs only; on CPU the processes run plain DDP (gloo).
        log.warning("%s needs CUDA GPUs; on this CPU-only machine the run is plain DDP over gloo", kind)
    # Ctrl-C reaches the launcher and its workers alike; the workers checkpoint, then stop.
    rc = subprocess.run(cmd, env=env).returncode
    if rc != 0:
        raise TrainingError(
            f"the distributed run failed (launcher exit code {rc}); the workers' own error is printed "
            "above. Fix it, then continue with the same command plus --resume"
        )
