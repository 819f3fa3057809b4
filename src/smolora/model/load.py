"""Load a base model for training or a fine-tuned one for inference.

Device: CUDA, then MPS, then CPU. Dtype: model/precision.py's choice for `model.dtype: auto`
(bf16 on CUDA that supports it, and for training on CPUs with native bf16; else float32).
Layer surgery is applied before any adapter.

Weights load from safetensors only. A directory holding only pickle weights
(`pytorch_model.bin`, `adapter_model.bin`, `*.pt`) is refused unless the user opts in
(`model.allow_pickle=true`, `--allow-pickle`, or `SMOLORA_ALLOW_PICKLE=1` for commands that
take no config), and even then torch reads it with `weights_only=True`: tensors, never code.

Run as:
    model, tokenizer = load_base(cfg.model)
    model, tokenizer, meta = load_for_inference("runs/quickstart")
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from smolora.config import ModelSection
from smolora.errors import ModelError
from smolora.model.lineage import check_lineage
from smolora.model.precision import choose_dtype
from smolora.model.store import resolve_model
from smolora.model.surgery import apply_surgery, decoder_layers, surgery_summary
from smolora.runs import ADAPTER_DIR, ADAPTER_META, CHECKPOINTS_DIR, CONFIG_FILE, find_adapter_dir, read_meta

# The weight files transformers looks for in a local directory, in its order.
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
log = logging.getLogger("smolora")


def pickle_allowed_by_env() -> bool:
    """SMOLORA_ALLOW_PICKLE=1: the opt-in for commands that take a run but no config (serve, eval, ui)."""
    return os.environ.get("SMOLORA_ALLOW_PICKLE", "").strip().lower() in ("1", "true", "yes")


def weights_files(model_dir: Path, what: str = "model") -> list[Path]:
    """The weight files transformers (a model) or PEFT (an adapter) will actually read from `model_dir`.

    Mirrors their own choice, so the pickle check looks at what gets loaded, not at what else
    lies beside it: PEFT takes adapter_model.safetensors, else adapter_model.bin; transformers
    takes config.json's `transformers_weights` when set, else model.safetensors, then the sharded
    index (whose shards are read by their own suffix), and pytorch_model.bin only when told that
    safetensors are not wanted. Empty when none of them is there.
    """
    if what == "adapter":
        for name in ("adapter_model.safetensors", "adapter_model.bin"):
            if (model_dir / name).exists():  # os.path.exists, as PEFT checks
                return [model_dir / name]
        return []
    explicit = _explicit_weights(model_dir)
    names = [explicit] if explicit else [*SAFE_WEIGHTS, *PICKLE_WEIGHTS]
    for name in names:
        f = model_dir / name
        if f.is_file():
            return _index_shards(f) if name.endswith(".index.json") else [f]
    return []


def _explicit_weights(model_dir: Path) -> str | None:
    """config.json's `transformers_weights`: transformers loads that file whatever else is there."""
    try:
        name = json.loads((model_dir / "config.json").read_text()).get("transformers_weights")
    except (OSError, ValueError, AttributeError):
        return None  # no config, or one transformers will refuse itself
    return name if isinstance(name, str) and name else None


def _index_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ModelError(f"{index}: not a readable weights index (no weight_map)") from None
    return [index.parent / str(s) for s in shards]


def weights_format(model_dir: Path, allow_pickle: bool, what: str = "model") -> str:
    """'safetensors', or 'pickle' when the weights that will be read are a pickle and the user opted in.

    A pickle can run any code while it is unpickled, so without the opt-in it is refused
    before transformers or PEFT ever open it.
    """
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: no such {what} directory")
    files = weights_files(model_dir, what)
    if not files:
        expected = "adapter_model.safetensors" if what == "adapter" else SAFE_WEIGHTS[0]
        raise ModelError(f"{model_dir}: no {what} weights in this directory (expected {expected})")
    pickles = [f for f in files if not f.name.endswith(".safetensors")]
    if not pickles:
        return "safetensors"
    if not allow_pickle:
        raise ModelError(
            f"{pickles[0]}: {what} weights in pickle format, which can run code when loaded; "
            "convert them to safetensors (load once with transformers and save_pretrained), or, if you "
            "trust the file, pass --set model.allow_pickle=true (run commands: --allow-pickle or "
            "SMOLORA_ALLOW_PICKLE=1); it is then read with torch weights_only=True"
        )
    log.warning(
        "%s: loading pickle weights %s with weights_only=True", model_dir, ", ".join(f.name for f in pickles)
    )
    return "pickle"


def unsafe_pickle_error(path: Path, e: Exception) -> ModelError:
    # torch's weights_only unpickler refused something that is not a tensor: never retry without it.
    # Its message starts with advice to do just that; keep only the line naming what was refused.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    why = next(
        (line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else ""
    )
    return ModelError(
        f"{path}: refused to load: the pickle holds more than tensors ({why[:200]}); loading it could run "
        "code. Get safetensors weights from a source you trust"
    )


def pick_device(pref: str = "auto") -> str:
    if pref != "auto":
        if pref == "cuda" and not torch.cuda.is_available():
            raise ModelError("model.device=cuda but no CUDA device is visible; use model.device=auto")
        return pref
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(pref: str, device: str, training: bool = False) -> torch.dtype:
    """The dtype to load and compute in: `model.dtype` when set, else what the hardware makes pay.

    The one place this is asked (the fast path's bf16 autocast and the Unsloth loader too);
    model/precision.py decides, from the CPU's own flags or the GPU (its reason: precision_line).
    """
    return choose_dtype(pref, device, training=training)[0]


def precision_line(pref: str, device: str, training: bool = True) -> str:
    """'float32 (auto: CPU without native bf16 ...)': what the train log says once, at the start."""
    dtype, why = choose_dtype(pref, device, training=training)
    return f"{str(dtype).removeprefix('torch.')} ({why})"


def physical_cores() -> int:
    """Hyper-threads slow fp32 matmuls down; use one thread per physical core."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except ImportError:
        n = None
    return max(
        1,
        min(
            n or os.cpu_count() or 1,
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 999,
        ),
    )


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    from smolora.data.render import ensure_chat_template

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ensure_chat_template(tokenizer)
    return tokenizer


def quantization_config(cfg: ModelSection, device: str) -> Any:
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        return None
    bits = 4 if cfg.load_in_4bit else 8
    if device != "cuda":
        raise ModelError(
            f"model.load_in_{bits}bit needs a CUDA GPU (bitsandbytes kernels); this machine runs on {device}. "
            "Use plain LoRA instead: --set model.load_in_4bit=false --set model.load_in_8bit=false"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            f"model.load_in_{bits}bit needs the bitsandbytes package: pip install 'bitsandbytes>=0.43' "
            f"(or pip install 'smolora[qlora]'), or train plain LoRA with model.load_in_{bits}bit=false"
        )
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base(cfg: ModelSection, device: str | None = None, training: bool = False):
    """The base model (surgery applied) and its tokenizer, ready for an adapter (`training`: in the
    dtype `auto` means for training, model/precision.py)."""
    from transformers import AutoModelForCausalLM

    device = device or pick_device(cfg.device)
    quant = quantization_config(cfg, device)  # before any conversion or download: fail fast
    path = resolve_model(cfg.name, cfg.revision)
    fmt = weights_format(path, cfg.allow_pickle or pickle_allowed_by_env())
    kwargs: dict[str, Any] = {
        "dtype": pick_dtype(cfg.dtype, device, training),
        "trust_remote_code": cfg.trust_remote_code,
    }
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), use_safetensors=fmt == "safetensors", weights_only=True, **kwargs
        )
    except pickle.UnpicklingError as e:
        raise unsafe_pickle_error(path, e) from None
    except OSError as e:
        raise ModelError(f"{path}: cannot load model ({e}); safetensors weights are required") from None
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise ModelError(
            f"{path}: this model ships its own Python code (auto_map in config.json), which is not run by "
            "default; read that code, then set model.trust_remote_code=true only if you trust it"
        ) from None
    if quant is None:
        model.to(device)
    apply_surgery(model, cfg.drop_layers, cfg.keep_layers)
    tokenizer = load_tokenizer(path)
    # Keep model and tokenizer agreeing on padding, so generate() and Trainer need not guess.
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_for_inference(
    name_or_run: str | Path,
    device: str | None = None,
    allow_pickle: bool | None = None,
    strict: bool | None = None,
):
    """A run dir, adapter dir or model name -> (model, tokenizer, meta), in eval mode.

    For an adapter, its recorded base model and layer surgery are re-applied first, so no
    flag has to be repeated at inference time. `allow_pickle` (default: SMOLORA_ALLOW_PICKLE)
    is never read from the run itself: a downloaded run must not opt itself in. A base whose
    sha256 differs from the one the adapter recorded warns, or refuses under `strict`
    (model/lineage.py); the warning is also returned as meta["lineage_warning"].
    """
    from peft import PeftModel

    if allow_pickle is None:
        allow_pickle = pickle_allowed_by_env()
    adapter_dir = find_adapter_dir(name_or_run)
    if adapter_dir is None:
        p = Path(name_or_run)
        if p.is_dir() and ((p / CHECKPOINTS_DIR).exists() or (p / CONFIG_FILE).exists()):
            raise ModelError(
                f"{p} has no adapter yet (no {p / ADAPTER_DIR / ADAPTER_META}); finish or resume the run: "
                f"smolora train {p / CONFIG_FILE} --resume"
            )
        model, tokenizer = load_base(ModelSection(name=str(name_or_run), allow_pickle=allow_pickle), device)
        model.eval()
        return model, tokenizer, {"base_model": str(name_or_run), "adapter": None}
    meta = read_meta(adapter_dir)
    section = ModelSection(
        name=meta.base_model,
        drop_layers=meta.drop_layers,
        keep_layers=meta.keep_layers,
        allow_pickle=allow_pickle,
    )
    lineage = None  # full / freeze weights are the whole model: there is no base to mismatch
    if not (adapter_dir / "adapter_config.json").exists():
        # full / freeze: the directory holds the whole model, already pruned (its config.json
        # lists the surviving layers), so the surgery is not applied a second time.
        from transformers import AutoModelForCausalLM

        device = device or pick_device()
        fmt = weights_format(adapter_dir, allow_pickle)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(adapter_dir),
                dtype=pick_dtype("auto", device),
                use_safetensors=fmt == "safetensors",
                weights_only=True,
                trust_remote_code=False,
            )
        except pickle.UnpicklingError as e:
            raise unsafe_pickle_error(adapter_dir, e) from None
        model.to(device)
        tokenizer = load_tokenizer(adapter_dir)
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        # PEFT reads adapter_model.safetensors, else adapter_model.bin with weights_only=True.
        weights_format(adapter_dir, allow_pickle, "adapter")
        lineage = check_lineage(meta, adapter_dir, resolve_model(meta.base_model), strict)
        base, tokenizer = load_base(section, device)
        try:
            model = PeftModel.from_pretrained(base, str(adapter_dir))
        except pickle.UnpicklingError as e:
            raise unsafe_pickle_error(adapter_dir, e) from None
        if (adapter_dir / "tokenizer_config.json").exists():
            tokenizer = load_tokenizer(adapter_dir)
    model.eval()
    log.info(
        "loaded %s (%s) on base %s: %d decoder layers (layer surgery: %s)",
        adapter_dir,
        meta.method,
        meta.base_model,
        len(decoder_layers(model)),
        surgery_summary(section.drop_layers, section.keep_layers),
    )
    warned = {"lineage_warning": lineage} if lineage else {}
    return model, tokenizer, {**meta.to_dict(), "adapter": str(adapter_dir), **warned}
