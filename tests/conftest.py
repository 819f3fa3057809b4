"""Shared fixtures: a tiny tokenizer trained here, a tiny random Llama built from a config, a tiny
finished run, and a fresh SmoLoRA home for every test. Helpers that tests import are in helpers.py.

Everything is offline and takes seconds; the real bundled model is only used by tests marked `slow`
(`pytest -m "not slow and not browser"` leaves them out while developing; `make test` runs all).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from helpers import make_tiny_model, make_tiny_tokenizer, tiny_config, tree_digest, write_qa

# Tests never touch the user's cache or a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny random Llama saved as a plain HF directory (safetensors + tokenizer)."""
    d = tmp_path_factory.mktemp("tiny-llama")
    model = make_tiny_model(len(tiny_tokenizer))
    model.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Each test gets its own SmoLoRA cache so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("SMOLORA_HOME", str(tmp_path / "smolora-home"))
    yield


@pytest.fixture
def qa_file(tmp_path) -> Path:
    return write_qa(tmp_path / "qa.jsonl", 40)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished 2-step LoRA run of the tiny Llama, trained once for the session.

    Tests read it and write their outputs elsewhere; one that changes a run copies it first
    (`shutil.copytree(tiny_run, tmp_path / "run")`). At the end of the session its files must be the
    ones training wrote, so a test that wrote into it anyway is caught.
    """
    from smolora.train.recipe import train

    root = tmp_path_factory.mktemp("tiny-run")
    cfg = tiny_config(
        tiny_model_dir, write_qa(root / "qa.jsonl", 24), root, "train.max_steps=2", "train.threads=1"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMOLORA_HOME", str(root / "home"))  # session fixtures start before isolated_home
        run = train(cfg, show_progress=False)
    # train() leaves its train.log handler on the `smolora` logger (the next train() replaces it);
    # drop it here so other tests' log lines do not grow the shared run's train.log.
    logger = logging.getLogger("smolora")
    for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(h)
        h.close()
    before = tree_digest(run)
    yield run
    after = tree_digest(run)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test wrote into the shared tiny_run (copy it first): {changed}"


@pytest.fixture(scope="session")
def real_home(tmp_path_factory) -> Path:
    """One SmoLoRA home for the `slow` tests: the real bundled GGUF is converted once per session (~40 s)."""
    from smolora.model.store import resolve_model

    home = tmp_path_factory.mktemp("real-home")
    old = os.environ.get("SMOLORA_HOME")
    os.environ["SMOLORA_HOME"] = str(home)
    try:
        resolve_model("smollm2-135m")
    finally:
        if old is None:
            os.environ.pop("SMOLORA_HOME", None)
        else:
            os.environ["SMOLORA_HOME"] = old
    return home


@pytest.fixture
def use_real_home(real_home, monkeypatch) -> Path:
    monkeypatch.setenv("SMOLORA_HOME", str(real_home))
    return real_home
