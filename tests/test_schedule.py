"""train.epochs / train.lr / train.eval_every: auto — the choices for a few data sizes, methods and tasks."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import tiny_config, write_qa
from smolora.config import load_config
from smolora.errors import ConfigError
from smolora.train.schedule import MAX_EPOCHS, MIN_STEPS, apply_schedule, auto_schedule

SMOL = 134_515_008  # SmolLM2-135M's parameter count


def cfg_with(*sets):
    return load_config(None, ["data.path=d.jsonl", *sets])


@pytest.mark.parametrize(
    "rows, epochs, steps",
    [
        (40, MAX_EPOCHS, 40),  # 5 steps an epoch: capped at MAX_EPOCHS passes
        (169, 5, 110),  # the 188-row set after its 10% split: 22 steps an epoch
        (360, 3, 135),
        (800, 1, 100),  # one pass is already MIN_STEPS
        (20_000, 1, 2500),
    ],
)
def test_epochs_follow_the_data_size(rows, epochs, steps):
    choice = auto_schedule(cfg_with(), rows, SMOL)
    assert (choice["epochs"], choice["steps"]) == (epochs, steps)
    assert choice["steps"] >= min(MIN_STEPS, MAX_EPOCHS * choice["steps_per_epoch"])
    assert choice["eval_every"] == max(1, steps // 8)
    assert choice["reason"].startswith(f"{rows} rows -> {epochs} epochs = {steps} steps")


def test_the_batch_and_processes_set_the_steps_per_epoch():
    one = auto_schedule(cfg_with("train.batch_size=4", "train.grad_accum=2"), 360, SMOL)
    two = auto_schedule(cfg_with("train.batch_size=4"), 360, SMOL, world=2)
    assert one["steps_per_epoch"] == two["steps_per_epoch"] == 45


@pytest.mark.parametrize(
    "sets, params, lr",
    [
        ((), SMOL, 1e-3),  # LoRA r=16 alpha=32 on a small model
        ((), 1_700_000_000, 5e-4),
        ((), 8_000_000_000, 2e-4),
        (("lora.alpha=64",), SMOL, 5e-4),  # scale 4: twice the step per update, half the rate
        (("lora.method=rslora",), SMOL, 2.5e-4),  # alpha/sqrt(r) = 8
        (("lora.method=full",), SMOL, 5e-5),  # full fine-tuning far lower than LoRA
        (("lora.method=full",), 8_000_000_000, 1e-5),
        (("lora.method=freeze", "lora.freeze_last_n=2"), SMOL, 5e-5),
    ],
)
def test_the_learning_rate_follows_method_scale_and_size(sets, params, lr):
    choice = auto_schedule(cfg_with(*sets), 360, params)
    assert choice["lr"] == pytest.approx(lr)


def test_explicit_values_win_and_are_not_explained():
    choice = auto_schedule(cfg_with("train.epochs=2", "train.lr=3e-4", "train.eval_every=7"), 360, SMOL)
    assert (choice["epochs"], choice["lr"], choice["eval_every"], choice["steps"]) == (2, 3e-4, 7, 90)
    assert ":" not in choice["reason"]  # nothing was chosen, so no why
    capped = auto_schedule(cfg_with("train.max_steps=60"), 360, SMOL)
    assert capped["steps"] == 60 and capped["eval_every"] == 7 and "max_steps 60" in capped["reason"]
    assert "at most" not in capped["reason"]  # the epochs max_steps overrides are not explained
    never = auto_schedule(cfg_with("train.eval_every=null"), 360, SMOL)
    assert never["eval_every"] is None


def test_memorize_gets_many_passes_and_a_recall_check_every_two_epochs():
    choice = auto_schedule(cfg_with("data.task=memorize"), 300, SMOL)
    assert choice["epochs"] >= 20 and choice["steps_per_epoch"] == 38 and choice["lr"] == pytest.approx(2e-3)
    assert choice["eval_every"] == 76
    assert "memorize" in choice["reason"]


def test_apply_schedule_writes_numbers_into_the_config():
    cfg = cfg_with()
    resolved = apply_schedule(cfg, auto_schedule(cfg, 360, SMOL))
    assert (resolved.train.epochs, resolved.train.lr, resolved.train.eval_every) == (3.0, 1e-3, 16)
    assert cfg.train.lr == "auto"  # the original is untouched


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.lr=fast", "train.lr: must be a number or 'auto'"),
        ("train.lr=0", "train.lr: must be above 0"),
        ("train.epochs=-1", "train.epochs: must be above 0"),
        ("train.epochs=.inf", "train.epochs: must be above 0"),
        ("train.eval_every=2.5", "train.eval_every: must be a whole number of steps or 'auto'"),
        ("train.patience=-1", "train.patience"),
        ("data.task=remember", "data.task"),
        ("eval.select=accuracy", "eval.select"),
        ("eval.select_examples=0", "eval.select_examples"),
    ],
)
def test_bad_schedule_values_get_one_line_each(item, message):
    with pytest.raises(ConfigError) as e:
        cfg_with(item)
    assert message in str(e.value)
    assert len(e.value.problems) == 1


def test_a_default_run_logs_its_schedule_and_records_it(tiny_model_dir, tmp_path):
    from smolora.train.recipe import train

    qa = write_qa(tmp_path / "qa.jsonl", n=30)
    auto = ["train.epochs=auto", "train.lr=auto", "train.eval_every=auto"]
    run = train(tiny_config(tiny_model_dir, qa, tmp_path, *auto), show_progress=False)
    log = (run / "train.log").read_text()
    meta = json.loads((run / "adapter" / "smolora.json").read_text())
    # 27 training rows (10% held out), batch 4: 7 steps an epoch, MAX_EPOCHS of them
    assert meta["schedule"]["steps"] == 7 * MAX_EPOCHS and meta["schedule"]["epochs"] == MAX_EPOCHS
    assert f"schedule: 27 rows -> {MAX_EPOCHS} epochs = 56 steps" in log
    assert "s/step over 5 steps -> about" in log  # the time estimate from measured steps
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (saved["epochs"], saved["lr"], saved["eval_every"]) == (MAX_EPOCHS, meta["schedule"]["lr"], 7)
    assert meta["best"]["metric"] == "eval_loss" and len(meta["best"]["evaluations"]) == 8
    assert isinstance(meta["diagnosis"], list)


def test_the_quickstart_without_settings_leaves_the_schedule_to_smolora():
    cfg = load_config("examples/quickstart-defaults.yaml")
    explicit = load_config("examples/quickstart.yaml")
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.eval_every) == ("auto", "auto", "auto")
    assert cfg.data.path == explicit.data.path and cfg.data.val_path == explicit.data.val_path
    # 360 training rows at batch 8: 45 steps an epoch, three of them, at LoRA's small-model rate
    choice = auto_schedule(cfg, 360, SMOL)
    assert (choice["epochs"], choice["steps"], choice["lr"]) == (3, 135, 1e-3)
