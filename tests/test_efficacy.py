"""benchmarks/efficacy.py on the tiny model: a synthetic task in place of a PyPI one, two steps a run.

The real benchmark (hours on the bundled model) is `python benchmarks/efficacy.py`; here every part
runs once through the same CLI subprocesses (defaults, a 2-run sweep, memorize), then the files, the
tables and the resume (the same command again runs nothing) are checked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import efficacy  # noqa: E402 (benchmarks/ is not a package)
from efficacy_report import MARKERS  # noqa: E402


def toy_rows():
    for i in range(40):
        yield f"What is {i} plus one?", str(i + 1)
    yield "What is 3 plus one?", "a duplicate prompt, dropped"


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(efficacy.TASKS, "toy", toy_rows)


def argv(tmp_path: Path, model_dir: Path) -> list[str]:
    return [
        "--tasks=toy",
        "--train-rows=24",
        "--test-rows=6",
        f"--work={tmp_path / 'work'}",
        f"--model={model_dir}",
        "--sweep-lr=1e-2",
        "--sweep-epochs=1,2",
        "--memorize=toy:12",
        f"--json={tmp_path / 'out.json'}",
        f"--md={tmp_path / 'out.md'}",
        "--set=train.max_steps=2",
        "--set=train.lr=1e-2",  # the tiny model's usual rate; the sweep's lr axis wins over it
    ]


def test_split_is_fixed_deduplicated_and_disjoint(toy):
    train, test = efficacy.split_rows("toy", 24, 6)
    assert len(test) == 6 and len(train) == 24
    assert not {p for p, _ in train} & {p for p, _ in test}
    assert dict(train + test).get("What is 3 plus one?", "4") == "4"  # the first answer of a prompt kept
    assert efficacy.split_rows("toy", 10, 6)[1] == test  # fewer training rows: the same test rows
    assert efficacy.split_rows("toy", 10, 6)[0] == train[:10]


def test_bad_arguments_are_refused(toy, capsys):
    for bad in (["--tasks=nope"], ["--only=training"], ["--sweep-lr=1e-3", "--sweep-epochs=2"]):
        with pytest.raises(SystemExit):
            efficacy.parse_args(bad)
    assert "two values" in capsys.readouterr().err


def test_benchmark_end_to_end_and_resume(tmp_path, tiny_model_dir, toy, monkeypatch):
    md = tmp_path / "out.md"
    md.write_text(f"# prose above\n\n{MARKERS[0]}\nold table\n{MARKERS[1]}\n\nprose below\n")
    results = efficacy.main(argv(tmp_path, tiny_model_dir))

    work = tmp_path / "work"
    train = [json.loads(line) for line in (work / "toy" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (work / "toy" / "test.jsonl").read_text().splitlines()]
    assert len(train) == 24 and len(test) == 6 and set(train[0]) == {"prompt", "response"}
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    cfg = (work / "toy" / "defaults.yaml").read_text()
    assert "train:" not in cfg and "max_examples: 6" in cfg  # the defaults: no epochs, lr, eval cadence

    runs = [work / "toy" / "defaults", *(work / "toy" / "defaults-sweep").glob("epochs=*")]
    assert len(runs) == 3
    for run in runs:
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        assert metrics["data"] == str(work / "toy" / "test.jsonl") and metrics["n"] == 6
    recall = json.loads((work / "memorize" / "memorize" / "eval" / "metrics.json").read_text())
    assert recall["data"] == str(work / "memorize" / "train.jsonl") and recall["n"] == 12

    r = results["tasks"]["toy"]
    assert r["base"]["exact_match"] is not None and r["defaults"]["steps"] == 2
    assert {s["name"] for s in r["sweep"]} == {"epochs=1", "epochs=2"}  # one lr: not an axis
    assert r["best"] in {s["name"] for s in r["sweep"]} and r["defaults"]["lr"] == 1e-2
    assert results["memorize"]["recall"] is not None and results["memorize"]["run"]["train_s"] > 0
    assert json.loads((tmp_path / "out.json").read_text())["tasks"]["toy"]["best"] == r["best"]

    text = md.read_text()
    assert text.startswith("# prose above") and text.rstrip().endswith("prose below")
    assert "old table" not in text and "python benchmarks/efficacy.py --tasks=toy" in text
    for piece in (
        "### toy",
        "| base | untuned |",
        "| defaults | epochs ",
        "**(best)**",
        "### memorize: 12 toy",
    ):
        assert piece in text

    # The same command again: every run and eval is done, so no subprocess starts.
    stamp = (runs[0] / "eval" / "metrics.json").stat().st_mtime_ns
    monkeypatch.setattr(efficacy, "smolora", lambda *a: pytest.fail(f"ran again: {a}"))
    again = efficacy.main(argv(tmp_path, tiny_model_dir))
    assert again["tasks"]["toy"]["sweep"] == r["sweep"]
    assert (runs[0] / "eval" / "metrics.json").stat().st_mtime_ns == stamp
