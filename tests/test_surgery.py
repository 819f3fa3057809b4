"""Layer surgery on tiny Llama, Qwen2 and Gemma 3 models: the pruned model is exactly a smaller
model built from the surviving layers, generation with the KV cache works, and the surgery is
recorded in smolora.json and re-applied by load_for_inference."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import arch_config, tiny_overrides
from smolora.config import load_config
from smolora.errors import ModelError
from smolora.generate import generate
from smolora.model.load import load_for_inference
from smolora.model.surgery import apply_surgery, decoder_layers, layers_to_keep
from smolora.train.recipe import train


def reference_model(config, state_dict: dict, keep: list[int]):
    """A model built from scratch with only the `keep` layers, weights copied from `state_dict`."""
    config = copy.deepcopy(config)
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    ref = AutoModelForCausalLM.from_config(config).eval()
    mapped = {}
    for key in ref.state_dict():
        if ".layers." in key:
            prefix, rest = key.split(".layers.")
            idx, tail = rest.split(".", 1)
            mapped[key] = state_dict[f"{prefix}.layers.{keep[int(idx)]}.{tail}"]
        else:
            mapped[key] = state_dict[key]
    ref.load_state_dict(mapped)
    return ref


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize(("drop", "keep_first", "survivors"), [([1], None, [0, 2, 3]), ([], 2, [0, 1])])
def test_pruned_model_equals_model_built_from_surviving_layers(arch, drop, keep_first, survivors):
    torch.manual_seed(0)
    config = arch_config(arch)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config)).eval()
    original_types = list(getattr(config, "layer_types", None) or [])
    state = {k: v.clone() for k, v in model.state_dict().items()}

    apply_surgery(model, drop, keep_first)

    assert len(decoder_layers(model)) == model.config.num_hidden_layers == len(survivors)
    if original_types:  # sliding vs full attention follows the surviving layers
        assert model.config.layer_types == [original_types[i] for i in survivors]
    idx = [m.layer_idx for layer in decoder_layers(model) for m in layer.modules() if hasattr(m, "layer_idx")]
    assert sorted(set(idx)) == list(range(len(survivors)))

    ref = reference_model(config, state, survivors)
    # 40 tokens > the 16-token window, so sliding layers really slide, also in the cache.
    ids = torch.randint(3, 300, (2, 40))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-6)
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    cached = model.generate(ids, **kw)
    assert torch.equal(cached, ref.generate(ids, **kw))
    assert torch.equal(cached, model.generate(ids, use_cache=False, **kw))


def test_layers_to_keep_and_clear_errors():
    assert layers_to_keep(30, [10, 20], None) == [i for i in range(30) if i not in (10, 20)]
    assert layers_to_keep(6, [0, 0], 3) == [1, 2, 3]  # drops first, then the first N of the rest
    with pytest.raises(ModelError, match=r"drop_layers \[30\].*30 layers"):
        layers_to_keep(30, [30], None)
    with pytest.raises(ModelError, match="keep_layers=5.*only 4"):
        layers_to_keep(4, [], 5)
    with pytest.raises(ModelError, match="every layer"):
        layers_to_keep(2, [0, 1], None)


def test_lora_targets_only_surviving_layers(tiny_tokenizer):
    from helpers import make_tiny_model
    from smolora.config import LoraSection
    from smolora.model.adapters import METHODS

    model = apply_surgery(make_tiny_model(len(tiny_tokenizer), layers=4), [1], None)
    peft = METHODS["lora"](model, LoraSection())
    layers_with_lora = {
        n.split(".layers.")[1].split(".")[0] for n, _ in peft.named_parameters() if "lora_A" in n
    }
    assert layers_with_lora == {"0", "1", "2"}
    assert len(decoder_layers(peft)) == 3  # decoder_layers sees through the PEFT wrappers


@pytest.fixture(scope="module")
def four_layer_dir(tmp_path_factory, tiny_tokenizer):
    from helpers import make_tiny_model

    d = tmp_path_factory.mktemp("tiny-llama-4")
    make_tiny_model(len(tiny_tokenizer), layers=4).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.mark.parametrize("method", ["lora", "full"])
def test_surgery_recorded_and_reapplied_at_inference(method, four_layer_dir, qa_file, tmp_path):
    extra = ("model.drop_layers=[1]", f"lora.method={method}", "train.max_steps=2")
    cfg = load_config(None, tiny_overrides(four_layer_dir, qa_file, tmp_path, *extra))
    run = train(cfg, show_progress=False)
    meta = json.loads((run / "adapter" / "smolora.json").read_text())
    assert meta["drop_layers"] == [1] and meta["keep_layers"] is None

    # No flag at inference time: the recorded surgery is applied (LoRA) or already in the
    # saved weights (full), and never twice.
    model, tokenizer, loaded_meta = load_for_inference(run)
    assert len(decoder_layers(model)) == 3
    assert loaded_meta["drop_layers"] == [1]
    out = generate(model, tokenizer, ["What is 1 plus one?", "What is 22 plus one?"], max_new_tokens=5)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
