"""One typed description of a run: model, data, lora, train, eval, output.

Files are YAML or JSON. `extends: base.yaml` (or the seeds' `_extends:`) inherits from
another file, resolved relative to the including file; `--set train.lr=1e-4` overrides
any key. Validation lists every problem at once, with its field path, before any model
is loaded.

Run as:
    cfg = load_config("examples/quickstart.yaml", ["train.max_steps=20"])
    print(cfg.train.lr)
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from smolora.config_objective import ObjectiveFields
from smolora.config_problems import problems_message, validation_problems
from smolora.config_read import plain, read_file
from smolora.errors import ConfigError, excerpt


class Section(BaseModel):
    # Unknown keys are mistakes (a typo silently ignored costs a whole run); so are .inf and .nan
    # (an infinite number of epochs never ends).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSection(Section):
    name: str = Field("smollm2-135m", description="Alias, local HF directory, .gguf file or hub id.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on capable CUDA and for LoRA training on bf16 CPUs, else float32."
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    load_in_4bit: bool = Field(False, description="QLoRA 4-bit (bitsandbytes, CUDA only).")
    load_in_8bit: bool = Field(False, description="8-bit base (bitsandbytes, CUDA only).")
    gradient_checkpointing: bool = False
    attn_implementation: str | None = Field(None, description="eager, sdpa or flash_attention_2.")
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped with a hub model (modeling_*.py); off unless you trust it.",
    )
    allow_pickle: bool = Field(
        False,
        description="Load .bin/.pt pickle weights, with torch weights_only=True; off by default "
        "(safetensors only).",
    )
    backend: Literal["hf", "unsloth"] = Field(
        "hf",
        description="hf: transformers + PEFT. unsloth: load and add LoRA through unsloth.FastLanguageModel "
        "(CUDA only, `pip install unsloth`; lora/rslora methods only).",
    )
    drop_layers: list[int] = Field(default_factory=list, description="Decoder layers removed before LoRA.")
    keep_layers: int | None = Field(None, ge=1, description="Keep only the first N decoder layers.")
    adapter: str | None = Field(
        None,
        description="Continue this run's adapter (a run directory or its adapter/), e.g. a DPO run "
        "starting from an SFT run; its base model and layer surgery must match this config's.",
    )

    @model_validator(mode="after")
    def _one_quantization(self) -> ModelSection:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are exclusive: pick one")
        if any(i < 0 for i in self.drop_layers):
            raise ValueError("drop_layers holds layer indices, which start at 0")
        return self


class DataSection(Section):
    path: str | list[str] | None = Field(
        None, description="A file, a list of files, a glob or a dataset dir."
    )
    val_path: str | list[str] | None = Field(None, description="Separate validation file(s).")
    format: Literal["auto", "text", "alpaca", "qa", "sharegpt", "messages"] = "auto"
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Map our roles to your columns: prompt, input, response, text, messages, system, domain.",
    )
    template: str | None = Field(
        None, description="Combine several columns into the prompt: '{title}: {body}'."
    )
    system_prompt: str | None = None
    max_length: int = Field(512, ge=8)
    val_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    train_on: Literal["completion", "all"] = Field("completion", description="completion: mask the prompt.")
    text_mode: Literal["whole", "lines"] = Field(
        "whole", description="txt files: one record, or one per line."
    )
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared by consecutive windows of long text.")
    clean: bool = True
    dedupe: bool = True
    domain: bool = Field(True, description="Turn a 'domain' field into a tag in the prompt (seed 002).")
    max_examples: int | None = Field(None, ge=1)
    split: str = Field("train", description="Split name for hub datasets and saved DatasetDicts.")
    streaming: bool = Field(
        False, description="Read and tokenize on the fly, for data larger than RAM; needs train.max_steps."
    )
    num_proc: int | None = Field(None, ge=1, description="Worker processes for tokenizing (datasets.map).")
    task: Literal["sft", "memorize"] = Field(
        "sft",
        description="memorize: knowledge injection. Every row is trained on (no validation split taken "
        "from the facts) and training stops once the facts are recalled (greedy exact match on a sample "
        "of training rows).",
    )


# The keys of smolora.model.adapters.METHODS, spelled out so the config never imports the model
# code (torch); tests/test_config.py checks the two agree.
MethodName = Literal["lora", "rslora", "dora", "pissa", "olora", "full", "freeze"]


class LoraSection(Section):
    method: MethodName = Field(
        "lora",
        description="A key of smolora.model.adapters.METHODS: lora, rslora, dora, pissa, olora, full, freeze.",
    )
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: Literal["auto", "all-linear"] | list[str] = Field(
        "auto", description="auto: the decoder blocks' linear layers (never the lm head)."
    )
    plus_ratio: float | None = Field(None, gt=0, description="LoRA+: lr of B = ratio x lr of A.")
    freeze_last_n: int | None = Field(None, ge=1, description="freeze method: train only the last N layers.")
    trainable_modules: list[str] = Field(default_factory=list, description="freeze method: named modules.")

    @field_validator("method", mode="before")
    @classmethod
    def _known_method(cls, v: Any) -> Any:
        # Before the Literal check, so a typo gets a did-you-mean rather than pydantic's list.
        if not isinstance(v, str):
            raise PydanticCustomError("string_type", "Input should be a valid string")
        names = list(get_args(MethodName))
        if v not in names:
            close = difflib.get_close_matches(v, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown method{hint}; known: {', '.join(names)}")
        return v


class TrainSection(ObjectiveFields, Section):
    epochs: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="auto: picked from the data size (train/schedule.py); the log says why."
    )
    max_steps: int | None = Field(None, ge=1, description="Overrides epochs when set.")
    lr: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="auto: picked from the method, the model size and the LoRA scale."
    )
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    seed: int = 42
    save_every: int = Field(100, ge=1, description="Checkpoint every N optimizer steps.")
    keep_checkpoints: int = Field(2, ge=1)
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0)
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    optimizer: str = "adamw_torch"
    log_every: int = Field(1, ge=1)
    eval_every: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto",
        description="Evaluate every N steps; auto: about 8 times per run; null: only at the end.",
    )
    patience: int = Field(
        3, ge=0, description="Stop after this many evaluations without a better result (0: never early)."
    )
    report_to: list[str] = Field(default_factory=list, description="tensorboard, mlflow, wandb.")
    batching: Literal["auto", "bucketed", "grouped", "packed", "padded"] = Field(
        "auto",
        description="auto: bucketed (rows of equal length batched together) unless CUDA flash-attention "
        "allows packed (padding-free, position_ids); grouped = transformers' LengthGroupedSampler; "
        "padded = random order.",
    )
    loss_chunk: int = Field(1024, ge=16, description="Most label positions per lm-head chunk (<= 24 MiB).")
    micro_batch: int | None = Field(
        None, ge=1, description="Rows per forward/backward pass (memory); the gradient is the whole batch's."
    )
    saved_activations: Literal["float32", "bf16"] = Field(
        "float32", description="bf16: what the layers save for backward is kept in bf16 (half the memory)."
    )
    threads: int | None = Field(None, ge=1, description="CPU threads (default: physical cores).")
    compile: bool = Field(
        False, description="torch.compile the decoder layers (fuses element-wise ops; slow first steps)."
    )
    liger: bool = Field(True, description="Use Liger kernels (RMSNorm, RoPE, SwiGLU) on CUDA when installed.")
    fuse_projections: bool | Literal["auto"] = Field(
        "auto",
        description="Compute the LoRA projections that share an input (q, k, v; gate, up) as one group "
        "(model/fused.py; PEFT's own path wherever that would not be exact); auto: only where measured "
        "not slower (not yet anywhere: 0.84-1.0x on a CPU, docs/benchmarks.md).",
    )
    accelerate_config: str | None = Field(
        None, description="accelerate config file (FSDP, DeepSpeed ZeRO, nodes); see examples/accelerate/."
    )

    @field_validator("epochs", "lr", "eval_every", mode="before")
    @classmethod
    def _number_or_auto(cls, v: Any, info) -> Any:
        # Before the union check, so a bad value gets one line instead of one per union member.
        if v == "auto" or (v is None and info.field_name == "eval_every"):
            return v
        whole = info.field_name == "eval_every"
        try:
            if isinstance(v, bool):
                raise ValueError
            number = float(v)
            if whole and number != int(number):
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            kind = "a whole number of steps" if whole else "a number"
            raise ValueError(f"must be {kind} or 'auto'") from None
        if number <= 0 or number != number or number in (float("inf"), float("-inf")):
            raise ValueError("must be above 0 (or 'auto')")
        return int(number) if whole else number

    @field_validator("fuse_projections", mode="before")
    @classmethod
    def _switch_or_auto(cls, v: Any) -> Any:
        # One line for a bad value instead of one per union member.
        if v == "auto" or isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in ("true", "false"):
            return v.strip().lower() == "true"
        raise ValueError("must be true, false or 'auto'")

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in {"tensorboard", "mlflow", "wandb", "none"}]
        if bad:
            raise ValueError(f"unknown tracker(s) {bad}; use tensorboard, mlflow or wandb")
        return [t for t in v if t != "none"]


class EvalSection(Section):
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    num_samples: int = Field(8, ge=0, description="Sample rows shown side by side in the report.")
    max_examples: int | None = Field(200, ge=1, description="Held-out rows used for generation metrics.")
    generate_every: int | None = Field(None, ge=1, description="Log sample generations every N steps.")
    select: Literal["loss", "exact_match", "rouge1", "rougeL", "bleu", "chrf"] = Field(
        "loss",
        description="What picks the best checkpoint: validation loss, or a generation metric on up to "
        "eval.select_examples held-out rows.",
    )
    select_examples: int | None = Field(
        None,
        ge=1,
        description="Rows generated at each evaluation when a generation metric picks the best (eval.select, "
        "or recall under data.task=memorize); default 64 held-out rows, or 300 training rows for memorize.",
    )


class OutputSection(Section):
    dir: str = "runs"
    name: str | None = Field(
        None, description="Run name, one folder name inside output.dir (default: the config file's name)."
    )

    @field_validator("name")
    @classmethod
    def _one_folder(cls, v: str | None) -> str | None:
        # The run directory is output.dir/name and a re-run replaces it: `..` or `a/b` would point
        # that at a folder SmoLoRA does not own (the parent of runs/, a user's data/).
        if v is None:
            return v
        if not v.strip() or v in (".", "..") or any(c in v for c in "/\\\0"):
            raise ValueError(
                "must be one folder name (not empty, '.' or '..'; no '/', '\\' or NUL), e.g. my-run"
            )
        return v


class RunConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="after")
    def _objective_fits(self) -> RunConfig:
        if self.train.objective != "sft" and (self.data.streaming or self.data.task != "sft"):
            what = "data.streaming" if self.data.streaming else f"data.task={self.data.task}"
            raise ValueError(f"train.objective={self.train.objective} works on data read whole: unset {what}")
        t = self.train
        if t.micro_batch is not None and t.objective != "sft":
            raise ValueError(f"train.micro_batch splits sft batches, not {t.objective}: lower batch_size")
        if t.saved_activations == "bf16" and self.model.gradient_checkpointing:
            raise ValueError("train.saved_activations=bf16 or model.gradient_checkpointing: keep one")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir) / (self.output.name or "run")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --- reading files, inheritance, overrides -------------------------------------------------


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_with_extends(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file and everything it extends, child keys winning."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise ConfigError(f"extends cycle: {chain}")
    data = read_file(path)
    parents = data.pop("extends", None) or data.pop("_extends", None)
    if parents is None:
        return data
    parents = [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list) or not all(isinstance(p, str) and p for p in parents):
        raise ConfigError(
            f"{path}: extends must name a config file or a list of them, got {excerpt(repr(parents), 80)}"
        )
    merged: dict[str, Any] = {}
    for parent in parents:
        target = path.parent / parent
        if not target.is_file():
            what = "is not a file" if target.exists() else "does not exist"
            raise ConfigError(f"{path}: extends '{parent}', which {what} ({target})")
        merged = deep_merge(merged, read_with_extends(target, (*_seen, path)))
    return deep_merge(merged, data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=c` pairs; values are parsed as YAML so `3`, `1e-4`, `true`, `[1,2]` get their types."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
        try:
            value = plain(yaml.safe_load(raw), f"--set {item}") if raw.strip() else None
        except (yaml.YAMLError, ValueError, RecursionError):
            value = raw
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in "eE.") else value
            except ValueError:
                pass
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return data


def build_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        problems = validation_problems(e, RunConfig)
        raise ConfigError(problems_message(problems, source), problems) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read, inherit, override and validate. The run name defaults to the config file's stem."""
    data = read_with_extends(path) if path else {}
    data = apply_overrides(data, overrides or [])
    output = data.get("output", {})
    if isinstance(output, dict) and output.get("name") is None:
        # Validated with the rest: a file called `..yaml` must not name the run `.`.
        data = deep_merge(data, {"output": {"name": Path(path).stem if path else "run"}})
    return build_config(data, str(path or "config"))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config; any token or key in it (or taken from the environment) is masked."""
    from smolora.redact import mask_data

    Path(path).write_text(yaml.safe_dump(mask_data(cfg.to_dict()), sort_keys=False), encoding="utf-8")


def config_schema() -> dict[str, Any]:
    return RunConfig.model_json_schema()
