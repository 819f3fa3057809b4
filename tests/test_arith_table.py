"""benchmarks/arith_table.py on the tiny model: examples/arith_*.yaml trained two steps each, combined
with cat, the combination scored on both tasks by the CLI (in this process), the table built; the
same command again runs nothing. The real run (the bundled model, half an hour) is in docs/export.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers import smolora_main

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import arith_table  # noqa: E402 (benchmarks/ is not a package)
import efficacy  # noqa: E402

from smolora.eval.against import combined_lineage  # noqa: E402


def toy_french():
    for i in range(60):
        yield f"What is the country 'Land {i}' called in French?", f"Pays {i}"


def in_process(args: list[str], log: Path) -> float:
    """efficacy.smolora without the subprocess (seconds of imports each): the same CLI, in this process."""
    code, output = smolora_main(*args)
    assert code == 0, output
    return 1.0


def argv(tmp_path: Path, model_dir: Path) -> list[str]:
    sets = [f"model.name={model_dir}", "train.max_steps=2", "eval.max_new_tokens=4", "eval.max_examples=4"]
    return [f"--work={tmp_path / 'arith'}", "--methods=cat", f"--md={tmp_path / 't.md'}"] + [
        f"--set={s}" for s in sets
    ]


def test_bad_methods_are_refused(capsys):
    for bad in (["--methods=nope"], ["--methods=,"]):
        with pytest.raises(SystemExit):
            arith_table.parse_args(bad)
    assert "choose from linear, cat" in capsys.readouterr().err


def test_table_end_to_end_and_resume(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs name their data relative to the repository root
    monkeypatch.setitem(efficacy.TASKS, "country_fr", toy_french)
    monkeypatch.setattr(efficacy, "smolora", in_process)
    monkeypatch.setattr(arith_table, "smolora", in_process)
    result = arith_table.main(argv(tmp_path, tiny_model_dir))

    work = tmp_path / "arith"
    held_out = (work / "data" / "french_eval.jsonl").read_text().splitlines()
    assert len(held_out) == arith_table.HELD_OUT
    assert len((work / "data" / "french_train.jsonl").read_text().splitlines()) == 20
    combined = work / "orders+french-cat"
    lineage = combined_lineage(combined)
    assert [p["name"] for p in lineage["parents"]] == ["orders", "french"] and lineage["weights"] == [
        0.5,
        0.5,
    ]
    for task, data in (("orders", "examples/data/quickstart_eval.jsonl"), ("french", work / "data")):
        kept = json.loads((combined / "eval" / f"{task}.json").read_text())
        assert kept["data"].startswith(str(data)) and set(kept["against"]) == {"orders", "french"}

    models = [r["model"] for r in result["rows"]]
    assert models == ["base", "orders (parent)", "french (parent)", "combined: cat"]
    assert set(result["rows"][0]) == {
        "model",
        "orders exact_match",
        "orders chrf",
        "french exact_match",
        "french chrf",
    }
    assert max(result["spread"].values()) == 0  # one combination: nothing repeated
    assert result["timings"]["train orders"] > 0 and result["timings"]["eval cat french"] > 0
    text = (tmp_path / "t.md").read_text()
    assert "| combined: cat |" in text and "smolora merge " in text and "--combine cat" in text

    # The same command again: every run, merge and eval is done, so no subprocess starts.
    def ran_again(*a):
        pytest.fail(f"ran again: {a}")

    monkeypatch.setattr(efficacy, "smolora", ran_again)
    monkeypatch.setattr(arith_table, "smolora", ran_again)
    assert arith_table.main(argv(tmp_path, tiny_model_dir))["rows"] == result["rows"]
