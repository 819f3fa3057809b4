"""Safe loading: safetensors only unless the user opts in, pickles read with weights_only=True,
a pickle that would run code is refused even then, and remote code stays off by default.

All on the tiny random Llama; seconds in total.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from smolora.cli.main import app
from smolora.config import ModelSection, load_config
from smolora.errors import ModelError
from smolora.model.load import load_base, load_for_inference


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickle_copy(src: Path, dst: Path, weights: str, state: dict) -> Path:
    """`src` without its safetensors, with `state` pickled into `weights` instead."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(state, dst / weights)
    return dst


@pytest.fixture
def pickle_model_dir(tiny_model_dir, tmp_path) -> Path:
    from safetensors.torch import load_file

    state = load_file(str(tiny_model_dir / "model.safetensors"))
    return pickle_copy(tiny_model_dir, tmp_path / "pickled", "pytorch_model.bin", state)


@pytest.fixture
def evil_model_dir(tiny_model_dir, tmp_path) -> Path:
    state = {"model.embed_tokens.weight": RunsCode(tmp_path / "PWNED")}
    return pickle_copy(tiny_model_dir, tmp_path / "evil", "pytorch_model.bin", state)


@pytest.fixture
def adapter_dir(tiny_model_dir, tmp_path) -> Path:
    """A LoRA adapter on the tiny model, in PEFT format plus smolora.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    out = tmp_path / "adapter"
    model.save_pretrained(out)
    (out / "smolora.json").write_text(json.dumps({"base_model": str(tiny_model_dir), "method": "lora"}))
    return out


def adapter_as_pickle(adapter_dir: Path, state: dict | None = None) -> Path:
    from safetensors.torch import load_file

    path = adapter_dir / "adapter_model.safetensors"
    weights = state if state is not None else load_file(str(path))
    path.unlink()
    torch.save(weights, adapter_dir / "adapter_model.bin")
    return adapter_dir


def test_pickle_only_model_is_refused_naming_the_file_and_the_fix(pickle_model_dir):
    with pytest.raises(ModelError) as e:
        load_base(ModelSection(name=str(pickle_model_dir)), "cpu")
    msg = str(e.value)
    assert "pytorch_model.bin" in msg and "convert them to safetensors" in msg
    assert "--set model.allow_pickle=true" in msg and "--allow-pickle" in msg


def test_pickle_model_loads_with_the_flag_and_matches(pickle_model_dir, tiny_model_dir):
    model, _ = load_base(ModelSection(name=str(pickle_model_dir), allow_pickle=True), "cpu")
    reference, _ = load_base(ModelSection(name=str(tiny_model_dir)), "cpu")
    for (name, p), (_, q) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_config_key_and_environment_opt_in(pickle_model_dir, monkeypatch):
    assert load_config(None, ["model.allow_pickle=true"]).model.allow_pickle
    assert not load_config(None).model.allow_pickle and not load_config(None).model.trust_remote_code
    with pytest.raises(ModelError, match="pickle"):
        load_for_inference(pickle_model_dir, "cpu")
    monkeypatch.setenv("SMOLORA_ALLOW_PICKLE", "1")  # for serve / eval / export / ui, which take no config
    model, _, meta = load_for_inference(pickle_model_dir, "cpu")
    assert meta["adapter"] is None and not model.training


def test_a_pickle_that_runs_code_is_never_executed_even_with_the_flag(evil_model_dir, tmp_path):
    with pytest.raises(ModelError, match="refused to load"):
        load_base(ModelSection(name=str(evil_model_dir), allow_pickle=True), "cpu")
    assert not (tmp_path / "PWNED").exists()


def test_pickle_adapter_is_refused_then_loads_with_the_flag(adapter_dir):
    reference, _, _ = load_for_inference(adapter_dir, "cpu")
    adapter_as_pickle(adapter_dir)
    with pytest.raises(ModelError, match="adapter_model.bin"):
        load_for_inference(adapter_dir, "cpu")
    model, _, meta = load_for_inference(adapter_dir, "cpu", allow_pickle=True)
    assert meta["adapter"] == str(adapter_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_a_code_running_adapter_pickle_is_refused(adapter_dir, tmp_path):
    adapter_as_pickle(adapter_dir, {"x": RunsCode(tmp_path / "PWNED")})
    with pytest.raises(ModelError, match="refused to load"):
        load_for_inference(adapter_dir, "cpu", allow_pickle=True)
    assert not (tmp_path / "PWNED").exists()


def test_full_weight_run_follows_the_same_rule(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(tiny_model_dir / "model.safetensors"))
    full = pickle_copy(tiny_model_dir, tmp_path / "full", "pytorch_model.bin", state)
    (full / "smolora.json").write_text(json.dumps({"base_model": str(tiny_model_dir), "method": "full"}))
    with pytest.raises(ModelError, match="pytorch_model.bin"):
        load_for_inference(full, "cpu")
    model, _, _ = load_for_inference(full, "cpu", allow_pickle=True)
    assert model.config.num_hidden_layers == 2


def test_no_weights_at_all_is_a_clear_error(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty"
    shutil.copytree(tiny_model_dir, empty, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ModelError, match="no model weights"):
        load_base(ModelSection(name=str(empty)), "cpu")


def test_remote_code_is_not_run_unless_the_config_says_so(tiny_model_dir, tmp_path):
    custom = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, custom)
    # A model type transformers does not know, whose code ships with the weights.
    auto_map = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (custom / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto_map}))
    (custom / "modeling_evil.py").write_text(f"open({str(tmp_path / 'PWNED')!r}, 'w').write('ran')\n")
    with pytest.raises(ModelError, match="model.trust_remote_code=true"):
        load_base(ModelSection(name=str(custom)), "cpu")
    assert not (tmp_path / "PWNED").exists()


def test_cli_generate_refuses_then_accepts_allow_pickle(pickle_model_dir):
    runner = CliRunner()
    refused = runner.invoke(app, ["generate", str(pickle_model_dir), "hi", "--max-new-tokens", "2"])
    assert isinstance(refused.exception, ModelError) and "allow-pickle" in str(refused.exception)
    ok = runner.invoke(
        app, ["generate", str(pickle_model_dir), "hi", "--max-new-tokens", "2", "--allow-pickle", "--json"]
    )
    assert ok.exit_code == 0, ok.output
    assert '"prompt": "hi"' in ok.output


# --- the check looks at the file that will be loaded, not at what else lies beside it --------


def test_a_decoy_safetensors_beside_an_adapter_pickle_does_not_open_the_door(adapter_dir):
    """PEFT reads adapter_model.bin when adapter_model.safetensors is absent, whatever else is there."""
    from safetensors.torch import save_file

    adapter_as_pickle(adapter_dir)
    save_file({"x": torch.zeros(1)}, str(adapter_dir / "decoy.safetensors"))
    with pytest.raises(ModelError, match="adapter_model.bin: adapter weights in pickle format"):
        load_for_inference(adapter_dir, "cpu")
    model, _, _ = load_for_inference(adapter_dir, "cpu", allow_pickle=True)  # the opt-in still works
    assert not model.training


def test_a_decoy_safetensors_beside_a_model_pickle_is_not_taken_for_the_weights(pickle_model_dir):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(pickle_model_dir / "decoy.safetensors"))
    with pytest.raises(ModelError, match="pytorch_model.bin: model weights in pickle format.*--allow-pickle"):
        load_base(ModelSection(name=str(pickle_model_dir)), "cpu")
    model, _ = load_base(ModelSection(name=str(pickle_model_dir), allow_pickle=True), "cpu")
    assert model.config.num_hidden_layers == 2


def test_config_transformers_weights_naming_a_pickle_is_refused(tiny_model_dir, tmp_path):
    """transformers loads config.json's `transformers_weights` even when model.safetensors is there."""
    from safetensors.torch import load_file

    d = tmp_path / "explicit"
    shutil.copytree(tiny_model_dir, d)
    torch.save(load_file(str(d / "model.safetensors")), d / "adapter_model.bin")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "transformers_weights": "adapter_model.bin"}))
    with pytest.raises(ModelError, match="adapter_model.bin: model weights in pickle format"):
        load_base(ModelSection(name=str(d)), "cpu")


def test_a_sharded_safetensors_index_with_a_pickle_shard_is_refused(pickle_model_dir, tmp_path):
    """Shards are read by their own suffix: an index can point a 'safetensors' model at a pickle."""
    from safetensors.torch import save_file

    # transformers opens every shard with safetensors when the first (sorted) one is; this one is not.
    pickled = (pickle_model_dir / "pytorch_model.bin").rename(pickle_model_dir / "model-00000-of-00002.bin")
    state = torch.load(pickled, weights_only=True)
    first = "model.embed_tokens.weight"
    save_file({first: state[first]}, str(pickle_model_dir / "model-00001-of-00002.safetensors"))
    weight_map = {k: pickled.name for k in state} | {first: "model-00001-of-00002.safetensors"}
    (pickle_model_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    with pytest.raises(ModelError, match="model-00000-of-00002.bin: model weights in pickle format"):
        load_base(ModelSection(name=str(pickle_model_dir)), "cpu")
    (pickle_model_dir / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(ModelError, match="not a readable weights index"):
        load_base(ModelSection(name=str(pickle_model_dir)), "cpu")
