"""`smolora sweep`: the grid, run names, bad input, and a real sweep of the tiny model (skip, resume)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from typer.testing import CliRunner

from helpers import tiny_overrides
from smolora.cli.main import app, main
from smolora.errors import ConfigError
from smolora.runs import ADAPTER_DIR, CHECKPOINTS_DIR, METRICS_FILE, read_jsonl
from smolora.train.sweep import expand_grid, plan_sweep, run_name, split_sets

runner = CliRunner()


def test_grid_is_the_product_first_axis_outermost():
    grid = expand_grid(["train.lr=1e-4,3e-4,1e-3", "train.epochs=1,3", "lora.r=8"])
    assert grid == [
        {"train.lr": lr, "train.epochs": ep} for lr in ("1e-4", "3e-4", "1e-3") for ep in ("1", "3")
    ]


def test_lists_quoted_text_and_single_values_are_not_axes():
    sets = [
        'data.path=["a.jsonl","b.jsonl"]',
        "lora.targets=[q_proj,v_proj]",
        'data.system_prompt="Be brief, be right"',
        "data.fields={prompt: q, response: a}",
        "train.lr=1e-4",
        "train.epochs=1, 2",
    ]
    plain, axes = split_sets(sets)
    assert plain == sets[:-1]
    assert axes == {"train.epochs": ["1", "2"]}


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (["train.lr=1e-4,,"], "empty value"),
        (["train.lr=1e-4,1e-4"], "listed twice"),
        (["train.lrr=1e-4,1e-3"], "did you mean train.lr"),
        (["trian.lr=1e-4,1e-3"], "not a config key"),
        (["output.name=a,b"], "cannot be an axis"),
        (["train.lr=1e-4,1e-3", "train.lr=3e-4,1e-2"], "two lists"),
        (["train.lr=1e-4"], "nothing to sweep"),
        (["train.lr"], "KEY=VALUE"),
    ],
)
def test_bad_grids_are_config_errors(sets, words):
    with pytest.raises(ConfigError, match=words):
        expand_grid(sets)


def test_run_names_are_readable_and_one_folder():
    assert run_name({"train.lr": "1e-4", "train.epochs": "1"}) == "lr=1e-4,epochs=1"
    both = run_name({"train.batch_size": "4", "eval.batch_size": "8"})
    assert both == "train.batch_size=4,eval.batch_size=8"
    assert run_name({"model.name": "../models/x y"}) == "name=..-models-x-y"
    long_a = run_name({f"train.k{i}": "1" * 30 for i in range(5)})
    long_b = run_name({f"train.k{i}": "1" * 30 for i in range(4)} | {"train.k4": "2" * 30})
    assert len(long_a) <= 100 and long_a != long_b


def test_plan_names_each_run_inside_the_sweep_dir(tmp_path, qa_file):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text("train:\n  max_steps: 2\n")
    sets = [f"data.path={qa_file}", f"output.dir={tmp_path / 'runs'}", "train.lr=1e-4,1e-3", "train.lr=5"]
    sweep_dir, planned = plan_sweep(cfg_file, sets)
    assert sweep_dir == tmp_path / "runs" / "tiny-sweep"
    assert [cfg.run_dir for _, cfg in planned] == [sweep_dir / "lr=1e-4", sweep_dir / "lr=1e-3"]
    assert [cfg.train.lr for _, cfg in planned] == [1e-4, 1e-3]  # the axis wins over a single --set
    assert all(cfg.train.max_steps == 2 for _, cfg in planned)


def cli_error(monkeypatch, capsys, *args: str) -> str:
    """Run `smolora sweep ARGS` through main(), as the installed command does: exit 2, one line."""
    monkeypatch.setattr(sys, "argv", ["smolora", "sweep", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err.strip()
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    return stderr


def test_cli_bad_input_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text("train:\n  max_steps: 2\n")
    assert "unknown key in train" in cli_error(monkeypatch, capsys, str(cfg_file), "--set", "train.lrr=1,2")
    assert "empty value" in cli_error(monkeypatch, capsys, str(cfg_file), "--set", "train.lr=1e-4,,")
    seeds = ",".join(str(i) for i in range(65))
    big = cli_error(monkeypatch, capsys, str(cfg_file), "--set", f"train.seed={seeds}")
    assert "65 runs" in big and "--max-runs 65" in big
    capped = cli_error(monkeypatch, capsys, str(cfg_file), "--set", "train.seed=1,2,3", "--max-runs", "2")
    assert "more than --max-runs 2" in capped
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing made


def test_a_real_sweep_skips_finished_runs_and_resumes_an_interrupted_one(tmp_path, tiny_model_dir, qa_file):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text("data:\n  val_ratio: 0.2\n")
    sets = [*tiny_overrides(tiny_model_dir, qa_file, tmp_path), "train.max_steps=4", "train.save_every=2"]
    sets.append("train.threads=1")
    args = ["sweep", str(cfg_file), *(a for s in sets for a in ("--set", s))]
    args += ["--set", "train.lr=1e-2,1e-3", "--set", "lora.r=4"]
    r = runner.invoke(app, ["-q", *args])
    assert r.exit_code == 0, f"{r.output}\n{r.exception!r}"
    sweep_dir = tmp_path / "runs" / "tiny-sweep"
    result = json.loads((sweep_dir / "sweep.json").read_text())
    runs = {run["name"]: run for run in result["runs"]}
    assert list(runs) == ["lr=1e-2", "lr=1e-3"]
    assert result["axes"] == {"train.lr": ["1e-2", "1e-3"]} and "lora.r=4" in result["sets"]
    assert all(run["status"] == "trained" and run["steps"] == 4 for run in runs.values())
    assert all(run["eval_loss"] is not None and run["train_loss"] is not None for run in runs.values())
    best = min(runs.values(), key=lambda run: run["eval_loss"])
    assert result["best"] == best["name"]
    assert f"{best['eval_loss']:.4f} *" in r.output  # the table marks it
    assert (sweep_dir / "sweep.png").read_bytes().startswith(b"\x89PNG")
    for name in runs:
        assert (sweep_dir / name / ADAPTER_DIR / "smolora.json").is_file()

    # the same command again: nothing to train
    r = runner.invoke(app, ["-q", *args])
    assert r.exit_code == 0, f"{r.output}\n{r.exception!r}"
    again = json.loads((sweep_dir / "sweep.json").read_text())
    assert [run["status"] for run in again["runs"]] == ["skipped", "skipped"]
    assert again["best"] == result["best"]

    # one run stopped after its checkpoint at step 2 (adapter and step 4 never written): resumed, not restarted
    lost = sweep_dir / "lr=1e-3"
    before = read_jsonl(lost / METRICS_FILE)
    shutil.rmtree(lost / ADAPTER_DIR)
    shutil.rmtree(lost / CHECKPOINTS_DIR / "checkpoint-4")
    r = runner.invoke(app, ["-q", *args])
    assert r.exit_code == 0, f"{r.output}\n{r.exception!r}"
    third = json.loads((sweep_dir / "sweep.json").read_text())
    assert [run["status"] for run in third["runs"]] == ["skipped", "resumed"]
    assert third["runs"][1]["steps"] == 4
    assert (lost / ADAPTER_DIR / "smolora.json").is_file()
    steps = [row["step"] for row in read_jsonl(lost / METRICS_FILE) if row.get("loss") is not None]
    assert steps == [1, 2, 3, 4]  # each step logged once: 1 and 2 kept from before, 3 and 4 trained now
    kept = [row for row in read_jsonl(lost / METRICS_FILE) if row.get("step") in (1, 2) and "loss" in row]
    assert kept == [row for row in before if row.get("step") in (1, 2) and "loss" in row]
