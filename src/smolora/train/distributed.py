"""What the training recipe needs to know when several processes run it at once.

One process per GPU (or per CPU slot with gloo), all running the recipe (recipe.py). Rank 0 alone writes
the run directory; the others wait for it. The token counter becomes a global figure at
every log; a stop request (Ctrl-C on one node) reaches every rank at the same step; under
FSDP / DeepSpeed ZeRO-3 the weights are gathered before the adapter is written, and the
written adapter is checked, because an adapter saved from sharded weights is silently empty.

Run as:
    state = dist_state(device)                       # accelerate.PartialState, process group ready
    run_dir = on_main(state, lambda: prepare_run_dir(cfg, resume))
    check_saved_weights(run_dir / "adapter", model)  # TrainingError if empty or wrong-shaped
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import TrainerCallback

from smolora.errors import SmoLoRAError, TrainingError

T = TypeVar("T")


def dist_state(device: str):
    """accelerate's PartialState: reads the launcher's env and starts the process group (gloo on CPU)."""
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu")


def on_main(state, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result (or its error) to every rank.

    A plain barrier would leave the other ranks waiting forever when rank 0 fails; this way
    every rank raises the same one-line error.
    """
    if state.num_processes == 1:
        return fn()
    box: list[Any] = [None]
    failure: Exception | None = None
    if state.is_main_process:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # a failure on rank 0 must still release the others
            failure = e
            message = str(e) if isinstance(e, SmoLoRAError) else f"rank 0 failed: {type(e).__name__}: {e}"
            box[0] = ("error", message)
    torch.distributed.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    status, value = box[0]
    if status == "error":
        raise TrainingError(value)
    return value


def local_threads(configured: int | None, cores: int) -> int:
    """CPU threads for this process: the configured number, else its share of this node's cores."""
    if configured:
        return configured
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def global_tokens(counter: dict[str, int], synced: dict[str, int]) -> None:
    """Turn this rank's token counter into the sum over all ranks (call on every rank, at each log).

    `counter["tokens"]` held the global total at the last sync; what this rank added since then is
    summed over the ranks. Afterwards every rank holds the same global count.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    added = torch.tensor([counter["tokens"] - synced.get("tokens", 0)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        added = added.cuda()
    dist.all_reduce(added)
    counter["tokens"] = synced.get("tokens", 0) + int(added.item())
    synced["tokens"] = counter["tokens"]


class SyncStop(TrainerCallback):
    """A stop request on any rank stops every rank after the same step (else the others hang).

    Added after `StopOnSignal`, so it sees that callback's decision for this step.
    """

    def __init__(self, stopper):
        self.stopper = stopper

    def on_step_end(self, args, state, control, **kw):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return control
        flag = torch.tensor([1.0 if control.should_training_stop and self.stopper.requested else 0.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            self.stopper.requested = True
            control.should_save = True
            control.should_training_stop = True
        return control


def full_state_dict(trainer) -> dict[str, torch.Tensor] | None:
    """Gathered weights under FSDP / DeepSpeed (a collective: call on every rank); None otherwise."""
    if not (getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)):
        return None
    wrapped = trainer.deepspeed if trainer.is_deepspeed_enabled else trainer.model
    try:
        return trainer.accelerator.get_state_dict(wrapped)
    except ValueError as e:  # ZeRO-3 without stage3_gather_16bit_weights_on_model_save
        raise TrainingError(
            f"cannot gather the sharded weights to save the adapter ({e}); set "
            "zero_optimization.stage3_gather_16bit_weights_on_model_save: true in the DeepSpeed config "
            "(zero3_save_16bit_model: true in the accelerate config), see examples/accelerate/"
        ) from None


# Wrapper modules that FSDP, activation checkpointing and torch.compile insert into module names.
_WRAPPERS = re.compile(r"(?<![^.])(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod|module)\.")


def _lora_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Module name (wrappers stripped) -> (in_features, out_features) of every LoRA layer."""
    shapes = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "in_features") and len(module.lora_A):
            shapes[_WRAPPERS.sub("", name + ".")[:-1]] = (int(module.in_features), int(module.out_features))
    return shapes


def check_saved_weights(
    out_dir: Path, model: torch.nn.Module | None = None, trained: bool = True, sharded: bool = True
) -> dict:
    """Fail loudly if the saved adapter (or full model) is empty, truncated or shaped wrongly.

    Checks: the weights file exists and holds tensors; no tensor is empty (ZeRO-3's failure);
    every LoRA pair agrees on its rank and, given the model, on the layer's in/out features and
    covers every LoRA layer (a shard instead of the whole is FSDP's failure); A matrices are
    non-zero (they start random) and, after training, some B matrix is too. Returns a summary.
    `trained`: some optimizer step had a non-zero learning rate (with warmup, step 1's is 0).
    `sharded`: several processes trained, so the FSDP / ZeRO-3 settings are the likely cause.
    """
    from safetensors import safe_open

    files = sorted(out_dir.glob("*.safetensors"))
    fix = (
        "under FSDP keep fsdp_state_dict_type: FULL_STATE_DICT; under DeepSpeed ZeRO-3 set "
        "zero3_save_16bit_model: true (see examples/accelerate/)"
        if sharded
        else "this is a bug in saving; please report it with the run's train.log"
    )
    if not files:
        raise TrainingError(f"{out_dir}: no weights were written; {fix}")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            tensors.update({k: fh.get_tensor(k) for k in fh.keys()})  # noqa: SIM118 (safe_open API)
    empty = [k for k, v in tensors.items() if v.numel() == 0]
    if not tensors or empty:
        raise TrainingError(
            f"{out_dir}: the saved weights are empty ({len(empty)} of {len(tensors)} tensors have no "
            f"elements, e.g. {empty[:2]}); the sharded weights were not gathered: {fix}"
        )
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = re.match(r"(.+)\.lora_(A|B)\.weight$", key)
        if m:
            pairs.setdefault(m.group(1), {})[m.group(2)] = value
    problems = []
    for name, ab in pairs.items():
        a, b = ab.get("A"), ab.get("B")
        if a is None or b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            problems.append(
                f"{name}: A {tuple(a.shape) if a is not None else None}, B {tuple(b.shape) if b is not None else None}"
            )
        elif not float(a.float().norm()) > 0:
            problems.append(f"{name}: lora_A is all zeros")
    if model is not None and pairs:
        expected = _lora_shapes(model)
        saved = {_WRAPPERS.sub("", n + ".")[:-1] for n in pairs}
        missing = sorted(n for n in expected if n not in saved)
        if missing:
            problems.append(f"{len(missing)} of {len(expected)} LoRA layers missing, e.g. {missing[0]}")
        for name, ab in pairs.items():
            shape = expected.get(_WRAPPERS.sub("", name + ".")[:-1])
            if shape and "A" in ab and "B" in ab and (ab["A"].shape[1], ab["B"].shape[0]) != shape:
                problems.append(
                    f"{name}: saved {tuple(ab['A'].shape[1:])}->{tuple(ab['B'].shape[:1])}, layer is {shape}"
                )
    if pairs and trained and not any(float(ab["B"].float().norm()) > 0 for ab in pairs.values() if "B" in ab):
        problems.append("every lora_B is zero: the trained weights never reached the saved file")
    if problems:
        raise TrainingError(f"{out_dir}: the saved adapter is incomplete: {'; '.join(problems[:3])}; {fix}")
    return {
        "tensors": len(tensors),
        "lora_layers": len(pairs),
        "numel": sum(v.numel() for v in tensors.values()),
    }
