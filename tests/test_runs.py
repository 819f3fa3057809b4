"""`smolora runs list|show|compare` on run directories written by hand (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from smolora.cli.main import app
from smolora.config import load_config, save_config
from smolora.durable import fsync_dir, write_atomic
from smolora.errors import SmoLoRAError
from smolora.runs import (
    ADAPTER_DIR,
    ADAPTER_META,
    AdapterMeta,
    compare_runs,
    find_adapter_dir,
    list_runs,
    read_meta,
    require_run,
    show_run,
    write_meta,
)


def make_run(
    root: Path, name: str, r: int, losses: list[float], eval_loss: float, em: tuple[float, float] | None
):
    run = root / name
    (run / "adapter").mkdir(parents=True)
    save_config(
        load_config(None, [f"output.name={name}", f"lora.r={r}", "data.path=train.jsonl"]),
        run / "config.yaml",
    )
    rows = [{"step": i + 1, "loss": loss} for i, loss in enumerate(losses)]
    rows.append({"step": len(losses), "eval_loss": eval_loss, "train_runtime": 12.5})
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    (run / "adapter" / "smolora.json").write_text(json.dumps({"base_model": "smollm2-135m"}))
    if em is not None:
        (run / "eval").mkdir()
        metrics = {
            "base": {"exact_match": em[0], "eval_loss": 3.0},
            "fine_tuned": {"exact_match": em[1], "eval_loss": eval_loss},
            "lower_is_better": ["eval_loss"],
        }
        (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    make_run(root, "r16", 16, [2.0, 1.5, 1.0], 1.2, (0.0, 75.0))
    make_run(root, "r8", 8, [2.0, 1.7, 1.4, 1.3], 1.5, None)
    (root / "not-a-run").mkdir()
    unfinished = root / "half"
    (unfinished / "checkpoints").mkdir(parents=True)
    save_config(load_config(None, ["output.name=half"]), unfinished / "config.yaml")
    return root


def test_list_runs(runs):
    rows = {r["name"]: r for r in list_runs(runs)}
    assert set(rows) == {"r16", "r8", "half"}
    r16 = rows["r16"]
    assert r16["base_model"] == "smollm2-135m" and r16["steps"] == 3 and r16["final_loss"] == 1.0
    assert (
        r16["eval_loss"] == 1.2
        and r16["eval_score"] == ("exact_match", 0.0, 75.0)
        and r16["status"] == "done"
    )
    assert rows["r8"]["eval_score"] is None and rows["half"]["status"] == "unfinished"


def test_show_run(runs):
    info = show_run(runs / "r16")
    assert info["config"]["lora"]["r"] == 16 and info["eval"]["fine_tuned"]["exact_match"] == 75.0
    assert "eval/metrics.json" in info["files"] and "adapter/smolora.json" in info["files"]
    with pytest.raises(SmoLoRAError, match="not a run directory.*runs there"):
        show_run(runs)


def test_compare_runs(runs):
    diff = compare_runs(runs / "r16", runs / "r8")
    config = {row["key"]: (row["a"], row["b"]) for row in diff["config"]}
    assert config == {"lora.r": (16, 8), "output.name": ("r16", "r8")}
    metrics = {row["metric"]: row for row in diff["metrics"]}
    assert metrics["final_loss"]["diff"] == pytest.approx(0.3)
    assert metrics["steps"]["diff"] == 1
    assert metrics["eval/exact_match"]["a"] == 75.0 and metrics["eval/exact_match"]["b"] is None


def test_runs_cli_output(runs):
    cli = CliRunner()
    env = {"COLUMNS": "200"}
    out = cli.invoke(app, ["runs", "list", str(runs)], env=env)
    assert out.exit_code == 0, out.output
    for text in ("r16", "r8", "half", "smollm2-135m", "exact_match 0 -> 75", "1.0000", "unfinished"):
        assert text in out.output
    out = cli.invoke(app, ["runs", "show", str(runs / "r16")], env=env)
    assert out.exit_code == 0 and "eval (base -> fine-tuned)" in out.output and "+75" in out.output
    assert "lora:" in out.output and "eval/metrics.json" in out.output
    out = cli.invoke(app, ["runs", "compare", str(runs / "r16"), str(runs / "r8")], env=env)
    assert out.exit_code == 0
    assert "config lora.r" in out.output and "final_loss" in out.output and "+0.3" in out.output
    out = cli.invoke(app, ["runs", "list", str(runs), "--json"])
    assert {r["name"] for r in json.loads(out.output)} == {"r16", "r8", "half"}
    out = cli.invoke(app, ["runs", "list", str(runs / "none")], env=env)
    assert out.exit_code == 0 and "no runs in" in out.output


def test_runs_show_bad_dir_is_a_user_error(runs, tmp_path):
    out = CliRunner().invoke(app, ["runs", "show", str(tmp_path / "nope")])
    assert isinstance(out.exception, SmoLoRAError) and "smolora runs list" in str(out.exception)
    assert yaml.safe_load((runs / "r8" / "config.yaml").read_text())["lora"]["r"] == 8


def test_adapter_meta_round_trip_keeps_unknown_keys_and_bytes(tmp_path):
    """smolora.json written by train (every field, in order) reads and writes back byte for byte;
    keys this version does not know survive; a file lacking a field reads as its default."""
    written = {
        "base_model": "smollm2-135m",
        "base_sha256": "ab" * 32,
        "method": "dora",
        "drop_layers": [1],
        "keep_layers": None,
        "chat_template": "{{ messages }}",
        "system_prompt": "Be brief.",
        "data_fingerprint": "f00",
        "data_format": "qa",
        "versions": {"torch": "2.9"},
        "from_a_newer_smolora": {"x": 1},
    }
    text = json.dumps(written, indent=2)
    (tmp_path / ADAPTER_META).write_text(text)
    meta = read_meta(tmp_path)
    assert (
        meta.method == "dora" and meta.drop_layers == [1] and meta.extra == {"from_a_newer_smolora": {"x": 1}}
    )
    write_meta(tmp_path, meta)
    assert (tmp_path / ADAPTER_META).read_text() == text
    older = AdapterMeta.from_dict({"base_model": "tiny"})
    assert older.method == "lora" and older.drop_layers == [] and older.keep_layers is None
    (tmp_path / ADAPTER_META).write_text(json.dumps({"method": "lora"}))
    with pytest.raises(SmoLoRAError, match="no base_model"):
        read_meta(tmp_path)


def test_require_run_takes_a_run_or_its_adapter_dir(runs, tmp_path):
    run = runs / "r16"
    assert require_run(run) == run and require_run(run / ADAPTER_DIR) == run
    assert find_adapter_dir(run) == run / ADAPTER_DIR == find_adapter_dir(run / ADAPTER_DIR)
    assert find_adapter_dir(tmp_path) is None
    with pytest.raises(SmoLoRAError, match="not a run directory.*smolora train CONFIG"):
        require_run(tmp_path)


def test_fsync_dir_says_at_the_call_whether_failing_is_an_error(tmp_path):
    missing = tmp_path / "gone"
    fsync_dir(
        missing, best_effort=True
    )  # runs and checkpoints: a directory that cannot be synced is no error
    with pytest.raises(OSError):
        fsync_dir(missing, best_effort=False)  # the model store: its manifest vouches for the files
    target = tmp_path / "f.txt"
    write_atomic(target, "one\n", best_effort=False)
    write_atomic(target, "two\n", best_effort=True)
    assert target.read_text() == "two\n" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
