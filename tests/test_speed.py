"""Every speed trick gives the same numbers as the plain path, on the tiny random Llama.

Tolerances: float32 everywhere; losses agree to 1e-5 relative and LoRA gradients to 1e-5
relative (max abs difference over the tensor's max abs value), packed vs separate logits to
1e-5 absolute. The fused lm-head loss is checked in float64 to 1e-12.

Run as:
    pytest -q tests/test_speed.py
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from helpers import fake_report
from smolora.config import load_config
from smolora.data.collate import (
    BucketSampler,
    Collator,
    bucket_order,
    pack_batch,
    pad_batch,
    padding_efficiency,
)
from smolora.model.loss import chunked_lm_loss, head_cross_entropy
from smolora.train.speed import (
    SparseDropout,
    apply_fast_path,
    dropped_positions,
    fast_path,
    pick_batching,
    sparse_dropout,
    use_sparse_dropout,
)
from smolora.train.trainer import SmoLoRATrainer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RTOL = 1e-5


def tiny_lora(vocab: int, dropout: float = 0.0, attn: str = "sdpa"):
    from helpers import make_tiny_model

    torch.manual_seed(0)
    model = make_tiny_model(vocab)
    model.config._attn_implementation = attn
    # init_lora_weights=False: random B, so A gets a gradient too (B=0 would hide errors in A's).
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=TARGETS, init_lora_weights=False)
    return get_peft_model(model, cfg)


def rows(tokenizer, n: int = 6) -> list[dict]:
    """Chat-like rows: a prompt with no labels, then an answer with labels; lengths differ."""
    out = []
    for i in range(n):
        prompt = tokenizer(f"question answer {i} " + "abc " * (i % 3))["input_ids"]
        answer = tokenizer(f"It is {i + 1}." + " xyz" * i)["input_ids"]
        out.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return out


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> None:
    scale = b.abs().max().clamp_min(1e-12)
    assert float((a - b).abs().max() / scale) < rtol


def test_fast_loss_and_lora_gradients_match_hf_loss(tiny_tokenizer):
    model = tiny_lora(len(tiny_tokenizer))
    batch = pad_batch(rows(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    assert not bool(batch["attention_mask"].all())  # padding is part of the test

    plain = model(**batch).loss  # HF's own shifted cross-entropy, mean over labels
    plain.backward()
    want = lora_grads(model)
    model.zero_grad()

    total, n = chunked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk=7)
    fast = total / n
    fast.backward()
    got = lora_grads(model)

    assert n == int((batch["labels"][:, 1:] != -100).sum())
    assert float(fast) == pytest.approx(float(plain), rel=RTOL)
    assert want.keys() == got.keys() and len(got) == 2 * 7 * 2  # A and B of 7 targets x 2 layers
    for name in want:
        assert_close_rel(got[name], want[name])


def test_fused_head_cross_entropy_matches_cross_entropy_float64():
    torch.manual_seed(0)
    for softcap in (None, 5.0):
        head = nn.Linear(8, 40, bias=True).double()
        h = torch.randn(23, 8, dtype=torch.float64, requires_grad=True)
        y = torch.randint(0, 40, (23,))
        (3 * head_cross_entropy(h, head, y, chunk=5, softcap=softcap)).backward()
        got = [h.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
        h.grad = None
        head.zero_grad()
        logits = head(h)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        (3 * nn.functional.cross_entropy(logits, y, reduction="sum")).backward()
        for a, b in zip(got, [h.grad, head.weight.grad, head.bias.grad], strict=True):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_head_cross_entropy_value_with_an_underflowing_target_and_capped_chunks():
    """The loss is read off the softmax, except where p(y) underflows: a confidently wrong token
    (logit gap 200, p(y) = e^-200 is 0 in float32) still gets its true loss and a finite gradient;
    a chunk never holds more float32 logits than CHUNK_BYTES."""
    from smolora.model.loss import CHUNK_BYTES, chunk_rows

    torch.manual_seed(0)
    head = nn.Linear(8, 40, bias=True)
    h = torch.randn(23, 8, requires_grad=True)
    y = torch.randint(0, 40, (23,))
    with torch.no_grad():
        head.weight[:] = 0.1 * torch.randn_like(head.weight)
        head.bias.zero_()
        head.bias[(y[0] + 1) % 40] = 200.0  # row 0's target is 200 below another logit
    got = head_cross_entropy(h, head, y, chunk=5)
    want = nn.functional.cross_entropy(head(h).double(), y, reduction="sum")
    assert torch.isfinite(got) and abs(got.item() - want.item()) < 1e-4 * want.item()
    got.backward()
    assert torch.isfinite(h.grad).all()
    assert chunk_rows(1024, 49_152) == CHUNK_BYTES // (4 * 49_152) < 1024
    assert chunk_rows(16, 49_152) == 16 and chunk_rows(1024, 10**9) == 1


def one_step_args(output_dir, **kw) -> TrainingArguments:
    """TrainingArguments of one optimizer step in a fixed order, unclipped, saving nothing."""
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=1,
        learning_rate=1e-3,
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
        logging_steps=1,
        **kw,
    )


class GradsAtStep(TrainerCallback):
    """The gradients the optimizer is about to apply (after accumulation, before the step)."""

    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.grads = lora_grads(model)


def test_grad_accum_through_trainer_matches_plain_trainer(tiny_tokenizer, tmp_path):
    from datasets import Dataset

    data = rows(tiny_tokenizer, 8)
    ds = Dataset.from_list([{**r, "length": len(r["input_ids"])} for r in data])
    result = {}
    for name in ("plain", "fast"):
        model = tiny_lora(len(tiny_tokenizer))
        # micro-batches with different label counts
        args = one_step_args(tmp_path / name, per_device_train_batch_size=2, gradient_accumulation_steps=4)
        spy = GradsAtStep()
        kind = SmoLoRATrainer if name == "fast" else Trainer
        extra = {"batching": "padded"} if name == "fast" else {}
        trainer = kind(
            model=model,
            args=args,
            train_dataset=ds,
            data_collator=Collator(tiny_tokenizer.pad_token_id),
            callbacks=[spy],
            **extra,
        )
        # Both divide by the label count of the whole accumulated batch (num_items_in_batch).
        assert trainer.model_accepts_loss_kwargs
        out = trainer.train()
        result[name] = (out.training_loss, spy.grads)
    assert result["fast"][0] == pytest.approx(result["plain"][0], rel=RTOL)
    for name, want in result["plain"][1].items():
        assert_close_rel(result["fast"][1][name], want)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_never_attend_to_each_other(tiny_tokenizer, attn):
    model = tiny_lora(len(tiny_tokenizer), attn=attn).eval()
    data = rows(tiny_tokenizer, 4)
    packed = pack_batch(data, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        # use_cache=False as in training: transformers detects packed rows only without a KV cache.
        ids, pos = packed["input_ids"], packed["position_ids"]
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        start = 0
        for r in data:
            n = len(r["input_ids"])
            alone = model(input_ids=torch.tensor([r["input_ids"]])).logits[0]
            assert torch.allclose(logits[start : start + n], alone, atol=1e-5)
            start += n

        # The loss of the packed row is the sum of the rows' losses: boundary labels are masked.
        total, n = chunked_lm_loss(
            model, packed["input_ids"], None, packed["labels"], position_ids=packed["position_ids"]
        )
        alone_batches = [pad_batch([r], 0) for r in data]
        sep = [chunked_lm_loss(model, b["input_ids"], None, b["labels"]) for b in alone_batches]
    assert n == sum(c for _, c in sep)
    assert float(total) == pytest.approx(sum(float(t) for t, _ in sep), rel=RTOL)


def test_pack_batch_masks_the_first_label_of_every_row():
    data = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    b = pack_batch(data)
    assert b["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert "attention_mask" not in b  # a mask would turn off the packed-sequence detection


def test_auto_batching_never_packs_on_cpu(tiny_model_dir):
    flash = load_config(None, ["model.attn_implementation=flash_attention_2"])
    assert pick_batching(flash, "cpu") == "bucketed"
    assert pick_batching(load_config(None, []), "cpu") == "bucketed"
    assert pick_batching(load_config(None, []), "cuda") == "bucketed"  # sdpa: no varlen kernel
    assert pick_batching(flash, "cuda") == "packed"
    assert pick_batching(load_config(None, ["train.batching=grouped"]), "cpu") == "grouped"


@pytest.mark.parametrize("n,bs", [(50, 8), (48, 8), (7, 8), (1, 1), (33, 5)])
def test_bucketed_batches_hold_each_example_once_per_epoch(n, bs):
    lengths = [(i * 37) % 23 + 1 for i in range(n)]
    sampler = BucketSampler(lengths, bs, seed=3)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(n))  # each example exactly once
        assert order == list(sampler)  # the same order again for the same (seed, epoch): resume
        batches = [order[i : i + bs] for i in range(0, n, bs)]
        assert all(len(b) == bs for b in batches[:-1])  # only the last batch may be short
        if n >= bs:
            longest = max(lengths)
            assert longest in [lengths[i] for i in batches[0]]  # out-of-memory shows at step 1
        epochs.append(order)
    if n > 2 * bs:
        assert epochs[0] != epochs[1]  # reshuffled every epoch


def test_bucketing_pads_less_than_length_grouping():
    from transformers.trainer_pt_utils import get_length_grouped_indices

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(40, 430, (2000,), generator=g).tolist()
    ours = padding_efficiency(lengths, bucket_order(lengths, 8, seed=0), 8)
    torch.manual_seed(0)
    hf = padding_efficiency(lengths, get_length_grouped_indices(lengths, 8), 8)
    assert ours > hf > padding_efficiency(lengths, list(range(2000)), 8)
    assert ours > 0.99


def test_peft_uses_identity_when_dropout_is_zero(tiny_tokenizer):
    model = tiny_lora(len(tiny_tokenizer), dropout=0.0)
    drops = [
        d
        for m in model.modules()
        if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)
        for d in m.lora_dropout.values()
    ]
    assert drops and all(isinstance(d, nn.Identity) for d in drops)
    assert use_sparse_dropout(model) == 0

    model = tiny_lora(len(tiny_tokenizer), dropout=0.1)
    assert use_sparse_dropout(model) == 7 * 2
    assert sum(isinstance(m, SparseDropout) for m in model.modules()) == 7 * 2
    assert not any(type(m) is nn.Dropout and m.p > 0 for m in model.modules())


def test_sparse_dropout_has_the_dropout_distribution_and_gradient():
    torch.manual_seed(0)
    p = 0.05
    x = torch.randn(64, 100, 96, requires_grad=True)
    y = sparse_dropout(x, p)
    dropped = y == 0
    assert abs(float(dropped.float().mean()) - p) < 0.003  # n = 614,400: 10 standard deviations
    assert torch.allclose(y[~dropped], x[~dropped] / (1 - p))
    (y * 2).sum().backward()
    assert torch.allclose(x.grad, (~dropped).float() * 2 / (1 - p))
    # Each position independently: the count of dropped positions per row is Binomial(96, p).
    per_row = dropped.flatten(0, 1).sum(-1).float()
    assert abs(float(per_row.var()) - 96 * p * (1 - p)) < 0.6
    # Eval mode and p=0 are the identity; the module repeats nn.Dropout's interface.
    assert sparse_dropout(x, p, training=False) is x and sparse_dropout(x, 0.0) is x
    assert SparseDropout(p).eval()(x) is x
    assert dropped_positions(10, 0.5).max() < 10


def test_sparse_dropout_in_lora_is_the_plain_model_at_eval_and_p0(tiny_tokenizer):
    model = tiny_lora(len(tiny_tokenizer), dropout=0.2)
    batch = pad_batch(rows(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        want = model.eval()(**batch).loss
        use_sparse_dropout(model)
        assert float(model(**batch).loss) == float(want)  # eval: dropout is the identity
        model.train()
        for m in model.modules():
            if isinstance(m, SparseDropout):
                m.p = 0.0
        assert float(model(**batch).loss) == pytest.approx(float(want), rel=RTOL)


def test_fast_path_plan_per_device():
    cpu = fast_path(load_config(None, ["lora.dropout=0.05"]), "cpu")
    assert cpu["batching"] == "bucketed" and cpu["dropout"] == "sparse" and not cpu["liger"]
    assert fast_path(load_config(None, ["lora.dropout=0"]), "cpu")["dropout"] == "none"
    assert (
        fast_path(load_config(None, ["lora.dropout=0.05", "train.compile=true"]), "cpu")["dropout"]
        == "native"
    )
    assert json.dumps(cpu)  # plain data: it is logged


def test_compile_flag_compiles_the_decoder_layers(tiny_tokenizer, monkeypatch):
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: compiled.append(kw))
    model = tiny_lora(len(tiny_tokenizer))
    apply_fast_path(model, fast_path(load_config(None, ["train.compile=true"]), "cpu"))
    assert compiled == [{"dynamic": True}] * 2


def test_second_run_skips_preprocessing(tiny_tokenizer, qa_file, monkeypatch):
    import smolora.data.encode as encode
    import smolora.data.pipeline as pipeline

    cfg = load_config(None, [f"data.path={qa_file}", "data.max_length=64"])
    first = pipeline.prepare_data(cfg, tiny_tokenizer)
    assert not first.stats["cached"]

    def boom(*a, **k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(encode, "encode_examples", boom)
    monkeypatch.setattr(encode, "read_records", boom)
    second = pipeline.prepare_data(cfg, tiny_tokenizer)
    assert second.stats["cached"]
    assert second.train["input_ids"] == first.train["input_ids"]


# --- smolora bench: the report, without running any model ------------------------------------------


def test_bench_report_targets_records_and_docs(tmp_path):
    from smolora.bench.report import END, START, markdown, records, targets, write_docs

    report = fake_report()
    rows = {r[0]: r for r in targets(report)}
    assert rows["real tok/s vs naive (fp32)"][3] == "met"  # 3.75x
    assert rows["float32: real tok/s vs best of grouped/trl/trl-pack"][3].startswith("MISSED (missed by 17%")
    assert rows["share of float32 matmul peak"][2] == "0.75"
    assert not any("bf16" in name for name in rows)  # one precision ran: nothing to compare
    assert rows["batched vs one-at-a-time generation"][3].startswith("MISSED")
    assert not any(name.startswith("peak RSS, micro") for name in rows)  # no memory-mode rows ran
    report["runs"] += [
        {"name": "smolora-lowmem", "real_tokens_per_s": 200.0, "peak_rss_mib": 2900},
        {"name": "smolora-ckpt", "real_tokens_per_s": 60.0, "peak_rss_mib": 2200},
    ]
    both = targets(report)
    names = [r[0] for r in both]
    at = names.index("peak RSS, micro-batches of 1 row (2 in bf16)")
    assert both[at][3] == "met" and both[at + 1][2] == "1.67x" and both[at + 1][3] == "met"  # 200 / 120
    at = names.index("peak RSS, checkpointing")
    assert both[at][3] == "met" and both[at + 1][3].startswith("MISSED")  # 60 / 120 = 0.5x
    report["runs"] = report["runs"][:-2]
    recs = records(report)
    assert recs[0] == {
        "name": "smolora",
        "real_tokens_per_s": 150.0,
        "step_s": 10.0,
        "peak_rss_mib": 1000,
        "last_loss": 1.5,
    }
    assert recs[3]["error"].startswith("exit 1")

    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nprose before\n\n{START}\nold\n{END}\n\nprose after\n")
    write_docs(doc, markdown(report))
    text = doc.read_text()
    assert "prose before" in text and "prose after" in text and "old" not in text
    assert "| smolora | fp32 | 150.0 |" in text and "3.75x" in text  # naive row: SmoLoRA / naive
    assert "batched 49.0 tokens/s (3.5x)" in text  # decoding alone, after the prompt pass


def test_write_docs_takes_only_marker_lines_and_never_overwrites(tmp_path):
    """Prose quoting the markers is not the block (the bench once wrote its table into this
    page's intro sentence); a file without markers keeps its text and gets the block appended."""
    from smolora.bench.report import END, START, write_docs

    doc = tmp_path / "benchmarks.md"
    intro = f"`--docs` rewrites the block between the `{START}` / `{END}` markers.\n"
    doc.write_text(f"# B\n\n{intro}\n## Latest\n\n{START}\nold table\n{END}\n\nafter\n")
    write_docs(doc, "new table")
    assert doc.read_text() == f"# B\n\n{intro}\n## Latest\n\n{START}\nnew table\n{END}\n\nafter\n"
    mine = tmp_path / "notes.md"
    mine.write_text("my own notes\n")
    write_docs(mine, "t")
    assert mine.read_text() == f"my own notes\n\n{START}\nt\n{END}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmarks.md", "notes.md"]  # no temp left


def test_bench_rejects_unknown_peer_mode():
    from smolora.cli.bench import bench
    from smolora.errors import SmoLoRAError

    with pytest.raises(SmoLoRAError, match="unknown mode"):
        bench(peers="naive,fast", data=None)


def test_sparse_dropout_under_checkpointing_recomputes_the_same_mask(tiny_tokenizer):
    """Checkpointing replays the forward in backward: the dropped positions must be the same."""
    batch = pad_batch(rows(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    grads = []
    for checkpointing in (False, True):
        model = tiny_lora(len(tiny_tokenizer), dropout=0.3)
        use_sparse_dropout(model)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        torch.manual_seed(123)
        total, n = chunked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        (total / n).backward()
        grads.append(lora_grads(model))
    for name, want in grads[0].items():
        assert_close_rel(grads[1][name], want)


def test_memory_mode_returns_freed_memory_on_cpu():
    plan = fast_path(load_config(None, ["model.gradient_checkpointing=true"]), "cpu")
    assert plan["malloc"] and fast_path(load_config(None, []), "cpu")["malloc"] is None
