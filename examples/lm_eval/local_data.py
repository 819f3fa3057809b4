"""Load a JSON Lines file that sits next to the task YAML, for lm-eval's `custom_dataset`.

lm-eval calls this with the task's `dataset_kwargs` (and its metadata); `data_files` is a path
relative to this folder. Nothing is downloaded, so the task runs offline.

Run as (from a task YAML):
    custom_dataset: !function local_data.load_jsonl
    dataset_kwargs:
      data_files: orders.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load_jsonl(data_files: str, split: str = "test", **_: object) -> datasets.DatasetDict:
    path = HERE / data_files
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})
