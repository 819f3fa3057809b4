"""Every fine-tuning method on a tiny Llama: the loss falls, the saved result loads through
load_for_inference with identical logits, and it generates. Plus LoRA+, QLoRA (CUDA only; its
CPU error is tested everywhere) and the extension point (a new method is one dict entry)."""

from __future__ import annotations

import json

import pytest
import torch

from smolora.config import LoraSection, ModelSection, config_schema, load_config
from smolora.data.collate import pad_batch
from smolora.data.encode import PreparedData
from smolora.errors import ConfigError, ModelError
from smolora.generate import generate
from smolora.model.adapters import METHODS
from smolora.model.load import load_base, load_for_inference
from smolora.model.loss import chunked_lm_loss
from smolora.model.surgery import decoder_layers
from smolora.train.recipe import train
from smolora.train.result import save_adapter
from smolora.train.trainer import loraplus_optimizer

# what save_adapter records of the data (nothing here was prepared from a file)
SAVED_DATA = PreparedData(None, None, {}, fingerprint="test", format="text", mapping={})
TEXTS = [
    "The capital of France is Paris.",
    "product=lamp; qty=3; city=Lisbon",
    "Write a haiku about rivers and the sea.",
    "Summarize the following text in one sentence.",
]
EXTRA = {"freeze": ["lora.freeze_last_n=1"]}
# Whole-weight methods move every weight they touch; a smaller step keeps them stable.
LR = {"full": 1e-3, "freeze": 3e-3}


def method_cfg(model_dir, method, tmp_path, *extra):
    return load_config(
        None,
        [
            f"model.name={model_dir}",
            f"lora.method={method}",
            "lora.r=4",
            "lora.alpha=8",
            f"output.dir={tmp_path}",
            f"output.name={method}",
            *EXTRA.get(method, []),
            *extra,
        ],
    )


def tiny_batch(tokenizer):
    rows = [{"input_ids": ids, "labels": ids} for ids in tokenizer(TEXTS)["input_ids"]]
    return pad_batch(rows, tokenizer.pad_token_id)


def short_loop(model, batch, lr: float, steps: int = 6) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        total, n = chunked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        loss = total / n
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_saves_loads_and_generates(method, tiny_model_dir, tmp_path):
    cfg = method_cfg(tiny_model_dir, method, tmp_path)
    torch.manual_seed(0)
    model, tokenizer = load_base(cfg.model, "cpu")
    model = METHODS[method](model, cfg.lora)
    batch = tiny_batch(tokenizer)

    losses = short_loop(model, batch, LR.get(method, 1e-2))
    assert losses[-1] < losses[0], losses

    run = tmp_path / "run"
    run.mkdir()
    save_adapter(model, tokenizer, cfg, run, SAVED_DATA)
    loaded, loaded_tokenizer, meta = load_for_inference(run, device="cpu")
    assert meta["method"] == method
    # Same function after the round trip (PiSSA/OLoRA: via their conversion to plain LoRA).
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=1e-5, rtol=1e-5)
    out = generate(loaded, loaded_tokenizer, ["What is 1 plus one?"], max_new_tokens=4)
    assert len(out) == 1 and isinstance(out[0], str)


def test_pissa_through_train_saves_a_plain_lora_for_the_untouched_base(tiny_model_dir, qa_file, tmp_path):
    cfg = method_cfg(
        tiny_model_dir,
        "pissa",
        tmp_path,
        f"data.path={qa_file}",
        "data.max_length=64",
        "train.batch_size=4",
        "train.max_steps=6",
        "train.lr=1e-2",
    )
    run = train(cfg, show_progress=False)
    losses = [
        json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x
    ]
    assert losses[-1] < losses[0]
    adapter_cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    # Converted: rank 2r, ordinary init, so plain PEFT on the original weights reproduces it.
    assert adapter_cfg["r"] == 8 and adapter_cfg["init_lora_weights"] is True
    model, _, _ = load_for_inference(run, device="cpu")
    base = model.get_base_model()
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    for name, p in base.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, original[name.replace(".base_layer", "")]), name


def test_loraplus_gives_b_a_higher_learning_rate(tiny_model_dir, qa_file, tmp_path):
    cfg = method_cfg(
        tiny_model_dir,
        "lora",
        tmp_path,
        "lora.plus_ratio=16",
        "train.lr=1e-3",
        f"data.path={qa_file}",
        "data.max_length=64",
        "train.batch_size=4",
        "train.max_steps=6",
    )
    model = METHODS["lora"](load_base(cfg.model, "cpu")[0], cfg.lora)
    optimizer = loraplus_optimizer(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert {lr for n, lr in lr_of.items() if "lora_A" in n} == {1e-3}
    b_lrs = [lr for n, lr in lr_of.items() if "lora_B" in n]
    assert b_lrs and all(lr == pytest.approx(16e-3) for lr in b_lrs)

    run = train(cfg, show_progress=False)
    losses = [
        json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x
    ]
    assert losses[-1] < losses[0]


def test_freeze_trains_only_the_chosen_parameters(tiny_model_dir):
    model, _ = load_base(ModelSection(name=str(tiny_model_dir)), "cpu")
    model = METHODS["freeze"](
        model, LoraSection(method="freeze", freeze_last_n=1, trainable_modules=["norm.weight"])
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    last = len(decoder_layers(model)) - 1
    assert any(f"layers.{last}.mlp" in n for n in trainable)
    assert not any("layers.0.mlp" in n or "embed" in n for n in trainable)
    assert "model.norm.weight" in trainable  # picked by name
    with pytest.raises(ConfigError, match="freeze_last_n"):
        METHODS["freeze"](model, LoraSection(method="freeze"))
    with pytest.raises(ConfigError, match="matches no parameter"):
        METHODS["freeze"](model, LoraSection(method="freeze", trainable_modules=["no_such_module"]))


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_on_cpu_is_a_clear_error(bits, tiny_model_dir):
    section = ModelSection(name=str(tiny_model_dir), **{f"load_in_{bits}bit": True})
    with pytest.raises(ModelError) as err:
        load_base(section, device="cpu")
    message = str(err.value)
    assert f"load_in_{bits}bit" in message and "CUDA" in message and "cpu" in message
    assert "plain LoRA" in message and f"model.load_in_{bits}bit=false" in message


def _no_qlora() -> str:
    import importlib.util

    if not torch.cuda.is_available():
        return "QLoRA needs a CUDA GPU (bitsandbytes kernels); none is visible"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "QLoRA needs bitsandbytes: pip install 'smolora[qlora]'"
    return ""


@pytest.mark.skipif(bool(_no_qlora()), reason=_no_qlora() or "runs")
@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_on_cuda_trains_and_round_trips(bits, tiny_model_dir, tmp_path):
    cfg = method_cfg(tiny_model_dir, "lora", tmp_path, f"model.load_in_{bits}bit=true")
    model, tokenizer = load_base(cfg.model, "cuda")
    assert getattr(model, f"is_loaded_in_{bits}bit")
    model = METHODS["lora"](model, cfg.lora)
    batch = {k: v.cuda() for k, v in tiny_batch(tokenizer).items()}
    losses = short_loop(model, batch, 1e-2)
    assert losses[-1] < losses[0], losses
    run = tmp_path / "run"
    run.mkdir()
    save_adapter(model, tokenizer, cfg, run, SAVED_DATA)
    loaded, loaded_tokenizer, _ = load_for_inference(run, device="cuda")
    # The adapter now sits on the unquantized base: close to, not equal to, the 4/8-bit model.
    assert generate(loaded, loaded_tokenizer, ["What is 1 plus one?"], max_new_tokens=4)


def test_method_names_are_the_dict_keys(monkeypatch, tiny_model_dir, qa_file, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'dora'"):
        load_config(None, ["lora.method=dorra"])
    assert config_schema()["$defs"]["LoraSection"]["properties"]["method"]["enum"] == list(METHODS)

    # The extension point: train() calls whatever function the dict holds for the configured name
    # (a new method is that function plus its name in config.MethodName; test_config checks they agree).
    calls = []

    def bias_only(model, cfg):
        calls.append(cfg.r)
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("norm.weight"))
        return model

    monkeypatch.setitem(METHODS, "freeze", bias_only)
    cfg = method_cfg(
        tiny_model_dir,
        "freeze",
        tmp_path,
        f"data.path={qa_file}",
        "data.max_length=64",
        "train.batch_size=4",
        "train.max_steps=2",
    )
    run = train(cfg, show_progress=False)
    assert calls == [4] and (run / "adapter" / "model.safetensors").exists()


def test_docs_show_the_real_code_of_a_builtin_method():
    import inspect
    from pathlib import Path

    from smolora.model.adapters import freeze

    doc = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text(encoding="utf-8")
    assert inspect.getsource(freeze).rstrip() in doc  # the example is the code, not a copy that drifts
    assert all(f"| `{name}` |" in doc for name in METHODS)  # every method is in the table
