"""Nothing lost on a crash: atomic checkpoints with manifests, resume after SIGKILL, training guards.

The SIGKILL test runs real training processes on the tiny model and kills them with the
signal no handler can catch; the guards are tested by injecting the failure (a NaN weight,
an infinite gradient, an out-of-memory error, a full disk) where it would really happen.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import smolora.train.trainer as trainer_module
from helpers import tiny_config
from smolora.config import load_config
from smolora.errors import TrainingError
from smolora.runs import ADAPTER_DIR, CHECKPOINTS_DIR, METRICS_FILE
from smolora.train.checkpoints import MANIFEST, STAGING, check_checkpoint, checkpoints_of
from smolora.train.recipe import last_checkpoint, train


def cfg_for(tiny_model_dir, data, tmp_path, *extra):
    every = ("train.threads=1", "train.save_every=2", "train.keep_checkpoints=3")
    return tiny_config(tiny_model_dir, data, tmp_path, *every, *extra)


def losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}, [r["step"] for r in rows if "loss" in r]


# --- manifests, rename, fallback ------------------------------------------------------------


def test_checkpoints_carry_a_manifest_and_no_staging_is_left(tiny_model_dir, qa_file, tmp_path):
    run = train(cfg_for(tiny_model_dir, qa_file, tmp_path, "train.max_steps=8"), show_progress=False)
    kept = checkpoints_of(run)
    assert [c.name for c in kept] == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]  # keep_checkpoints=3
    for c in kept:
        manifest = json.loads((c / MANIFEST).read_text())
        assert manifest["step"] == int(c.name.split("-")[1])
        assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= set(
            manifest["files"]
        )
        assert check_checkpoint(c) is None
    assert not (run / "checkpoints" / STAGING).exists()


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "no manifest"])
def test_resume_falls_back_to_the_previous_good_checkpoint(tiny_model_dir, qa_file, tmp_path, damage, caplog):
    cfg = cfg_for(tiny_model_dir, qa_file, tmp_path, "train.max_steps=8")
    full = train(cfg, show_progress=False)
    want, _ = losses(full)

    crashed = cfg_for(tiny_model_dir, qa_file, tmp_path, "train.max_steps=8", "output.name=crashed")
    shutil.copytree(full, crashed.run_dir)
    shutil.rmtree(crashed.run_dir / "adapter")
    newest = crashed.run_dir / "checkpoints" / "checkpoint-8"
    if damage == "flip a byte":
        weights = newest / "optimizer.pt"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights = newest / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        (newest / MANIFEST).unlink()

    with caplog.at_level(logging.WARNING, logger="smolora"):
        resumed = train(crashed, resume=True, show_progress=False)
    assert "skipping checkpoint-8" in caplog.text and "falling back to checkpoint-6" in caplog.text
    got, steps = losses(resumed)
    assert steps == list(range(1, 9))  # steps 7-8 logged once: the crashed run's rows were trimmed
    assert got[8] == pytest.approx(want[8], abs=1e-4)


def test_resume_with_no_good_checkpoint_names_the_problems(tiny_model_dir, qa_file, tmp_path):
    cfg = cfg_for(tiny_model_dir, qa_file, tmp_path, "train.max_steps=2")
    run = train(cfg, show_progress=False)
    shutil.rmtree(run / "adapter")
    (run / "checkpoints" / "checkpoint-2" / MANIFEST).unlink()
    with pytest.raises(TrainingError, match="no complete checkpoint.*checkpoint-2: manifest missing"):
        train(cfg, resume=True, show_progress=False)


# --- SIGKILL at several moments, then resume -------------------------------------------------

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from transformers import TrainerCallback
    import smolora.train.checkpoints as checkpoints
    from smolora.config import load_config
    from smolora.train.recipe import train

    where, step, resume, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume", sys.argv[4:]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class KillAfterStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if where == "step" and state.global_step == step:
                die()

    real_save, real_manifest = torch.save, checkpoints.write_manifest

    def save_then_die(obj, f, *a, **kw):  # half of optimizer.pt on disk, then the kill
        if where == "file" and str(f).endswith("optimizer.pt") and f"checkpoint-{step}" in str(f):
            with open(f, "wb") as out:
                out.write(b"half a file")
            die()
        return real_save(obj, f, *a, **kw)

    def manifest_then_die(checkpoint, at):  # every file written, the rename not yet done
        if where == "manifest" and at == step:
            die()
        return real_manifest(checkpoint, at)

    torch.save, checkpoints.write_manifest = save_then_die, manifest_then_die
    train(load_config(None, overrides), resume=resume, show_progress=False, callbacks=[KillAfterStep()])
    """
)


def run_killer(tmp_path, where, step, resume, overrides):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    return subprocess.run(
        [sys.executable, str(script), where, str(step), "resume" if resume else "fresh", *overrides],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_sigkill_at_several_moments_then_resume_matches_an_uninterrupted_run(
    tiny_model_dir, qa_file, tmp_path
):
    base = [
        f"model.name={tiny_model_dir}",
        f"data.path={qa_file}",
        "data.max_length=64",
        "train.batch_size=4",
        "train.lr=1e-2",
        "train.threads=1",
        "train.save_every=2",
        "train.keep_checkpoints=2",
        "train.max_steps=12",
        "train.eval_every=null",  # checkpoints every 2 steps only, none for a best evaluation
        f"output.dir={tmp_path / 'runs'}",
    ]
    ref = run_killer(tmp_path, "none", 0, False, [*base, "output.name=ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    killed = [*base, "output.name=killed"]
    run_dir = tmp_path / "runs" / "killed"

    # 1. killed after step 5 (checkpoint-4 is the newest); 2. killed while writing checkpoint-6's
    # optimizer.pt; 3. killed with checkpoint-10 fully written but not yet renamed; 4. to the end.
    plan = [
        ("step", 5, False, "checkpoint-4"),
        ("file", 6, True, "checkpoint-4"),
        ("manifest", 10, True, "checkpoint-8"),
    ]
    for where, step, resume, newest in plan:
        proc = run_killer(tmp_path, where, step, resume, killed)
        assert proc.returncode == -signal.SIGKILL, (where, proc.stderr[-2000:])
        assert not (run_dir / "adapter").exists()
        assert last_checkpoint(run_dir).name == newest, where
        assert check_checkpoint(last_checkpoint(run_dir)) is None
    done = run_killer(tmp_path, "none", 0, True, killed)
    assert done.returncode == 0, done.stderr[-2000:]

    want, _ = losses(tmp_path / "runs" / "ref")
    got, steps = losses(run_dir)
    assert steps == list(range(1, 13))  # each step logged once, across four processes
    assert got[12] == pytest.approx(want[12], abs=1e-4)
    for step in range(1, 13):
        assert got[step] == pytest.approx(want[step], abs=1e-4), step
    a = load_file(tmp_path / "runs" / "ref" / "adapter" / "adapter_model.safetensors")
    b = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert not (run_dir / "checkpoints" / STAGING).exists()


# --- guards ----------------------------------------------------------------------------------


class AtStep(TrainerCallback):
    """Runs `action(model)` at the start of optimizer step `step` (1-based)."""

    def __init__(self, step, action):
        self.step, self.action = step, action

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step + 1 == self.step:
            self.action(model)


def lora_param(model, kind):
    return next(p for n, p in model.named_parameters() if kind in n and p.requires_grad)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_model_dir, qa_file, tmp_path):
    def poison(model):
        with torch.no_grad():
            lora_param(model, "lora_A").fill_(float("nan"))

    cfg = cfg_for(tiny_model_dir, qa_file, tmp_path, "train.max_steps=8")
    with pytest.raises(TrainingError) as err:
        train(cfg, show_progress=False, callbacks=[AtStep(5, poison)])
    msg = str(err.value)
    assert "loss is nan at step 5" in msg and "checkpoint-4" in msg and "--set train.lr=0.0025" in msg
    assert [c.name for c in checkpoints_of(cfg.run_dir)] == ["checkpoint-2", "checkpoint-4"]
    assert check_checkpoint(cfg.run_dir / "checkpoints" / "checkpoint-4") is None
    assert not (cfg.run_dir / "adapter").exists()


def test_infinite_gradient_is_refused_before_the_optimizer_step(tiny_model_dir, qa_file, tmp_path):
    seen = {}

    def blow_up(model):
        p = lora_param(model, "lora_B")
        seen["param"], seen["before"] = p, p.detach().clone()
        p.register_hook(lambda g: g * float("inf"))

    cfg = cfg_for(tiny_model_dir, qa_file, tmp_path, "train.max_steps=8")
    with pytest.raises(TrainingError, match=r"gradient of .*lora_B.* is not finite at step 3.*checkpoint-2"):
        train(cfg, show_progress=False, callbacks=[AtStep(3, blow_up)])
    assert torch.equal(seen["param"].detach(), seen["before"])  # the bad update never happened


def test_out_of_memory_halves_the_micro_batch_and_continues(
    tiny_model_dir, qa_file, tmp_path, monkeypatch, caplog
):
    real_loss = trainer_module.chunked_lm_loss
    armed = {"on": False}

    def loss_that_runs_out_of_memory(model, input_ids, *a, **kw):
        if armed["on"] and input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CPU out of memory. Tried to allocate 12.00 GiB")
        return real_loss(model, input_ids, *a, **kw)

    monkeypatch.setattr(trainer_module, "chunked_lm_loss", loss_that_runs_out_of_memory)
    arm = AtStep(4, lambda model: armed.update(on=True))  # batch 4 fits for 3 steps, then no more
    cfg = cfg_for(tiny_model_dir, qa_file, tmp_path, "train.max_steps=6", "train.save_every=100")
    with caplog.at_level(logging.WARNING, logger="smolora"):
        run = train(cfg, show_progress=False, callbacks=[arm])
    assert (
        "out of memory at step 4 with train.batch_size=4: retrying from step 3 with batch_size=2"
        in caplog.text
    )
    assert (run / "checkpoints" / "checkpoint-3").is_dir()  # the state at the last finished step
    saved = load_config(run / "config.yaml")
    assert (saved.train.batch_size, saved.train.grad_accum) == (2, 2)
    _, steps = losses(run)
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (run / "adapter" / "adapter_model.safetensors").exists()


def test_out_of_memory_at_batch_one_names_the_settings_to_lower(
    tiny_model_dir, qa_file, tmp_path, monkeypatch
):
    def always_oom(*a, **kw):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")

    monkeypatch.setattr(trainer_module, "chunked_lm_loss", always_oom)
    cfg = cfg_for(tiny_model_dir, qa_file, tmp_path, "train.max_steps=2", "train.batch_size=2")
    with pytest.raises(TrainingError, match="train.batch_size=1.*data.max_length.*gradient_checkpointing"):
        train(cfg, show_progress=False)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        if "checkpoint-4" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    cfg = cfg_for(tiny_model_dir, qa_file, tmp_path, "train.max_steps=8")
    with pytest.raises(
        TrainingError, match=r"disk full while saving checkpoint-4 .*checkpoint-2 is intact.*--resume"
    ):
        train(cfg, show_progress=False)
    assert [c.name for c in checkpoints_of(cfg.run_dir)] == ["checkpoint-2"]
    assert check_checkpoint(cfg.run_dir / "checkpoints" / "checkpoint-2") is None
    assert not (cfg.run_dir / "checkpoints" / STAGING).exists()


# --- a full disk from any writer; data on disk before the rename that publishes it ----------

SAFETENSORS_ENOSPC = "Error while serializing: I/O error: No space left on device (os error 28)"


def _full_disk_in_safetensors(monkeypatch, where: str):
    """safetensors raises its own SafetensorError (not an OSError) when the disk fills."""
    import peft.peft_model
    from safetensors import SafetensorError

    real = peft.peft_model.safe_save_file

    def save(tensors, filename, *a, **kw):
        if where in str(filename):
            raise SafetensorError(SAFETENSORS_ENOSPC)
        return real(tensors, filename, *a, **kw)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", save)


def test_safetensors_disk_full_in_a_checkpoint_gives_the_disk_full_message(
    tiny_model_dir, qa_file, tmp_path, monkeypatch
):
    _full_disk_in_safetensors(monkeypatch, "checkpoint-4")
    cfg = cfg_for(tiny_model_dir, qa_file, tmp_path, "train.max_steps=8")
    with pytest.raises(TrainingError, match=r"disk full while saving checkpoint-4 .*checkpoint-2 is intact"):
        train(cfg, show_progress=False)
    assert [c.name for c in checkpoints_of(cfg.run_dir)] == ["checkpoint-2"]
    assert not (cfg.run_dir / "checkpoints" / STAGING).exists()


def test_safetensors_disk_full_in_the_final_adapter_then_resume(
    tiny_model_dir, qa_file, tmp_path, monkeypatch
):
    _full_disk_in_safetensors(monkeypatch, "adapter.partial")
    cfg = cfg_for(tiny_model_dir, qa_file, tmp_path, "train.max_steps=4")
    with pytest.raises(
        TrainingError, match=r"disk full while saving the adapter .*checkpoint-4 is intact.*--resume"
    ):
        train(cfg, show_progress=False)
    assert not (cfg.run_dir / "adapter.partial").exists() and not (cfg.run_dir / "adapter").exists()
    monkeypatch.undo()  # space freed
    run = train(cfg, resume=True, show_progress=False)
    assert (run / "adapter" / "smolora.json").exists()


def test_checkpoint_and_adapter_files_are_fsynced_before_the_rename(
    tiny_model_dir, qa_file, tmp_path, monkeypatch
):
    synced: set[str] = set()
    renames: list[tuple[str, set[str]]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def replace(src, dst):
        renames.append((str(dst), set(synced)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    run = train(cfg_for(tiny_model_dir, qa_file, tmp_path, "train.max_steps=2"), show_progress=False)
    published = {dst: seen for dst, seen in renames}
    checkpoint = str(run / "checkpoints" / "checkpoint-2")
    staged = str(run / "checkpoints" / STAGING / "checkpoint-2")
    for name in ("adapter_model.safetensors", "optimizer.pt", "trainer_state.json"):
        assert f"{staged}/{name}" in published[checkpoint], name
    assert staged in published[checkpoint]  # the directory itself too
    adapter = str(run / "adapter")
    for name in ("adapter_model.safetensors", "smolora.json"):
        assert f"{run}/adapter.partial/{name}" in published[adapter], name


def test_trim_metrics_replaces_the_file_atomically(tmp_path, monkeypatch):
    from smolora.train.checkpoints import trim_metrics

    rows = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 7))
    path = tmp_path / "metrics.jsonl"
    path.write_text(rows)
    with open(path) as before:  # a reader (the UI) holding the file: it sees the old file, whole
        trim_metrics(tmp_path, 4)
        assert before.read() == rows
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4]

    # The disk fills while the trimmed copy is written: the original stays, no temp file is left.
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    path.write_text(rows)
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        trim_metrics(tmp_path, 2)
    assert path.read_text() == rows and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_resume_from_the_final_checkpoint_only_saves(tiny_model_dir, qa_file, tmp_path):
    """A checkpoint at the end of the schedule, then a crash before the adapter save: no extra step."""
    cfg = tiny_config(tiny_model_dir, qa_file, tmp_path, "train.max_steps=4", "train.save_every=2")
    run = train(cfg, show_progress=False)
    assert (run / CHECKPOINTS_DIR / "checkpoint-4").is_dir()
    # a crash between the last checkpoint and the adapter save: the adapter is missing
    shutil.rmtree(run / ADAPTER_DIR)
    run = train(cfg, resume=True, show_progress=False)
    steps = [r["step"] for r in map(json.loads, (run / METRICS_FILE).read_text().splitlines()) if "loss" in r]
    assert max(steps) == 4, steps
    assert (run / ADAPTER_DIR / "smolora.json").exists()
    # and the adapter saved is the one the final checkpoint holds, not a fresh or further-trained one
    saved = load_file(run / ADAPTER_DIR / "adapter_model.safetensors")
    final = load_file(run / CHECKPOINTS_DIR / "checkpoint-4" / "adapter_model.safetensors")
    assert saved.keys() == final.keys()
    assert all(torch.equal(saved[k], final[k]) for k in saved)
