"""Run directories have one owner: names are one folder, nothing unmarked is deleted, re-runs stage.

Each test points training at the kind of directory a careless command would name (the
parent of runs/, a user's data/ folder, an older run) and checks what is left on disk.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import smolora.train.recipe as train_module
from helpers import tiny_config
from smolora.config import build_config, load_config
from smolora.errors import ConfigError, SmoLoRAError
from smolora.runs import RUN_MARKER, find_runs, is_marked
from smolora.train.recipe import prepare_run_dir, train


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "a\\b", "nul\0byte", " "])
def test_run_names_are_one_folder(name):
    if name.strip():  # `--set output.name= ` means "unset", like any empty --set value
        with pytest.raises(ConfigError, match="output.name: must be one folder name"):
            load_config(None, [f"output.name={name}"])  # the CLI's --set
    with pytest.raises(ConfigError, match="output.name"):  # the Python API and the UI form build this way
        build_config({"output": {"name": name}}, "form")


def test_a_config_file_named_dot_dot_does_not_name_the_run_dot(tmp_path):
    (tmp_path / "..yaml").write_text("train: {max_steps: 1}\n")
    with pytest.raises(ConfigError, match="output.name"):
        load_config(tmp_path / "..yaml")


def test_cli_refuses_dot_dot_and_deletes_nothing(tmp_path):
    """The reported case: `--set output.name=..` deleted the folder above runs/."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("precious")
    (tmp_path / "runs").mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "smolora.cli.main", "train", "examples/quickstart.yaml"]
        + ["--set", f"output.dir={tmp_path / 'runs'}", "--set", "output.name=.."],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr
    assert "output.name" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "data" / "keep.txt").read_text() == "precious"


def test_a_folder_without_the_marker_is_never_replaced(tiny_model_dir, qa_file, tmp_path):
    """`output.dir=. output.name=data` must not delete the user's data/."""
    cfg = tiny_config(tiny_model_dir, qa_file, tmp_path, "train.max_steps=1", "output.name=data")
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "mine.csv").write_text("a,b\n")
    with pytest.raises(SmoLoRAError, match=r"data exists and is not a SmoLoRA run; pick another output.name"):
        train(cfg, show_progress=False)
    assert (cfg.run_dir / "mine.csv").read_text() == "a,b\n"
    assert sorted(p.name for p in cfg.run_dir.parent.iterdir()) == ["data"]


def test_runs_carry_the_marker_and_one_step_smoke_run_succeeds(tiny_model_dir, qa_file, tmp_path):
    """max_steps=1 with warmup: step 1's learning rate is 0, so lora_B stays zero, and that is fine."""
    cfg = tiny_config(tiny_model_dir, qa_file, tmp_path, "train.max_steps=1", "train.warmup_ratio=0.5")
    run = train(cfg, show_progress=False)
    assert is_marked(run) and (run / "adapter" / "smolora.json").exists()


def test_an_untrained_save_after_real_steps_still_fails_without_blaming_fsdp(
    tiny_model_dir, qa_file, tmp_path, monkeypatch
):
    """The guard still catches lost weights when some step had a learning rate; FSDP only when sharded."""
    from smolora.model import adapters

    real = adapters.save_weights

    def zero_b(model, out_dir, state_dict=None):
        real(model, out_dir, state_dict)
        from safetensors.torch import load_file, save_file

        path = out_dir / "adapter_model.safetensors"
        save_file({k: v * 0 if "lora_B" in k else v for k, v in load_file(path).items()}, path)

    monkeypatch.setattr("smolora.train.result.save_weights", zero_b)
    cfg = tiny_config(tiny_model_dir, qa_file, tmp_path, "train.max_steps=2", "train.warmup_ratio=0.5")
    with pytest.raises(SmoLoRAError, match="every lora_B is zero") as e:
        train(cfg, show_progress=False)
    assert "FSDP" not in str(e.value)


def _finished(tiny_model_dir, qa_file, tmp_path, lr="1e-2"):
    cfg = tiny_config(tiny_model_dir, qa_file, tmp_path, "train.max_steps=2", f"train.lr={lr}")
    return cfg, train(cfg, show_progress=False)


def test_a_rerun_keeps_the_old_run_until_it_succeeded(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    cfg, run = _finished(tiny_model_dir, qa_file, tmp_path)
    old_adapter = (run / "adapter" / "adapter_model.safetensors").read_bytes()

    class Boom(RuntimeError):
        pass

    def fail(*a, **kw):
        raise Boom("the data went away")

    # A re-run that fails after training started: the finished run is untouched.
    monkeypatch.setattr(train_module, "save_adapter", fail)
    with pytest.raises(Boom):
        train(cfg, show_progress=False)
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == old_adapter
    staged = [p for p in run.parent.iterdir() if ".staging-" in p.name]
    assert len(staged) == 1 and is_marked(staged[0])  # left for --resume or inspection
    monkeypatch.undo()

    # A plain re-run now names the unfinished re-run instead of silently dropping it ...
    with pytest.raises(SmoLoRAError, match=r"unfinished re-run of tiny; continue it with --resume"):
        train(cfg, show_progress=False)
    # ... and --resume finishes it and swaps it in, keeping the old run as tiny.previous.
    assert train(cfg, resume=True, show_progress=False) == run
    assert (
        run.parent / "tiny.previous" / "adapter" / "adapter_model.safetensors"
    ).read_bytes() == old_adapter
    assert sorted(p.name for p in run.parent.iterdir()) == ["tiny", "tiny.previous"]
    assert is_marked(run) and (run / "adapter" / "smolora.json").exists()


def test_a_successful_rerun_replaces_previous_only_when_it_is_ours(tiny_model_dir, qa_file, tmp_path):
    cfg, run = _finished(tiny_model_dir, qa_file, tmp_path)
    first = json.loads((run / "adapter" / "smolora.json").read_text())["data_fingerprint"]
    train(cfg, show_progress=False)  # second run: the first becomes tiny.previous
    assert (
        json.loads((run.parent / "tiny.previous" / "adapter" / "smolora.json").read_text())[
            "data_fingerprint"
        ]
        == first
    )
    train(cfg, show_progress=False)  # third run: the older tiny.previous (marked) is replaced
    assert sorted(p.name for p in run.parent.iterdir()) == ["tiny", "tiny.previous"]

    # A tiny.previous that SmoLoRA did not make is refused before any training starts.
    (run.parent / "tiny.previous" / RUN_MARKER).unlink()
    with pytest.raises(SmoLoRAError, match=r"tiny.previous exists and is not a SmoLoRA run"):
        prepare_run_dir(cfg, resume=False)
    assert [p.name for p in find_runs(run.parent)].count("tiny") == 1


def test_resume_trains_in_place(tiny_model_dir, qa_file, tmp_path):
    cfg = tiny_config(tiny_model_dir, qa_file, tmp_path, "train.max_steps=4", "train.save_every=2")
    run = train(cfg, show_progress=False)
    assert prepare_run_dir(cfg, resume=True) == run  # no staging for --resume of the run itself


def test_an_empty_folder_the_user_made_is_trained_into(tiny_model_dir, qa_file, tmp_path):
    """`mkdir runs/x` first is common; an empty folder holds nothing to lose, so it becomes the run."""
    cfg = tiny_config(tiny_model_dir, qa_file, tmp_path, "train.max_steps=1", "output.name=made-by-me")
    cfg.run_dir.mkdir(parents=True)
    assert prepare_run_dir(cfg, resume=False) == cfg.run_dir
    assert is_marked(cfg.run_dir)


def test_the_api_names_a_dot_output_dir_by_the_folder_it_is(tmp_path, monkeypatch):
    from smolora import SmoLoRA

    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    tuner = SmoLoRA("tiny", dataset="qa.jsonl", output_dir=".")
    assert tuner.config.output.name == "project"
    assert tuner.config.run_dir.resolve() == (tmp_path / "project").resolve()


def test_the_live_directory_of_a_rerun_is_its_staging_dir(tmp_path):
    """The UI's Train view follows a re-run of a finished name beside it, not the old run."""
    from smolora.runs import live_dir, mark_run, staging_dir

    final = tmp_path / "runs" / "x"
    mark_run(final)
    assert live_dir(final, 4242) == final
    mark_run(staging_dir(final, 4242))
    assert live_dir(final, 4242) == tmp_path / "runs" / "x.staging-4242"
