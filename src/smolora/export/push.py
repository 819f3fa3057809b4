"""Publish a run to a Hugging Face Hub repo: the adapter, or the merged model, with a model card.

The card is written from the run itself: base model, method and LoRA settings, the resolved
training config, the eval metrics (`eval/metrics.json`, when `smolora eval` ran) and, for a
merged model, the parity check. Everything goes up in one commit through `huggingface_hub`
(`create_repo` + `create_commit`), which honours `HF_ENDPOINT` and `HF_TOKEN`. Tokens and keys
are masked in everything uploaded that comes from the config (smolora.json, the config, the
card), as in config.yaml, also for runs saved before smolora.json was masked.

Run as:
    push_run("runs/quickstart", "me/quickstart-lora")                 # the adapter
    push_run("runs/quickstart", "me/quickstart", merged=True)         # merged safetensors
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from smolora.errors import ExportError
from smolora.redact import mask_data, mask_text
from smolora.runs import (
    ADAPTER_DIR,
    ADAPTER_META,
    CONFIG_FILE,
    EVAL_DIR,
    EVAL_METRICS,
    MERGED_DIR,
    PARITY_FILE,
    AdapterMeta,
    find_adapter_dir,
    read_meta,
    run_dir_of,
)


def hub_base_id(base_model: str) -> str | None:
    """The base model's hub id for the card's metadata (None for a local path the hub cannot link)."""
    from smolora.model.store import HUB_IDS

    if base_model in HUB_IDS:
        return HUB_IDS[base_model]
    looks_like_id = base_model.count("/") == 1 and not base_model.startswith((".", "/", "~"))
    return base_model if looks_like_id and not Path(base_model).exists() else None


def metrics_table(metrics: dict[str, Any]) -> str:
    rows = ["| metric | base | fine-tuned |", "|---|---|---|"]
    for name, value in metrics.get("fine_tuned", {}).items():
        base = metrics.get("base", {}).get(name)
        rows.append(
            f"| {name} | {base:.3f} | {value:.3f} |" if base is not None else f"| {name} | | {value:.3f} |"
        )
    return "\n".join(rows) + f"\n\nOn {metrics.get('n', '?')} held-out examples (`smolora eval`)."


def parity_table(parity: dict[str, Any]) -> str:
    rows = [
        "| check | greedy match | token agreement | max logit diff | perplexity diff |",
        "|---|---|---|---|---|",
    ]
    for name, c in parity.get("checks", {}).items():
        rows.append(
            f"| {name} | {c['greedy_match']:.0%} | {c['token_agreement']:.1%} | "
            f"{c['max_logit_diff']:.2g} | {c['ppl_rel_diff']:.2%} |"
        )
    return "\n".join(rows)


def masked_meta(meta: AdapterMeta) -> AdapterMeta:
    """smolora.json with the system prompt masked (the chat template is code, left as it is)."""
    prompt = meta.system_prompt
    return replace(meta, system_prompt=mask_text(prompt) if isinstance(prompt, str) else prompt)


def masked_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_FILE
    return mask_data(yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.exists() else {}


def whole_model(method: str, merged: bool) -> bool:
    """Whether the repo holds a whole model (transformers loads it) rather than an adapter (PEFT)."""
    return merged or method in ("full", "freeze")


def card_header(meta: AdapterMeta, base_id: str | None, merged: bool) -> list[str]:
    """The YAML front matter the hub reads: library, pipeline, tags, base model."""
    method = meta.method
    header: dict[str, Any] = {
        "library_name": "transformers" if whole_model(method, merged) else "peft",
        "pipeline_tag": "text-generation",
        "tags": ["smolora", method] + (["merged"] if merged else []),
    }
    if base_id:
        header["base_model"] = base_id
    return ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---"]


def card_intro(meta: AdapterMeta, base: str, repo: str, lora: dict[str, Any], merged: bool) -> list[str]:
    """Title and one sentence on what the repo holds and how it was trained."""
    method = meta.method
    what = "the merged model (adapter folded into the base weights)" if merged else f"a {method} adapter"
    settings = (
        f", r={lora.get('r')}, alpha={lora.get('alpha')}" if lora and method not in ("full", "freeze") else ""
    )
    return [
        "",
        f"# {repo.split('/')[-1]}",
        "",
        f"This repository holds {what}, fine-tuned from `{base}` with SmoLoRA ({method}{settings}).",
    ]


def surgery_notes(meta: AdapterMeta) -> list[str]:
    """The layer surgery done before training, in words (empty when there was none)."""
    surgery = [f"dropped layers {meta.drop_layers}"] if meta.drop_layers else []
    if meta.keep_layers:
        surgery.append(f"kept the first {meta.keep_layers} layers")
    return surgery


def card_usage(repo: str, method: str, merged: bool, surgery: list[str]) -> list[str]:
    """A Python snippet that loads the repo and generates one answer."""
    lines = ["", "## Use it", "", "```python"]
    if whole_model(method, merged):
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
        ]
    else:
        lines += [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
        ]
        if surgery:
            lines.append("# layer surgery: load with `smolora chat` (it re-applies it) or merge first")
    return lines + [
        'messages = [{"role": "user", "content": "Hello"}]',
        "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt')",
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:], skip_special_tokens=True))",
        "```",
    ]


def card_results(run_dir: Path, merged: bool) -> list[str]:
    """The eval metrics (when `smolora eval` ran) and, for a merged model, its parity check."""
    lines: list[str] = []
    metrics_path = run_dir / EVAL_DIR / EVAL_METRICS
    if metrics_path.exists():
        lines += ["", "## Evaluation", "", metrics_table(json.loads(metrics_path.read_text()))]
    parity_path = run_dir / MERGED_DIR / PARITY_FILE
    if merged and parity_path.exists():
        lines += [
            "",
            "## Parity",
            "",
            "The merged weights against the adapter model on held-out prompts:",
            "",
            parity_table(json.loads(parity_path.read_text())),
        ]
    return lines


def model_card(run_dir: Path, meta: AdapterMeta, repo: str, merged: bool) -> str:
    """README.md for the hub repo: metadata header, what it is, how to use it, config and metrics."""
    base = str(meta.base_model)
    base_id = hub_base_id(base)
    meta = masked_meta(meta)
    config = masked_config(run_dir)
    lines = card_header(meta, base_id, merged) + card_intro(
        meta, base_id or base, repo, config.get("lora", {}), merged
    )
    surgery = surgery_notes(meta)
    if surgery:
        lines += ["", f"Layer surgery before training: {', '.join(surgery)}."]
    lines += card_usage(repo, meta.method, merged, surgery)
    if meta.system_prompt:
        lines += ["", f"Trained with the system prompt: `{meta.system_prompt}`."]
    lines += card_results(run_dir, merged)
    if config:
        lines += [
            "",
            "## Training config",
            "",
            "```yaml",
            yaml.safe_dump(config, sort_keys=False).strip(),
            "```",
        ]
    if meta.data_fingerprint:
        lines += ["", f"Data fingerprint: `{meta.data_fingerprint}`."]
    return "\n".join(lines) + "\n"


def files_to_push(run: str | Path, merged: bool) -> tuple[Path, Path, AdapterMeta]:
    """(run dir, folder whose files are uploaded, adapter meta); merges first when asked and needed."""
    from smolora.export.merge import merge_run

    adapter_dir = find_adapter_dir(run)
    if adapter_dir is None:
        raise ExportError(f"{run}: no {ADAPTER_DIR}/{ADAPTER_META}; push a finished run directory")
    run_dir = run_dir_of(run)
    meta = read_meta(adapter_dir)
    if not merged:
        return run_dir, adapter_dir, meta
    folder = run_dir / MERGED_DIR
    if not (folder / "config.json").exists():
        merge_run(run_dir, folder)
    return run_dir, folder, meta


def push_run(
    run: str | Path,
    repo: str,
    merged: bool = False,
    private: bool = False,
    token: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """Create (or reuse) `repo` and upload the adapter or merged model plus README.md in one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ExportError(f"--repo {repo!r}: use USER/NAME (or ORG/NAME)")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ExportError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it: HF_HUB_OFFLINE=0")
    run_dir, folder, meta = files_to_push(run, merged)
    card = model_card(run_dir, meta, repo, merged)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != "README.md")
    safe_meta = json.dumps(masked_meta(meta).to_dict(), indent=2).encode()
    operations = [
        CommitOperationAdd(
            path_in_repo=p.name, path_or_fileobj=safe_meta if p.name == ADAPTER_META else str(p)
        )
        for p in files
    ]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    if (run_dir / CONFIG_FILE).exists():
        config = yaml.safe_dump(masked_config(run_dir), sort_keys=False).encode()
        operations.append(CommitOperationAdd(path_in_repo="smolora_config.yaml", path_or_fileobj=config))
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo, private=private, exist_ok=True)
        commit = api.create_commit(
            repo,
            operations,
            commit_message=message
            or f"SmoLoRA: upload {'merged model' if merged else 'adapter'} from {run_dir.name}",
        )
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        hint = "check the token (HF_TOKEN or `hf auth login`) and that it may write to this namespace"
        raise ExportError(f"the hub refused the upload (HTTP {status}: {e}); {hint}") from None
    except (OSError, ValueError) as e:  # no token, no network, a malformed card
        raise ExportError(f"cannot push to {repo}: {e}") from None
    return {
        "url": str(url),
        "commit": commit.oid,
        "commit_url": commit.commit_url,
        "files": [op.path_in_repo for op in operations],
    }
