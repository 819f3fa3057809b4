"""Chat rendering and label masking: the labels cover exactly the answers, token for token."""

from __future__ import annotations

import pytest

from helpers import CHATML, make_tiny_tokenizer
from smolora.data import domain_tag, encode_example, ensure_chat_template, render_prompt
from smolora.data.render import FALLBACK_TEMPLATE, IGNORE, encode_examples

QA = [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "It is 4."}]
MULTI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Write a haiku about rivers."},
    {"role": "assistant", "content": "Water finds the sea."},
    {"role": "user", "content": "Now the capital of France?"},
    {"role": "assistant", "content": "Paris."},
]


def trained_pieces(tokenizer, row) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    pieces, run = [], []
    for tok, label in zip(row["input_ids"], row["labels"], strict=True):
        if label != IGNORE:
            assert label == tok
            run.append(tok)
        elif run:
            pieces.append(tokenizer.decode(run))
            run = []
    return pieces + ([tokenizer.decode(run)] if run else [])


@pytest.fixture
def plain_tokenizer():
    """A tokenizer without a chat template, like a base model's."""
    tok = make_tiny_tokenizer()
    tok.chat_template = None
    return tok


def test_single_turn_labels_are_the_answer_and_end_of_turn(tiny_tokenizer):
    [row] = encode_example({"messages": QA}, tiny_tokenizer, max_length=256)
    assert trained_pieces(tiny_tokenizer, row) == ["It is 4.<|im_end|>"]
    full = tiny_tokenizer.apply_chat_template(QA, tokenize=False)
    assert tiny_tokenizer.decode(row["input_ids"]) == full


def test_multi_turn_labels_every_answer_and_nothing_else(tiny_tokenizer):
    [row] = encode_example({"messages": MULTI}, tiny_tokenizer, max_length=256)
    assert trained_pieces(tiny_tokenizer, row) == ["Water finds the sea.<|im_end|>", "Paris.<|im_end|>"]


def test_train_on_all(tiny_tokenizer):
    [row] = encode_example({"messages": QA}, tiny_tokenizer, max_length=256, train_on="all")
    assert row["labels"] == row["input_ids"]


def test_truncation_keeps_the_beginning(tiny_tokenizer):
    [full] = encode_example({"messages": MULTI}, tiny_tokenizer, max_length=256)
    [cut] = encode_example({"messages": MULTI}, tiny_tokenizer, max_length=40)
    assert cut["input_ids"] == full["input_ids"][:40] and cut["labels"] == full["labels"][:40]
    [qa] = encode_example({"messages": QA}, tiny_tokenizer, max_length=256)
    n = len(qa["input_ids"])  # QA fits exactly, MULTI does not
    rows, info = encode_examples([{"messages": MULTI}, {"messages": QA}], tiny_tokenizer, max_length=n)
    assert info["truncated"] == 1 and info["lengths"] == [len(full["input_ids"]), n]
    assert rows[1][0] == qa and len(rows[0][0]["input_ids"]) == n


def test_answer_cut_off_gives_zero_labels(tiny_tokenizer):
    long_q = [{"role": "user", "content": "Write a haiku about rivers and the sea. " * 5}, QA[1]]
    [row] = encode_example({"messages": long_q}, tiny_tokenizer, max_length=16)
    assert len(row["input_ids"]) == 16 and set(row["labels"]) == {IGNORE}


def test_plain_text_gets_eos_and_overlapping_windows(tiny_tokenizer):
    text = "The capital of France is Paris. " * 6
    ids = tiny_tokenizer(text)["input_ids"] + [tiny_tokenizer.eos_token_id]
    rows = encode_example({"text": text}, tiny_tokenizer, max_length=32, chunk_overlap=8)
    assert len(rows) > 1
    assert rows[0]["input_ids"] == ids[:32] and rows[1]["input_ids"][:8] == ids[24:32]
    assert rows[-1]["input_ids"][-1] == tiny_tokenizer.eos_token_id
    assert all(r["labels"] == r["input_ids"] and len(r["input_ids"]) <= 32 for r in rows)
    [short] = encode_example({"text": "Paris."}, tiny_tokenizer, max_length=32)
    assert short["input_ids"][-1] == tiny_tokenizer.eos_token_id


def test_domain_tag_in_prompt_and_training_text(tiny_tokenizer):
    prompt = render_prompt(tiny_tokenizer, [QA[0]], domain="medicine")
    assert (
        prompt
        == f"<|im_start|>user\n{domain_tag('medicine')}What is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(tiny_tokenizer, "What is 2 plus 2?").endswith("<|im_start|>assistant\n")
    [row] = encode_example({"messages": QA, "domain": "medicine"}, tiny_tokenizer, max_length=256)
    assert tiny_tokenizer.decode(row["input_ids"]).startswith(
        render_prompt(tiny_tokenizer, [QA[0]], domain="medicine")
    )
    assert trained_pieces(tiny_tokenizer, row) == ["It is 4.<|im_end|>"]
    [row] = encode_example({"text": "Paris.", "domain": "geo"}, tiny_tokenizer, max_length=64)
    assert tiny_tokenizer.decode(row["input_ids"]).startswith("[domain: geo]\nParis.")


def test_fallback_template_for_base_tokenizers(plain_tokenizer):
    ensure_chat_template(plain_tokenizer)
    assert plain_tokenizer.chat_template == FALLBACK_TEMPLATE
    [row] = encode_example({"messages": MULTI}, plain_tokenizer, max_length=256)
    assert trained_pieces(plain_tokenizer, row) == ["Water finds the sea.<|im_end|>", "Paris.<|im_end|>"]
    assert render_prompt(plain_tokenizer, "Hi").endswith("### Instruction:\nHi\n\n### Response:\n")
    ensure_chat_template(plain_tokenizer)  # idempotent, and never replaces a real template
    plain_tokenizer.chat_template = CHATML
    ensure_chat_template(plain_tokenizer)
    assert plain_tokenizer.chat_template == CHATML


def test_template_without_prefix_property_falls_back_to_search(plain_tokenizer):
    # Numbering the conversation length up front breaks "shorter render is a prefix".
    plain_tokenizer.chat_template = "{{ messages|length }}\n" + CHATML
    rows, info = encode_examples([{"messages": MULTI}], plain_tokenizer, max_length=256)
    assert info["mask_fallback"] == 1
    assert trained_pieces(plain_tokenizer, rows[0][0]) == [
        "Water finds the sea.<|im_end|>",
        "Paris.<|im_end|>",
    ]


def test_template_rejecting_system_gets_it_folded_into_the_user_turn(plain_tokenizer):
    plain_tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + CHATML
    )
    [row] = encode_example({"messages": MULTI}, plain_tokenizer, max_length=256)
    assert "Be brief.\n\nWrite a haiku" in plain_tokenizer.decode(row["input_ids"])
    assert trained_pieces(plain_tokenizer, row) == ["Water finds the sea.<|im_end|>", "Paris.<|im_end|>"]
