"""`smolora eval` on a tiny trained run: metrics.json, report files, samples during training,
TensorBoard events, lm-eval on the example local task, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from helpers import tiny_config, write_qa
from smolora.eval.metrics import METRICS
from smolora.train.recipe import train

ROOT = Path(__file__).resolve().parents[1]
LM_EVAL_DIR = ROOT / "examples" / "lm_eval"


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, tiny_model_dir) -> Path:
    """Six LoRA steps on question/answer pairs, eval loss and sample answers every 3 steps."""
    tmp = tmp_path_factory.mktemp("eval-run")
    cfg = tiny_config(
        tiny_model_dir,
        write_qa(tmp / "qa.jsonl", 40),
        tmp,
        "train.max_steps=6",
        "train.eval_every=3",
        "train.save_every=100",
        "train.report_to=[tensorboard]",
        "eval.generate_every=3",
        "eval.max_new_tokens=8",
        "eval.batch_size=8",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMOLORA_HOME", str(tmp / "home"))
        # Training points TensorBoard at the run dir through this variable; undo it afterwards.
        mp.setenv("TENSORBOARD_LOGGING_DIR", "unset")
        return train(cfg, show_progress=False)


@pytest.fixture(scope="module")
def evaluated(eval_run, tmp_path_factory):
    from smolora.eval.evaluate import evaluate_run

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMOLORA_HOME", str(tmp_path_factory.mktemp("home")))
        return evaluate_run(eval_run)


def test_metrics_json_has_both_models_and_the_difference(eval_run, evaluated):
    m = json.loads((eval_run / "eval" / "metrics.json").read_text())
    assert m["n"] == 4 and m["split"] == "validation"  # 10% of 40 held out by the seeded split
    for which in ("base", "fine_tuned"):
        assert set(METRICS) | {"eval_loss", "perplexity"} <= set(m[which])
    for k, v in m["difference"].items():
        assert v == pytest.approx(m["fine_tuned"][k] - m["base"][k])
    # The random base knows nothing; six steps at lr 1e-2 already lower the answer loss.
    assert m["fine_tuned"]["eval_loss"] < m["base"]["eval_loss"]
    assert m["lower_is_better"] == ["eval_loss", "perplexity"]
    samples = [json.loads(x) for x in (eval_run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and set(samples[0]) == {"prompt", "reference", "base", "fine_tuned"}
    assert samples[0]["reference"].startswith("It is")


def test_eval_loss_matches_the_one_logged_in_training(eval_run, evaluated):
    """Same rows, same masking: the fine-tuned eval loss agrees with training's last eval loss."""
    logged = [json.loads(x) for x in (eval_run / "metrics.jsonl").read_text().splitlines()]
    last = [r["eval_loss"] for r in logged if "eval_loss" in r][-1]
    # Trainer averages per-batch means, we average per token: close, not identical.
    assert evaluated["metrics"]["fine_tuned"]["eval_loss"] == pytest.approx(last, rel=0.05)


def test_report_files_embed_the_plot_and_tables(eval_run, evaluated):
    html = (eval_run / "eval" / "report.html").read_text()
    md = (eval_run / "eval" / "report.md").read_text()
    png = (eval_run / "plots" / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert html.count('src="data:image/png;base64,') == 2  # loss curve and metric bars
    assert "<table" in html and "exact_match" in html and "fine-tuned" in html
    assert "It is" in html  # the side-by-side samples
    assert "<script" not in html and "http" not in html  # self-contained: nothing fetched
    assert "![loss](../plots/loss.png)" in md and "| exact_match |" in md and "## Samples" in md
    assert evaluated["html"] == eval_run / "eval" / "report.html"


def test_answers_during_training_are_logged_and_reported(eval_run, evaluated):
    rows = [json.loads(x) for x in (eval_run / "generations.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [3, 6]
    assert len(rows) == 6 and {"prompt", "reference", "output"} <= set(rows[0])
    assert "Answers during training" in (eval_run / "eval" / "report.html").read_text()


def test_tensorboard_event_files_in_the_run_dir(eval_run):
    events = list((eval_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """smolora.cli.main.main as the console script runs it: exit code, stdout, stderr."""
    from smolora.cli.main import main

    monkeypatch.setattr(sys, "argv", ["smolora", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_cli_eval_prints_the_before_after_table(eval_run, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "eval", str(eval_run), "--samples", "2")
    assert code == 0
    assert "scores on 4 held-out examples" in out and "exact_match" in out and "eval_loss" in out
    assert "report:" in out and "report.html" in out


def test_run_without_adapter_is_a_one_line_error(eval_run, tmp_path, monkeypatch, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(eval_run / "config.yaml", unfinished / "config.yaml")
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(unfinished))
    assert code == 2
    assert "has no adapter" in err and "train it first" in err and "Traceback" not in err
    (unfinished / "checkpoints").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(unfinished))
    assert code == 2 and "--resume" in err


def test_eval_file_of_unknown_shape_is_a_one_line_error(eval_run, tmp_path, monkeypatch, capsys):
    weird = tmp_path / "weird.jsonl"
    weird.write_text('{"foo": 1, "bar": 2}\n{"foo": 3, "bar": 4}\n')
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(eval_run), "--data", str(weird))
    assert code == 2
    assert "found fields: ['foo', 'bar']" in err and "data.fields" in err and "Traceback" not in err


def test_unknown_split_is_a_one_line_error(eval_run, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(eval_run), "--split", "dev")
    assert code == 2 and "--split dev" in err and "validation" in err


def test_eval_with_data_file_and_overrides(eval_run, tmp_path):
    from smolora.eval.evaluate import evaluate_run

    data = tmp_path / "more.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"Say {w}", "response": w}) + "\n" for w in ("yes", "no", "ok"))
    )
    result = evaluate_run(eval_run, str(data), overrides=["eval.max_new_tokens=4"], report=False)
    assert result["metrics"]["n"] == 3 and result["metrics"]["data"] == str(data)
    assert [s["reference"] for s in result["samples"]] == ["yes", "no", "ok"]


def test_lm_eval_task_not_found_is_a_one_line_error(eval_run, monkeypatch, capsys):
    pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install 'smolora[eval]')")
    import lm_eval.tasks

    # Indexing lm-eval's ~15k built-in task YAMLs takes a minute; the message path is the same
    # without them.
    real = lm_eval.tasks.TaskManager
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda **kw: real(**{**kw, "include_defaults": False}))
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "eval",
        str(eval_run),
        "--lm-eval",
        "smolora_orders,smolora_ordrs",
        "--include-path",
        str(LM_EVAL_DIR),
    )
    assert code == 2
    assert "lm-eval task(s) not found" in err and "smolora_ordrs (did you mean smolora_orders?)" in err
    assert "--include-path" in err
    assert "smolora_orders," not in err  # the task that exists is not reported missing


def test_lm_eval_runs_the_local_example_task_offline(eval_run, monkeypatch):
    pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install 'smolora[eval]')")
    from smolora.eval.evaluate import evaluate_run

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = evaluate_run(
        eval_run, lm_eval_tasks=["smolora_orders"], include_path=LM_EVAL_DIR, lm_eval_limit=4
    )
    m = result["metrics"]
    for which in ("base", "fine_tuned"):
        assert 0.0 <= m[which]["smolora_orders/acc"] <= 1.0
        assert "smolora_orders/acc_norm" in m[which]
    assert m["lm_eval"]["tasks"] == ["smolora_orders"]
    assert "smolora_orders/acc" in (eval_run / "eval" / "report.html").read_text()


def test_a_new_metric_is_one_function_and_one_dict_entry(eval_run, monkeypatch):
    """What docs/evaluation.md shows: add a function to METRICS and it is in metrics.json."""
    from smolora.eval import metrics
    from smolora.eval.evaluate import evaluate_run

    def answer_words(predictions: list[str], references: list[str]) -> float:
        return sum(len(p.split()) for p in predictions) / max(len(predictions), 1)

    monkeypatch.setitem(metrics.METRICS, "answer_words", answer_words)
    result = evaluate_run(eval_run, report=False)
    outs = [s["fine_tuned"] for s in result["samples"]]
    assert result["metrics"]["fine_tuned"]["answer_words"] == pytest.approx(answer_words(outs, outs))
    assert "answer_words" in result["metrics"]["difference"]


def test_plain_text_data_gets_loss_and_perplexity_only(eval_run, tmp_path):
    from smolora.eval.evaluate import evaluate_run

    data = tmp_path / "notes.txt"
    data.write_text("The capital of France is Paris.\n")
    result = evaluate_run(eval_run, str(data))
    assert set(result["metrics"]["fine_tuned"]) == {"eval_loss", "perplexity"} and result["samples"] == []
    html = result["html"].read_text()
    assert html.count("data:image/png;base64,") == 1 and "<h2>Samples" not in html
