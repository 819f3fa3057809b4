"""The models a server holds: a run (its base plus adapter) or a plain model, then any extra
adapters loaded onto the same base (PEFT `load_adapter`), each under the name a request's `model` picks.

Run as:
    served = load_served("runs/quickstart", {"other": "runs/other"}, device="cpu")
    served.names  # {"<base model>": {...}, "quickstart": {...}, "other": {...}}
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from smolora.errors import ExportError
from smolora.runs import ADAPTER_DIR, AdapterMeta, find_adapter_dir, read_meta
from smolora.serve.batching import Served


def adapter_meta(path: str | Path) -> tuple[Path, dict[str, Any]]:
    adapter_dir = find_adapter_dir(path)
    if adapter_dir is None:
        raise ExportError(f"--adapter {path}: no adapter there (no adapter/smolora.json); train a run first")
    return adapter_dir, read_meta(adapter_dir).to_dict()  # a dict like load_for_inference's meta


def load_served(
    model_or_run: str, adapters: dict[str, str] | None = None, device: str | None = None, layout: str = "auto"
) -> Served:
    """Load a run (its base plus adapter) or a plain model, then any extra adapters onto the same base.
    `layout`: the weights' memory layout (model/layout.py; "auto" measures which is faster)."""
    from smolora.model.layout import choose_layout
    from smolora.model.load import load_for_inference
    from smolora.model.store import resolve_model

    adapters = dict(adapters or {})
    primary = find_adapter_dir(model_or_run)
    if primary is None and adapters:
        # A plain base plus adapters: load the first adapter as the primary, same base checked below.
        first_name, first_path = next(iter(adapters.items()))
        first_dir, first_meta = adapter_meta(first_path)
        if resolve_model(first_meta["base_model"]) != resolve_model(model_or_run):
            raise ExportError(
                f"--adapter {first_name} was trained on {first_meta['base_model']}, not {model_or_run}"
            )
        adapters.pop(first_name)
        model, tokenizer, meta = load_for_inference(first_dir, device)
        primary_name = first_name
    else:
        model, tokenizer, meta = load_for_inference(model_or_run, device)
        run_path = Path(model_or_run)
        primary_name = (
            (run_path.parent.name if run_path.name == ADAPTER_DIR else run_path.name) if primary else None
        )
    base_name = str(meta["base_model"])
    names: dict[str, dict[str, Any]] = {}
    peft_model = hasattr(model, "load_adapter") and hasattr(model, "disable_adapter")
    names[base_name] = {"adapter": None, "template": None, "system": None}
    if meta.get("adapter") is not None:
        names[primary_name or "adapter"] = {
            "adapter": "default" if peft_model else None,
            "template": meta.get("chat_template"),
            "system": meta.get("system_prompt"),
        }
        if not peft_model:  # full fine-tune: the weights are the model, there is no separate base
            names.pop(base_name)
    for i, (name, path) in enumerate(adapters.items()):
        peft_name = f"adapter{i + 1}"  # PEFT names become module keys: no dots or dashes
        names[name] = load_extra_adapter(model, peft_model, meta, name, path, peft_name)
    model.eval()
    weight_layout = choose_layout(model, layout)
    default = primary_name if primary_name in names else next(iter(names))
    context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    return Served(
        model=model,
        tokenizer=tokenizer,
        names=names,
        default=default,
        context=context,
        meta=meta,
        weight_layout=weight_layout,
    )


def load_extra_adapter(
    model: Any, peft_model: bool, meta: dict[str, Any], name: str, path: str, peft_name: str
) -> dict[str, Any]:
    """Load one more adapter onto the served PEFT model, if it was trained on the same base and surgery."""
    from smolora.model.lineage import check_lineage
    from smolora.model.load import pickle_allowed_by_env, unsafe_pickle_error, weights_format
    from smolora.model.store import resolve_model

    adapter_dir, extra = adapter_meta(path)
    if not peft_model or not (adapter_dir / "adapter_config.json").exists():
        raise ExportError(f"--adapter {name}: only LoRA-style adapters can share a base (not full weights)")
    base_name = str(meta["base_model"])
    same_base = resolve_model(extra["base_model"]) == resolve_model(base_name)
    same_surgery = (extra.get("drop_layers") or [], extra.get("keep_layers")) == (
        meta.get("drop_layers") or [],
        meta.get("keep_layers"),
    )
    if not (same_base and same_surgery):
        raise ExportError(
            f"--adapter {name}: trained on {extra['base_model']} (layer surgery "
            f"{extra.get('drop_layers')}/{extra.get('keep_layers')}), but the served base is {base_name} "
            f"({meta.get('drop_layers')}/{meta.get('keep_layers')}); serve it in its own process"
        )
    weights_format(adapter_dir, pickle_allowed_by_env(), "adapter")  # a pickle only with the opt-in
    # another base than it was trained on: warn, or under serve --strict refuse (a 400 when hot-loaded)
    check_lineage(AdapterMeta.from_dict(extra), adapter_dir, resolve_model(base_name))
    try:
        model.load_adapter(str(adapter_dir), adapter_name=peft_name)
    except pickle.UnpicklingError as e:
        raise unsafe_pickle_error(adapter_dir, e) from None
    return {
        "adapter": peft_name,
        "template": extra.get("chat_template"),
        "system": extra.get("system_prompt"),
    }
