"""train.report_to: MLflow (local file store) and W&B (offline) write into the run directory.

TensorBoard is checked in test_eval.py. These two need the optional `track` extra
(pip install 'smolora[track]') and are skipped without it.
"""

from __future__ import annotations

import json
import os

import pytest

from helpers import tiny_config
from smolora.train.recipe import train

TRACKING_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_ALLOW_FILE_STORE",
    "WANDB_MODE",
    "WANDB_DIR",
    "WANDB_API_KEY",
    "TENSORBOARD_LOGGING_DIR",
)


def test_mlflow_and_wandb_log_into_the_run_dir(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow not installed (pip install 'smolora[track]')")
    pytest.importorskip("wandb", reason="wandb not installed (pip install 'smolora[track]')")
    # Start with no tracking variables, and have monkeypatch remove what training sets.
    for name in TRACKING_ENV:
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    extra = ("train.max_steps=2", "train.report_to=[mlflow, wandb]", "output.name=tracked")
    cfg = tiny_config(tiny_model_dir, qa_file, tmp_path, *extra)
    run = train(cfg, show_progress=False)
    losses = list((run / "mlruns").glob("*/*/metrics/loss"))
    assert losses and losses[0].read_text().strip()  # mlflow's file store: one line per logged step
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert offline and offline[0].stat().st_size > 0
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1


def test_each_run_in_one_process_gets_its_own_mlflow_store_but_a_users_uri_wins(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from smolora.train.progress import tracking_env

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)
    cfg = SimpleNamespace(train=SimpleNamespace(report_to=["mlflow"]))
    tracking_env(cfg, tmp_path / "a")
    first = os.environ["MLFLOW_TRACKING_URI"]
    tracking_env(cfg, tmp_path / "b")
    assert first.endswith("/a/mlruns") and os.environ["MLFLOW_TRACKING_URI"].endswith("/b/mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    tracking_env(cfg, tmp_path / "c")
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://tracking.example:5000"
