"""The end-of-training diagnosis (issue 17): each rule fires on the curve it names and stays quiet
on a healthy one; forgetting both ways; the eval report's Diagnosis section; the Runs view's lines.

Synthetic metrics.jsonl rows for the rules (no model); the report test evaluates a copy of the
shared tiny_run with a stored diagnosis and best checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest

from smolora.eval.diagnose import (
    NO_PROBLEMS,
    best_line,
    diagnose,
    diagnosis_lines,
    eval_diagnosis,
    forgetting,
)

SETTINGS = {"epochs": 3, "lr": 2e-4, "train_on": "completion", "dropout": 0.05}


def train_rows(losses: list[float], every: int = 1) -> list[dict]:
    return [
        {"step": (i + 1) * every, "epoch": i / len(losses), "loss": v, "lr": 1e-4}
        for i, v in enumerate(losses)
    ]


def healthy(n: int = 40) -> list[float]:
    """Falls fast, then levels off: 2.5 -> about 0.6, nearly flat over the last half."""
    return [0.6 + 1.9 * math.exp(-i / 4) for i in range(n)]


def kinds(findings: list[dict]) -> list[str]:
    return [f["kind"] for f in findings]


def test_a_healthy_run_has_nothing_to_say():
    rows = [*train_rows(healthy()), {"step": 40, "train_loss": 0.9, "train_runtime": 12.0}]
    rows += [
        {"step": s, "epoch": 1.0, "eval_loss": v} for s, v in [(10, 1.0), (20, 0.8), (30, 0.79), (40, 0.78)]
    ]
    assert diagnose(rows, SETTINGS) == []
    assert diagnosis_lines([]) == [NO_PROBLEMS] and diagnosis_lines(None) == []


def test_too_few_rows_is_no_guess():
    assert diagnose(train_rows([2.3] * 7), SETTINGS) == []  # flat, but 7 losses decide nothing
    assert diagnose([], SETTINGS) == []


def test_flat_loss_is_not_learning_with_the_lr_and_the_labels_to_check():
    wobble = [2.31 + 0.01 * (-1) ** i for i in range(40)]
    (f,) = diagnose(train_rows(wobble), {**SETTINGS, "lr": 1e-5})
    assert f["kind"] == "not-learning" and f["setting"] == "train.lr"
    assert f["message"].startswith(
        "not learning: train loss flat at 2.31 over 40 steps; raise train.lr (now 1e-05)"
    )
    assert "data.train_on=completion masks the prompt" in f["message"]


def test_a_rising_loss_is_not_learning_with_a_lower_lr():
    (f,) = diagnose(train_rows([1.0 + 0.05 * i for i in range(20)]), {**SETTINGS, "lr": 0.01})
    assert (
        f["kind"] == "not-learning"
        and "rose from" in f["message"]
        and "lower train.lr (now 0.01)" in f["message"]
    )


def test_a_loss_already_near_zero_is_not_flagged_flat():
    assert diagnose(train_rows([0.01] * 30), SETTINGS) == []


def test_a_loss_still_falling_steeply_is_under_trained():
    (f,) = diagnose(train_rows([3.0 - 0.05 * i for i in range(30)], every=2), SETTINGS)
    assert f["kind"] == "under-trained" and f["setting"] == "train.epochs"
    assert "train loss still falling at the end (" in f["message"]
    assert "raise train.epochs (now 3) or train.lr (now 0.0002)" in f["message"]
    # With max_steps set, that is the length to raise.
    (f,) = diagnose(train_rows([3.0 - 0.05 * i for i in range(30)]), {**SETTINGS, "max_steps": 30})
    assert f["setting"] == "train.max_steps" and "raise train.max_steps (now 30)" in f["message"]


def test_a_rising_validation_loss_is_over_fitting_and_names_the_kept_step():
    evals = [(10, 1.2), (20, 0.9), (30, 0.812), (40, 0.85), (50, 0.95)]
    rows = train_rows([2.0 - 0.03 * i for i in range(50)])  # still falling: training memorizes
    rows += [{"step": s, "epoch": s / 50, "eval_loss": v} for s, v in evals]
    findings = diagnose(rows, {**SETTINGS, "best_step": 30})
    assert kinds(findings) == ["over-fitting"]  # a falling train loss here is no reason to train longer
    message = findings[0]["message"]
    assert message.startswith("over-fitting: validation loss rising since step 30 (best 0.812, last 0.950)")
    assert "the best checkpoint (step 30) was kept" in message and "lora.dropout (now 0.05)" in message
    assert "was kept" not in diagnose(rows, SETTINGS)[0]["message"]  # not claimed unless told


def test_eval_loss_wobble_or_a_best_last_eval_is_not_over_fitting():
    base = train_rows(healthy())
    wobble = [(10, 0.82), (20, 0.80), (30, 0.83)]  # 3.7% above the best: noise
    falling = [(10, 1.0), (20, 0.9), (30, 0.8)]
    for evals in (wobble, falling):
        assert diagnose(base + [{"step": s, "eval_loss": v} for s, v in evals], SETTINGS) == []


def test_forgetting_when_the_tuned_model_is_worse_than_the_base():
    f = forgetting({"exact_match": 25.0}, {"exact_match": 20.0})
    assert f == {
        "kind": "forgetting",
        "message": "forgetting: fine-tuned exact_match 20.0 below the base model's 25.0 on the held-out rows; "
        "lower train.lr or train.epochs, or mix general data into the training set",
        "setting": "train.lr",
    }
    assert (
        "above the base model's" in forgetting({"eval_loss": 1.0}, {"eval_loss": 1.3}, "eval_loss")["message"]
    )


def test_no_forgetting_when_the_tuned_model_is_as_good_or_better():
    assert forgetting({"exact_match": 20.0}, {"exact_match": 35.0}) is None
    assert forgetting({"exact_match": 20.0}, {"exact_match": 20.0}) is None
    assert forgetting({"exact_match": 50.0}, {"exact_match": 49.9}) is None  # within the tolerance
    assert forgetting({"eval_loss": 1.3}, {"eval_loss": 1.0}, "eval_loss") is None
    assert forgetting({}, {"exact_match": 10.0}) is None  # nothing to compare


def test_best_line():
    best = {"step": 40, "metric": "eval_loss", "value": 0.8123, "last_step": 60, "stopped_early": True}
    assert best_line(best) == "best checkpoint: step 40 of 60 by eval_loss 0.812 (stopped early)"
    best = {"step": 60, "metric": "exact_match", "value": 45.0, "last_step": 60, "stopped_early": False}
    assert best_line(best) == "best checkpoint: step 60 of 60 by exact_match 45.0"
    assert best_line(None) is None and best_line({}) is None


def with_meta(run, **keys):
    path = run / "adapter" / "smolora.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **keys}))


UNDER = {
    "kind": "under-trained",
    "message": "under-trained: train loss still falling",
    "setting": "train.epochs",
}
BEST = {"step": 1, "metric": "chrf", "value": 12.5, "last_step": 2, "stopped_early": True}


def test_eval_adds_forgetting_on_exact_match_and_the_selection_metric(tiny_run, tmp_path):
    from smolora.eval.evaluate import run_config

    run = shutil.copytree(tiny_run, tmp_path / "run")
    with_meta(run, diagnosis=[UNDER], best=BEST)
    metrics = {"base": {"exact_match": 30.0, "chrf": 40.0}, "fine_tuned": {"exact_match": 10.0, "chrf": 20.0}}
    out = eval_diagnosis(run, run_config(run), metrics)
    assert out["best"] == BEST
    assert kinds(out["diagnosis"]) == ["under-trained", "forgetting", "forgetting"]
    assert "chrf 20.0 below the base model's 40.0" in out["diagnosis"][2]["message"]


def test_eval_report_has_the_diagnosis_section(tiny_run, tmp_path):
    from smolora.eval.evaluate import evaluate_run

    run = shutil.copytree(tiny_run, tmp_path / "run")
    with_meta(run, diagnosis=[UNDER], best=BEST)
    result = evaluate_run(run)
    stored = json.loads((run / "eval" / "metrics.json").read_text())
    assert stored["diagnosis"][0] == UNDER and stored["best"] == BEST
    assert result["metrics"]["diagnosis"] == stored["diagnosis"]
    md, page = (run / "eval" / "report.md").read_text(), (run / "eval" / "report.html").read_text()
    best = "best checkpoint: step 1 of 2 by chrf 12.5 (stopped early)"
    assert f"## Diagnosis\n\n- {best}\n- under-trained: train loss still falling" in md
    assert f"<h2>Diagnosis</h2><ul><li>{best}</li><li>under-trained" in page


def test_eval_of_an_older_run_diagnoses_its_log(tiny_run, tmp_path):
    """No diagnosis in smolora.json (trained before it was stored): the report still has a section."""
    from smolora.eval.evaluate import evaluate_run

    run = shutil.copytree(tiny_run, tmp_path / "run")
    path = run / "adapter" / "smolora.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("diagnosis", "best")}))
    evaluate_run(run, report=False)
    stored = json.loads((run / "eval" / "metrics.json").read_text())
    assert stored["diagnosis"] == [] and stored["best"] is None  # 2 steps: nothing to say


def fake_run(root, name: str, **meta) -> None:
    """A run directory the Runs view lists: config, a log, and adapter/smolora.json."""
    run = root / "runs" / name
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  name: tiny-llama\nlora:\n  method: lora\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows(healthy(10))))
    (run / "adapter" / "smolora.json").write_text(json.dumps({"base_model": "tiny-llama", **meta}))


def test_runs_view_shows_the_diagnosis_and_the_best_step(ui_client, ui_ws):
    fake_run(ui_ws, "diagnosed", diagnosis=[UNDER], best=BEST)
    fake_run(ui_ws, "healthy", diagnosis=[])
    fake_run(ui_ws, "older")
    evaluated = ui_ws / "runs" / "healthy" / "eval"
    evaluated.mkdir()
    forgot = forgetting({"exact_match": 25.0}, {"exact_match": 20.0})
    (evaluated / "metrics.json").write_text(json.dumps({"diagnosis": [forgot], "base": {}, "fine_tuned": {}}))

    runs = {r["name"]: r for r in ui_client.get("/api/runs").json()["runs"]}
    assert runs["diagnosed"]["diagnosis"] == [UNDER["message"]]
    assert runs["diagnosed"]["best"] == "best checkpoint: step 1 of 2 by chrf 12.5 (stopped early)"
    assert runs["healthy"]["diagnosis"] == [forgot["message"]]  # the eval's list holds forgetting too
    assert runs["older"]["diagnosis"] == [] and runs["older"]["best"] is None
    assert "r.diagnosis" in ui_client.get("/static/runs.js").text  # the page draws them


@pytest.mark.parametrize("bad", ["{not json", '{"base_model": "x", "diagnosis": "oops", "best": 3}'])
def test_a_damaged_smolora_json_gives_no_diagnosis(tmp_path, bad):
    from smolora.eval.diagnose import stored_diagnosis

    (tmp_path / "adapter").mkdir()
    (tmp_path / "config.yaml").write_text("{}\n")
    (tmp_path / "adapter" / "smolora.json").write_text(bad)
    assert stored_diagnosis(tmp_path) == {"diagnosis": None, "best": None}


def test_a_tiny_loss_still_falling_or_a_plateaued_validation_is_not_under_trained():
    # the quickstart with its schedule left to auto: 0.000745 -> 0.000600 is a 20% drop of nothing
    assert diagnose(train_rows([0.001 - 0.00001 * i for i in range(40)]), SETTINGS) == []
    # the train loss still falls, but the validation loss stopped improving at step 20: more steps
    # would not have helped (and early stopping said so)
    rows = train_rows([3.0 - 0.05 * i for i in range(30)])
    rows += [{"step": s, "eval_loss": v} for s, v in [(10, 1.0), (20, 0.9), (30, 0.91)]]
    assert "under-trained" not in kinds(diagnose(rows, SETTINGS))
    # ... while one still improving at the last evaluation leaves it under-trained
    rows[-1] = {"step": 30, "eval_loss": 0.8}
    assert kinds(diagnose(rows, SETTINGS)) == ["under-trained"]


def test_the_report_summary_names_an_unresolved_auto_schedule(tmp_path):
    from smolora.config import load_config
    from smolora.eval.report import config_summary

    rows = dict(config_summary(load_config(None, ["data.path=d.jsonl"]), tmp_path))
    assert any("auto epoch(s), lr auto" in v for v in rows.values()), rows


def test_a_chatty_base_that_contained_more_answers_is_forgetting_on_contains():
    base, tuned = {"exact_match": 0.0, "contains": 14.0}, {"exact_match": 6.0, "contains": 8.0}
    assert forgetting(base, tuned, "exact_match") is None
    f = forgetting(base, tuned, "contains")
    assert f["kind"] == "forgetting" and "contains 8.0 below the base model's 14.0" in f["message"]
