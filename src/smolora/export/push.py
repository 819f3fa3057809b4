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
from pathlib import Path
from typing import Any

import yaml

from smolora.errors import ExportError
from smolora.redact import mask_data, mask_text


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


def masked_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """smolora.json with the system prompt masked (the chat template is code, left as it is)."""
    prompt = meta.get("system_prompt")
    return {**meta, "system_prompt": mask_text(prompt) if isinstance(prompt, str) else prompt}


def masked_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    return mask_data(yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.exists() else {}


def model_card(run_dir: Path, meta: dict[str, Any], repo: str, merged: bool) -> str:
    """README.md for the hub repo: metadata header, what it is, how to use it, config and metrics."""
    base = str(meta.get("base_model", "unknown"))
    base_id = hub_base_id(base)
    method = meta.get("method", "lora")
    header: dict[str, Any] = {
        "library_name": "transformers" if merged or method in ("full", "freeze") else "peft",
        "pipeline_tag": "text-generation",
        "tags": ["smolora", method] + (["merged"] if merged else []),
    }
    if base_id:
        header["base_model"] = base_id
    meta = masked_meta(meta)
    config = masked_config(run_dir)
    lora = config.get("lora", {})
    what = "the merged model (adapter folded into the base weights)" if merged else f"a {method} adapter"
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).strip(),
        "---",
        "",
        f"# {repo.split('/')[-1]}",
        "",
        f"This repository holds {what}, fine-tuned from `{base_id or base}` with "
        f"SmoLoRA ({method}"
        + (
            f", r={lora.get('r')}, alpha={lora.get('alpha')}"
            if lora and method not in ("full", "freeze")
            else ""
        )
        + ").",
    ]
    surgery = [f"dropped layers {meta['drop_layers']}"] if meta.get("drop_layers") else []
    if meta.get("keep_layers"):
        surgery.append(f"kept the first {meta['keep_layers']} layers")
    if surgery:
        lines += ["", f"Layer surgery before training: {', '.join(surgery)}."]
    lines += ["", "## Use it", "", "```python"]
    if merged or method in ("full", "freeze"):
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
    lines += [
        'messages = [{"role": "user", "content": "Hello"}]',
        "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt')",
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:], skip_special_tokens=True))",
        "```",
    ]
    if meta.get("system_prompt"):
        lines += ["", f"Trained with the system prompt: `{meta['system_prompt']}`."]
    metrics_path = run_dir / "eval" / "metrics.json"
    if metrics_path.exists():
        lines += ["", "## Evaluation", "", metrics_table(json.loads(metrics_path.read_text()))]
    parity_path = run_dir / "merged" / "parity.json"
    if merged and parity_path.exists():
        lines += [
            "",
            "## Parity",
            "",
            "The merged weights against the adapter model on held-out prompts:",
            "",
            parity_table(json.loads(parity_path.read_text())),
        ]
    if config:
        lines += [
            "",
            "## Training config",
            "",
            "```yaml",
            yaml.safe_dump(config, sort_keys=False).strip(),
            "```",
        ]
    if meta.get("data_fingerprint"):
        lines += ["", f"Data fingerprint: `{meta['data_fingerprint']}`."]
    return "\n".join(lines) + "\n"


def files_to_push(run: str | Path, merged: bool) -> tuple[Path, Path, dict[str, Any]]:
    """(run dir, folder whose files are uploaded, adapter meta); merges first when asked and needed."""
    from smolora.export.merge import merge_run, run_dir_of
    from smolora.model.load import find_adapter_dir, read_adapter_meta

    adapter_dir = find_adapter_dir(run)
    if adapter_dir is None:
        raise ExportError(f"{run}: no adapter/smolora.json; push a finished run directory")
    run_dir = run_dir_of(run)
    meta = read_adapter_meta(adapter_dir)
    if not merged:
        return run_dir, adapter_dir, meta
    folder = run_dir / "merged"
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

    from smolora.model.load import ADAPTER_META

    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ExportError(f"--repo {repo!r}: use USER/NAME (or ORG/NAME)")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ExportError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it: HF_HUB_OFFLINE=0")
    run_dir, folder, meta = files_to_push(run, merged)
    card = model_card(run_dir, meta, repo, merged)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != "README.md")
    safe_meta = json.dumps(masked_meta(meta), indent=2).encode()
    operations = [
        CommitOperationAdd(
            path_in_repo=p.name, path_or_fileobj=safe_meta if p.name == ADAPTER_META else str(p)
        )
        for p in files
    ]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    if (run_dir / "config.yaml").exists():
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
