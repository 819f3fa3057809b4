"""The model store under two writers, and the checks every load makes.

Two processes building the same entry at once (the UI's data view and a training it started,
on a fresh machine) end with one complete entry and a manifest that lists every file; a
truncated or missing file is named on the next load with the command that fixes it; `models
verify` also names files the manifest does not list. Forked processes, tiny files: seconds.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from pathlib import Path

import pytest

from smolora.errors import IntegrityError
from smolora.model import store
from smolora.model.entries import list_models
from smolora.model.pull import pull_model
from smolora.model.store import models_dir, resolve_model
from smolora.model.verify import verify_models

FORK = multiprocessing.get_context("fork")  # the children inherit this test's monkeypatches
JOIN_S = 120  # a hang detector, not a speed limit


def _race(barrier, results, fn) -> None:
    barrier.wait()  # every child starts building at the same moment
    try:
        fn()
        results.put("ok")
    except BaseException as e:  # noqa: BLE001 - report anything to the parent
        results.put(f"{type(e).__name__}: {e}")


def run_at_once(fn, n: int = 3) -> list[str]:
    """fn() in n forked processes started together; what each ended with ('ok' or the exception)."""
    barrier, results = FORK.Barrier(n), FORK.Queue()
    procs = [FORK.Process(target=_race, args=(barrier, results, fn)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(JOIN_S)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, f"{len(hung)} of {n} builders hung"
    return [results.get(timeout=5) for _ in procs]


def entry_is_complete(path: Path) -> dict:
    """The manifest lists exactly the files present, with their sizes and hashes; nothing else is left."""
    manifest = json.loads((path / "manifest.json").read_text())
    present = {str(f.relative_to(path)) for f in path.rglob("*") if f.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == present
    assert verify_models([path.name]) == [
        {"name": path.name, "path": path, "checked": len(present), "bad": [], "extra": []}
    ]
    leftovers = [p.name for p in models_dir().iterdir() if p.name not in (path.name, f"{path.name}.lock")]
    assert leftovers == [], leftovers  # no staging or half-removed directories
    return manifest


@pytest.fixture
def fake_bundled(tmp_path, monkeypatch) -> Path:
    """The bundled alias with its ~40 s GGUF conversion replaced by a slow little file writer.

    Returns the file where each conversion leaves a line, to count how many ran.
    """
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF fake")
    runs = tmp_path / "conversions.log"
    monkeypatch.setattr(store, "bundled_gguf", lambda alias: gguf)

    def convert(gguf_path, tmp, source, source_sha256, revision, name):
        with open(runs, "a") as f:
            f.write(f"{tmp.name}\n")
        for i in range(4):  # written over a while, so two unlocked builders would interleave
            (tmp / f"model-{i}.safetensors").write_bytes(bytes([i]) * 50_000)
            time.sleep(0.05)
        (tmp / "config.json").write_text("{}")
        store.write_manifest(tmp, source, source_sha256, "gguf-dequantized", revision, name)

    monkeypatch.setattr(store, "_convert_gguf_into", convert)
    return runs


def test_two_processes_converting_the_bundled_model_build_it_once(fake_bundled):
    results = run_at_once(lambda: resolve_model("smollm2-135m"))
    assert results == ["ok"] * 3, results
    manifest = entry_is_complete(models_dir() / "smollm2-135m")
    assert len(manifest["files"]) == 5
    # The others waited on the lock and found the first one's entry instead of converting again.
    assert len(fake_bundled.read_text().splitlines()) == 1


def test_a_builder_that_died_leaves_nothing_the_next_one_trips_on(fake_bundled, monkeypatch):
    stale = models_dir() / ".smollm2-135m.abcd1234.partial"  # what a killed builder leaves
    (stale / "sub").mkdir(parents=True)
    (models_dir() / "smollm2-135m.partial").mkdir()  # the fixed name of older versions
    other = models_dir() / ".smollm2-135m.v2.abcd1234.partial"  # not this entry's: kept
    other.mkdir()
    resolve_model("smollm2-135m")
    assert not stale.exists() and not (models_dir() / "smollm2-135m.partial").exists() and other.exists()

    def boom(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_convert_gguf_into", boom)
    with pytest.raises(OSError):
        pull_model("smollm2-135m", force=True)
    assert sorted(p.name for p in models_dir().iterdir()) == sorted(
        [other.name, "smollm2-135m.lock"]
    )  # the failed build removed its own staging directory


def test_two_processes_pulling_the_same_directory(tiny_model_dir):
    results = run_at_once(lambda: pull_model(str(tiny_model_dir), store_name="tiny"))
    assert results == ["ok"] * 3, results
    manifest = entry_is_complete(models_dir() / "tiny")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])


def test_a_truncated_file_is_caught_on_load_with_the_fix(tiny_model_dir):
    from smolora.config import ModelSection
    from smolora.model.load import load_base

    path, manifest = pull_model(str(tiny_model_dir), store_name="tiny")
    weights = path / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(manifest["files"]["model.safetensors"]["size"] // 2)
    with pytest.raises(IntegrityError, match=r"model.safetensors: .* bytes, its manifest.json says") as e:
        resolve_model("tiny")
    assert "smolora models pull tiny --force" in str(e.value)
    with pytest.raises(IntegrityError, match="model.safetensors"):
        load_base(ModelSection(name="tiny"), "cpu")  # before transformers reads a byte
    with pytest.raises(IntegrityError, match="model.safetensors"):
        resolve_model(str(path))  # the entry by its path: checked too

    # The advice works: the store name pulls again from the source the manifest records.
    pull_model("tiny", force=True)
    assert resolve_model("tiny") == path and verify_models(["tiny"])[0]["bad"] == []

    (path / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError, match="tokenizer.json: missing from the store entry"):
        resolve_model("tiny")


def test_a_damaged_bundled_entry_is_named_not_silently_used(fake_bundled):
    path = resolve_model("smollm2-135m")
    (path / "model-2.safetensors").write_bytes(b"short")
    with pytest.raises(IntegrityError, match="model-2.safetensors.*smolora models pull smollm2-135m --force"):
        resolve_model("smollm2-135m")
    pull_model("smollm2-135m", force=True)
    entry_is_complete(path)


def test_verify_names_files_the_manifest_does_not_list(tiny_model_dir, capsys, monkeypatch):
    from smolora.cli.main import main

    path, _ = pull_model(str(tiny_model_dir), store_name="tiny")
    (path / "pytorch_model.bin").write_bytes(b"planted")
    [result] = verify_models(["tiny"])
    assert result["bad"] == [] and result["extra"] == ["pytorch_model.bin"]
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sys, "argv", ["smolora", "models", "verify", "tiny"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == IntegrityError.exit_code == 1
    assert "not listed in the manifest" in err and str(path / "pytorch_model.bin") in err
    assert "Traceback" not in err


def test_a_crash_while_writing_the_manifest_keeps_the_old_one(tiny_model_dir, monkeypatch):
    path, manifest = pull_model(str(tiny_model_dir), store_name="tiny")

    def crash(*args):
        raise OSError("power cut")

    monkeypatch.setattr(store.os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        store.write_manifest(path, "local:elsewhere", None, "local")
    assert store.read_manifest(path) == manifest  # the old manifest, whole


def test_a_manifest_that_is_not_json_means_the_entry_is_incomplete(tiny_model_dir):
    path, _ = pull_model(str(tiny_model_dir), store_name="tiny")
    (path / "manifest.json").write_text('{"files": ')
    with pytest.raises(
        IntegrityError, match="manifest.json: missing or not readable.*smolora models rm tiny"
    ):
        resolve_model("tiny")
    assert [e["status"] for e in list_models()] == ["no manifest"]
