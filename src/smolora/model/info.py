"""`smolora models info`: manifest, architecture and parameter count of a model, no weights loaded.

Run as:
    info = model_info("smollm2-135m")
    print(info["architecture"], info["parameters"], info["disk"])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smolora.model.entries import store_entry
from smolora.model.store import dir_size, read_manifest


def model_info(name: str) -> dict[str, Any]:
    """Manifest, architecture and parameter count of a store entry or any local HF directory."""
    path = Path(name).expanduser()
    model_dir = path if path.is_dir() and (path / "config.json").exists() else store_entry(name)
    config = (
        json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").exists() else {}
    )
    text = config.get("text_config") or config
    return {
        "name": model_dir.name,
        "path": model_dir,
        "manifest": read_manifest(model_dir),
        "architecture": (config.get("architectures") or [config.get("model_type", "?")])[0],
        "layers": text.get("num_hidden_layers"),
        "hidden_size": text.get("hidden_size"),
        "vocab_size": text.get("vocab_size"),
        "context": text.get("max_position_embeddings"),
        "dtype": config.get("dtype") or config.get("torch_dtype"),
        "parameters": count_parameters(model_dir),
        "disk": dir_size(model_dir),
    }


def count_parameters(model_dir: Path) -> int | None:
    """Parameters from the safetensors headers alone (no weights are read)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                n = 1
                for dim in st.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total
