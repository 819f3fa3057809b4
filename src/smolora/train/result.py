"""What a finished run leaves in `adapter/`: the weights, the tokenizer and `smolora.json`.

Written into `adapter.partial` and renamed into place once whole and on disk, so a run
directory with an `adapter/` is a finished run (a crash mid-write leaves the old one).

Run as:
    out = save_adapter(model, tokenizer, cfg, run_dir, data)   # run_dir / "adapter"
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from smolora.config import RunConfig
from smolora.data.encode import PreparedData
from smolora.durable import fsync_dir
from smolora.model.adapters import save_weights
from smolora.model.lineage import recorded_sha256
from smolora.model.store import resolve_model
from smolora.redact import mask_text
from smolora.runs import ADAPTER_DIR, AdapterMeta, write_meta
from smolora.train.checkpoints import disk_full_error, fsync_tree, is_disk_full


def library_versions() -> dict[str, str]:
    import peft
    import transformers

    import smolora

    return {
        "smolora": smolora.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def save_adapter(
    model,
    tokenizer,
    cfg: RunConfig,
    run_dir: Path,
    data: PreparedData,
    state_dict: dict | None = None,
    outcome: dict | None = None,
) -> Path:
    """PEFT adapter (or full weights) + tokenizer + smolora.json, written atomically.

    `state_dict`: the gathered weights when FSDP / ZeRO-3 sharded them (see distributed.py).
    `outcome`: how the run went, for smolora.json: schedule, best, diagnosis (see AdapterMeta).
    """
    out = run_dir / ADAPTER_DIR
    tmp = run_dir / f"{ADAPTER_DIR}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        # PiSSA/OLoRA are converted to a LoRA that fits the untouched base
        save_weights(model, tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        write_meta(tmp, adapter_meta(cfg, tokenizer, data, outcome))
        fsync_tree(tmp)  # on disk before the rename that says the run is finished
    except Exception as e:  # any writer: torch, safetensors (SafetensorError), the json
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full_error(run_dir, 0, e, what=f"the adapter in {out}") from None
        raise
    if out.exists():  # a resumed run saves again: the old adapter goes only once the new one is whole
        old = run_dir / f"{ADAPTER_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    fsync_dir(run_dir, best_effort=True)  # some filesystems cannot sync a directory
    return out


def adapter_meta(cfg: RunConfig, tokenizer, data: PreparedData, outcome: dict | None = None) -> AdapterMeta:
    """adapter/smolora.json: what loading, serving and exporting need to rebuild the model's inputs."""
    return AdapterMeta(
        base_model=cfg.model.name,
        base_sha256=recorded_sha256(resolve_model(cfg.model.name, cfg.model.revision)),
        method=cfg.lora.method,
        drop_layers=cfg.model.drop_layers,
        keep_layers=cfg.model.keep_layers,
        chat_template=tokenizer.chat_template,
        # masked like config.yaml: a token pasted into the system prompt is not kept on disk
        system_prompt=mask_text(cfg.data.system_prompt) if cfg.data.system_prompt else None,
        data_fingerprint=data.fingerprint,
        data_format=data.format,
        versions=library_versions(),
        task=cfg.data.task,
        **(outcome or {}),
    )
