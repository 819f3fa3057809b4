"""Shared fixtures: a tiny tokenizer trained here and a tiny random Llama built from a config.

Everything is offline and takes well under a second; the real bundled model is only used
by tests marked `real`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the user's cache or a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The capital of France is Paris.",
    "Write a haiku about rivers and the sea.",
    "Extract the product and the city: order 3 lamps to Lisbon.",
    "product=lamp; qty=3; city=Lisbon",
    "Summarize the following text in one sentence.",
    "question answer instruction input output response system user assistant",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}=-_/",
] * 20


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def make_tiny_model(vocab_size: int, arch: str = "llama", layers: int = 2):
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Qwen2Config

    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    if arch == "llama":
        config = LlamaConfig(**common)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    elif arch == "gemma3":
        config = Gemma3TextConfig(**common, head_dim=8, sliding_window=64)
    else:
        raise ValueError(arch)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


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
    import json

    rows = [{"question": f"What is {i} plus one?", "answer": f"It is {i + 1}."} for i in range(40)]
    p = tmp_path / "qa.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


@pytest.fixture(scope="session")
def real_home(tmp_path_factory) -> Path:
    """One SmoLoRA home for all `real` tests: the bundled GGUF is converted once per session (~40 s)."""
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
