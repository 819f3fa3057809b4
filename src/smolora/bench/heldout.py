"""The bench's fixed held-out set, and the one loss every tool is judged by on it.

`smolora bench` keeps the last HELDOUT rows of the bench data out of training (every tool trains
on the same remaining rows) and, after each tool's warm-up + timed steps, scores its model on
them: mean cross-entropy of the answer tokens, prompts rendered with the tokenizer's chat
template (the peers' encoding), in float32 and eval mode whatever the tool trained in, so a
faster path that learned worse shows up as a higher number, not as a different eval.

Run as:
    train_rows, heldout = split_heldout(Path("bench.jsonl"), Path(tmp))
    loss = heldout_loss(model, tokenizer, heldout)
"""

from __future__ import annotations

import json
from pathlib import Path

HELDOUT = 32  # rows: ~15 s of float32 forward passes for SmolLM2-135M on 2 cores


def split_heldout(data: Path, out_dir: Path, n: int = HELDOUT) -> tuple[Path, Path]:
    """(training rows, held-out rows): `data` without its last `n` rows (a quarter of a smaller
    file), and those rows."""
    from smolora.errors import SmoLoRAError

    lines = [line for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    n = min(n, len(lines) // 4)
    if n == 0:
        raise SmoLoRAError(
            f"--data {data}: {len(lines)} rows; the bench needs at least 4 (a quarter is held out)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    train, held = out_dir / "train.jsonl", out_dir / "heldout.jsonl"
    train.write_text("\n".join(lines[:-n]) + "\n", encoding="utf-8")
    held.write_text("\n".join(lines[-n:]) + "\n", encoding="utf-8")
    return train, held


def encode(row: dict, tokenizer, max_length: int = 512) -> tuple[list[int], list[int]]:
    """(input ids, labels with the prompt masked) of one {instruction, output} row."""
    messages = [{"role": "user", "content": row["instruction"]}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": row["output"]}], tokenize=False
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
    return ids, [-100] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids) :]


def heldout_loss(model, tokenizer, path: Path, batch_size: int = 8) -> float:
    """Mean answer-token cross-entropy of `model` on the rows of `path`, in float32, eval mode."""
    import torch

    from smolora.model.loss import chunked_lm_loss

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = [encode(r, tokenizer) for r in rows]
    was_training, dtype = model.training, next(model.parameters()).dtype
    model.eval().float()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([a + [0] * (width - len(a)) for a, _ in chunk])
            mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a, _ in chunk])
            labels = torch.tensor([b + [-100] * (width - len(b)) for _, b in chunk])
            # the training loss's own path: the head only at answer positions, no full logits tensor
            loss_sum, n = chunked_lm_loss(model, ids, mask, labels)
            total, count = total + float(loss_sum), count + n
    model.to(dtype).train(was_training)
    return round(total / max(count, 1), 5)
