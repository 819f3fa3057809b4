"""Turn tokenized rows into batches.

`pad_batch` pads to the longest row of the batch (never to max_length): with length-grouped
sampling almost every computed token is a real one. `pack_batch` concatenates the rows into
one sequence with restarting `position_ids`: padding-free, for attention kernels that read
sequence boundaries from `position_ids` (flash-attention on CUDA), so rows never attend to
each other.

Run as:
    batch = pad_batch(rows, pad_id=tokenizer.pad_token_id)
"""

from __future__ import annotations

from typing import Any

import torch


def pad_batch(rows: list[dict[str, Any]], pad_id: int, multiple_of: int = 1) -> dict[str, torch.Tensor]:
    longest = max(len(r["input_ids"]) for r in rows)
    longest = -(-longest // multiple_of) * multiple_of
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.as_tensor(r["input_ids"])
        labels[i, :n] = torch.as_tensor(r["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_batch(rows: list[dict[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    ids, labels, positions = [], [], []
    for r in rows:
        n = len(r["input_ids"])
        ids.extend(r["input_ids"])
        # The first label of each row would be predicted from the previous row's last token.
        labels.extend([-100, *r["labels"][1:]])
        positions.extend(range(n))
    return {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
    }


class Collator:
    """A picklable callable for the DataLoader (workers need to pickle it)."""

    def __init__(self, pad_id: int, packed: bool = False):
        self.pad_id, self.packed = pad_id, packed

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
        return pack_batch(rows, self.pad_id) if self.packed else pad_batch(rows, self.pad_id)
