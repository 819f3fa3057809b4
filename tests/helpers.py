"""Plain helpers the tests share: the tiny tokenizer and model, question/answer data, the settings
of a tiny run. Fixtures live in conftest.py; everything a test imports lives here.

Run as:
    from helpers import make_tiny_model, tiny_config, write_qa
    cfg = tiny_config(tiny_model_dir, write_qa(tmp_path / "qa.jsonl"), tmp_path, "train.max_steps=2")
    run = train(cfg, show_progress=False)           # tmp_path/runs/tiny
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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


def write_qa(path: Path, n: int = 40) -> Path:
    """n question/answer pairs ("What is 3 plus one?" / "It is 4.") as JSON lines; the path back."""
    rows = [{"question": f"What is {i} plus one?", "answer": f"It is {i + 1}."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_overrides(model_dir, data, out: Path, *extra: str) -> list[str]:
    """The `--set` list of a tiny run into out/runs/tiny; `extra` come last, so they win.

    Short sequences and batches keep a step in milliseconds; lr 1e-2 moves the loss within a few
    steps; a checkpoint every 4 steps (five kept) gives resume tests something to resume from.
    """
    return [
        f"model.name={model_dir}",
        f"data.path={data}",
        "data.max_length=64",
        "train.batch_size=4",
        "train.lr=1e-2",
        "train.save_every=4",
        "train.keep_checkpoints=5",
        f"output.dir={out / 'runs'}",
        "output.name=tiny",
        *extra,
    ]


def tiny_config(model_dir, data, out: Path, *extra: str):
    """The validated config of a tiny run (see tiny_overrides)."""
    from smolora.config import load_config

    return load_config(None, tiny_overrides(model_dir, data, out, *extra))


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path: to tell that nobody wrote into a shared run."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
