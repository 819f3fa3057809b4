"""Memory at full speed: micro-batches inside a batch, and saved activations kept in bf16.

`train.micro_batch` must give the whole batch's gradient (float32 rounding only: 1e-5
relative, as tests/test_speed.py's tricks); `train.saved_activations=bf16` rounds what the
decoder layers keep for backward, so its gradients are compared to bf16 precision: 5e-2
relative, where measured on this tiny random model they are 2.6e-2 off float32's, and
torch.autocast's bf16 (every activation and matmul in bf16) 1.0e-1. They must not equal
float32's exactly (something was packed).

Run as:
    pytest -q tests/test_memory.py
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import smolora_main, tiny_overrides, write_qa
from smolora.config import ConfigError, load_config
from smolora.data.collate import Collator, pad_batch
from smolora.model.activations import pack_saved_activations
from smolora.model.loss import chunked_lm_loss
from smolora.train.speed import fast_path
from smolora.train.trainer import SmoLoRATrainer
from test_speed import GradsAtStep, assert_close_rel, lora_grads, one_step_args, rows, tiny_lora

BF16_RTOL = 5e-2


def one_step(tokenizer, tmp_path, name: str, micro_batch: int | None):
    """One optimizer step of batch 8 (rows of different lengths) through SmoLoRATrainer."""
    from datasets import Dataset

    data = rows(tokenizer, 8)
    ds = Dataset.from_list([{**r, "length": len(r["input_ids"])} for r in data])
    model = tiny_lora(len(tokenizer))
    args = one_step_args(tmp_path / name, per_device_train_batch_size=8)
    spy = GradsAtStep()
    counter = {"tokens": 0}
    trainer = SmoLoRATrainer(
        model=model,
        args=args,
        train_dataset=ds,
        data_collator=Collator(tokenizer.pad_token_id),
        callbacks=[spy],
        batching="padded",
        counter=counter,
        micro_batch=micro_batch,
    )
    out = trainer.train()
    return out.training_loss, spy.grads, counter["tokens"]


@pytest.mark.parametrize("micro", [1, 3])
def test_micro_batches_give_the_whole_batch_gradient(tiny_tokenizer, tmp_path, micro):
    loss, grads, tokens = one_step(tiny_tokenizer, tmp_path, "whole", None)
    part_loss, part_grads, part_tokens = one_step(tiny_tokenizer, tmp_path, f"micro{micro}", micro)
    assert part_loss == pytest.approx(loss, rel=1e-5)
    assert grads and part_grads.keys() == grads.keys()
    for name, want in grads.items():
        assert_close_rel(part_grads[name], want)
    # each part is cut to its own longest row: fewer tokens computed, the same real tokens counted
    assert part_tokens == tokens


def batch_grads(tokenizer, pack: bool, min_elements: int = 0):
    model = tiny_lora(len(tokenizer))
    handles, packer = pack_saved_activations(model, min_elements=min_elements) if pack else ([], None)
    batch = pad_batch(rows(tokenizer), tokenizer.pad_token_id)
    total, n = chunked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk=7)
    (total / n).backward()
    return float(total.detach() / n), lora_grads(model), packer, handles, model


def test_bf16_saved_activations_keep_the_gradient_to_bf16_precision(tiny_tokenizer):
    loss, want, _, _, _ = batch_grads(tiny_tokenizer, pack=False)
    packed_loss, got, packer, handles, model = batch_grads(tiny_tokenizer, pack=True)
    assert packed_loss == loss  # the forward pass is float32 as before: only the stored copies are rounded
    assert packer.packed > 0 and len(handles) == 2 * 2  # a pre- and a post-hook on each of the 2 layers
    differs = False
    for name, grad in want.items():
        assert_close_rel(got[name], grad, BF16_RTOL)
        differs |= not torch.equal(got[name], grad)
    assert differs  # the rounding reached the gradients: the hooks did something
    # no weight was rounded: every parameter is float32 still, and removing the hooks restores float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for h in handles:
        h.remove()
    model.zero_grad()
    batch = pad_batch(rows(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    total, n = chunked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk=7)
    (total / n).backward()
    for name, grad in want.items():
        assert torch.equal(lora_grads(model)[name], grad)


def test_a_shared_activation_is_packed_once_and_small_ones_not_at_all(tiny_tokenizer):
    # q, k and v read the same normed hidden state: with a cache it is stored once, not three times.
    *_, packer, _, _ = batch_grads(tiny_tokenizer, pack=True)
    seen: list[int] = []

    class Count(torch.autograd.graph.saved_tensors_hooks):
        def __init__(self):
            super().__init__(lambda t: seen.append(t.data_ptr()) or t, lambda t: t)

    model = tiny_lora(len(tiny_tokenizer))
    batch = pad_batch(rows(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    with Count():
        model(**{k: batch[k] for k in ("input_ids", "attention_mask")})
    assert len(seen) > len(set(seen))  # some tensor is saved more than once...
    assert packer.packed < len(seen)  # ...and packed fewer times than it is saved
    *_, none_packed, _, _ = batch_grads(tiny_tokenizer, pack=True, min_elements=10**9)
    assert none_packed.packed == 0


def test_no_packing_at_eval_or_without_grad(tiny_tokenizer):
    model = tiny_lora(len(tiny_tokenizer))
    _, packer = pack_saved_activations(model, min_elements=0)
    batch = pad_batch(rows(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    model.eval()
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert packer.packed == 0


def test_plan_and_config_of_the_memory_settings():
    plan = fast_path(load_config(None, ["train.micro_batch=2", "train.saved_activations=bf16"]), "cpu")
    assert plan["micro_batch"] == 2 and plan["saved_activations"] == "bf16" and json.dumps(plan)
    default = fast_path(load_config(None, []), "cpu")
    assert default["micro_batch"] is None and default["saved_activations"] is None
    for bad, says in [
        (["train.micro_batch=0"], "micro_batch"),
        (["train.saved_activations=fp8"], "saved_activations"),
        (["train.micro_batch=2", "train.objective=dpo"], "not dpo: lower batch_size"),
        (["train.saved_activations=bf16", "model.gradient_checkpointing=true"], "keep one"),
    ]:
        with pytest.raises(ConfigError, match=says):
            load_config(None, bad)


def test_train_cli_with_micro_batches_and_bf16_activations(tiny_model_dir, tmp_path):
    data = write_qa(tmp_path / "qa.jsonl", 16)
    sets = tiny_overrides(tiny_model_dir, data, tmp_path, "train.max_steps=2", "train.threads=1")
    sets += ["train.micro_batch=2", "train.saved_activations=bf16"]
    code, out = smolora_main("train", *[a for s in sets for a in ("--set", s)])
    assert code == 0, out
    log = (tmp_path / "runs" / "tiny" / "train.log").read_text()
    assert "micro_batch=2" in log and "saved_activations=bf16" in log
    assert (tmp_path / "runs" / "tiny" / "adapter" / "adapter_model.safetensors").is_file()
