"""`SmoLoRA`: the one-class Python API (seed 000), a thin layer over the same recipe.

Run as:
    from smolora import SmoLoRA
    tuner = SmoLoRA("smollm2-135m", dataset="data.jsonl", output_dir="runs/x", **{"train.epochs": 3})
    run_dir = tuner.train()
    print(tuner.generate(["Write a haiku about rivers", "Name a color"], max_new_tokens=32))
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from smolora.config import apply_overrides, build_config, deep_merge
from smolora.runs import ADAPTER_DIR


class SmoLoRA:
    """Fine-tune `base_model` on `dataset` with sensible defaults; every config key can be overridden.

    Overrides are config keys, dotted (`**{"train.epochs": 3}`) or nested (`train={"epochs": 3}`).
    Before `train()`, `generate()` answers with the base model.
    """

    def __init__(
        self,
        base_model: str = "smollm2-135m",
        dataset: str | list[str] | None = None,
        text_field: str | None = None,
        output_dir: str | None = None,
        **overrides: Any,
    ):
        data: dict[str, Any] = {"model": {"name": base_model}}
        if dataset is not None:
            data["data"] = {"path": dataset}
        if text_field:
            data.setdefault("data", {})["fields"] = {"text": text_field}
        if output_dir:
            out = Path(output_dir)
            if out.name in ("", ".", ".."):  # "." or "out/..": the folder it names, by its own name
                out = out.resolve()
            data["output"] = {"dir": str(out.parent), "name": out.name}
        nested = {k: v for k, v in overrides.items() if isinstance(v, dict)}
        dotted = [f"{k}={_yaml(v)}" for k, v in overrides.items() if not isinstance(v, dict)]
        data = apply_overrides(deep_merge(data, nested), dotted)
        self.config = build_config(data, "SmoLoRA(...)")
        if self.config.output.name is None:
            self.config.output.name = "smolora-run"
        self.run_dir: Path | None = None
        self.model: Any = None
        self.tokenizer: Any = None

    def train(self, resume: bool = False) -> Path:
        """Fine-tune and return the run directory; the fine-tuned model is then used by generate()."""
        from smolora.train.recipe import train

        if self.config.data.path is None:
            from smolora.errors import ConfigError

            raise ConfigError("SmoLoRA(dataset=...) is needed to train: a file, a list of files or a glob")
        self.run_dir = train(self.config, resume=resume, show_progress=True)
        self.load_model(self.run_dir)
        return self.run_dir

    def load_model(self, path: str | Path) -> SmoLoRA:
        """Load a run directory, an adapter directory or a model name for generation."""
        from smolora.model.load import load_for_inference

        self.model, self.tokenizer, self.meta = load_for_inference(
            path, allow_pickle=self.config.model.allow_pickle or None
        )
        return self

    def save(self, path: str | Path) -> Path:
        """Copy the trained adapter (PEFT format + smolora.json) to `path`."""
        if self.run_dir is None:
            raise RuntimeError("nothing to save yet: call train() first")
        dest = Path(path)
        shutil.copytree(self.run_dir / ADAPTER_DIR, dest, dirs_exist_ok=True)
        return dest

    def generate(self, prompt: str | list[str], max_new_tokens: int = 128, **kwargs: Any) -> str | list[str]:
        """A string in, a string out; a list in, a list out (batched).

        `kwargs` go to `smolora.generate.generate`: do_sample, temperature, top_p, batch_size,
        domain, system_prompt (default: the config's data.system_prompt), stop.
        """
        from smolora.generate import generate

        if self.model is None:
            self.load_model(self.config.model.name)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        kwargs.setdefault("system_prompt", self.config.data.system_prompt)
        outputs = generate(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens, **kwargs)
        return outputs[0] if isinstance(prompt, str) else outputs


def _yaml(value: Any) -> str:
    import json

    return json.dumps(value) if not isinstance(value, str) else value
