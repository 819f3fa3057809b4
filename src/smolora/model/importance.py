"""Layer importance: which decoder layers can go before fine-tuning (for `model.drop_layers`).

Two measures per layer, on a few held-out rows:

- **loss when dropped**: the held-out loss (on the tokens training would learn: the
  answers) with that one layer skipped, every other layer in place. The increase over
  the full model is the layer's cost; a layer whose removal barely moves the loss is a
  candidate for `model.drop_layers`. The layers before the dropped one are not run again:
  their output is recorded once and replayed, which halves the work.
- **block influence** (ShortGPT, Men et al. 2024): 1 - mean cosine similarity of the
  layer's input and output hidden states. Near 0: the layer hardly changes the residual
  stream. Cheap (one pass), but blind to what the change does to the loss.

The suggestion drops the layers with the smallest loss increase until `target_layers`
remain, then measures the loss with all of them dropped together (single-layer costs do
not simply add up).

Run as:
    smolora layers importance smollm2-135m --data examples/data/quickstart_eval.jsonl --target-layers 27
    result = layer_importance(model, rows, pad_id=tokenizer.pad_token_id)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smolora.config import DataSection
from smolora.data.collate import pad_batch
from smolora.errors import DatasetError
from smolora.model.loss import chunked_lm_loss
from smolora.model.surgery import PER_LAYER_CONFIG, decoder_layers, decoder_owner


def importance_rows(path: str, tokenizer: Any, max_rows: int = 32, max_length: int = 256) -> list[dict]:
    """Tokenized rows with labels on the answers, as training would see them (first `max_rows`)."""
    from smolora.data.encode import load_examples
    from smolora.data.render import IGNORE, encode_examples

    data = DataSection(path=path, max_length=max_length)
    examples, *_ = load_examples(path, data)
    per_example, _ = encode_examples(examples[: max_rows * 2], tokenizer, max_length, data.train_on)
    rows = [r for rs in per_example for r in rs if any(t != IGNORE for t in r["labels"])][:max_rows]
    if not rows:
        raise DatasetError(f"{path}: no row with a trainable token; raise --max-length")
    return rows


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _skip(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    """Forward hook: the layer's output becomes its input, as if the layer were not there."""
    h = _hidden(args, kwargs)
    return h if isinstance(output, torch.Tensor) else (h, *output[1:])


@torch.no_grad()
def held_out_loss(
    model: nn.Module, rows: list[dict], pad_id: int, batch_size: int = 8, skip: list[int] = ()
) -> float:
    """Mean token loss over the labelled positions of `rows`, with layers `skip` bypassed."""
    layers = decoder_layers(model)
    handles = [layers[i].register_forward_hook(_skip, with_kwargs=True) for i in skip]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(rows), batch_size):
            batch = pad_batch(rows[start : start + batch_size], pad_id)
            s, n = chunked_lm_loss(
                model,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                batch["labels"].to(device),
            )
            total, count = total + float(s), count + n
    finally:
        for h in handles:
            h.remove()
    return total / max(count, 1)


class _Replay(nn.Module):
    """Stands in for layers 0..i-1 at once: returns the hidden states they produced before.

    Dropping layer i leaves everything before it unchanged, so those layers need not run
    again: the model runs [replay, layer i+1, ..., last]. That halves the work of trying
    every layer (sum of L-1-i layers instead of L x L).
    """

    def __init__(self, like: nn.Module, as_tuple: bool):
        super().__init__()
        self.value: torch.Tensor | None = None
        self.as_tuple = as_tuple
        # Gemma 3 / Qwen2 pick the attention mask and rotary table by the layer's type.
        if hasattr(like, "attention_type"):
            self.attention_type = like.attention_type

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return (self.value,) if self.as_tuple else self.value


def _record_pass(model: nn.Module, batches: list[dict]) -> dict[str, Any]:
    """One pass of the full model: loss, every layer's input per batch, and block influence."""
    layers = decoder_layers(model)
    inputs: list[list[torch.Tensor]] = [[] for _ in layers]
    cos_sums = [0.0] * len(layers)
    state: dict[str, Any] = {"mask": None, "tuple": False}

    def hook(i: int) -> Callable:
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            h_in = _hidden(args, kwargs)
            out = output if isinstance(output, torch.Tensor) else output[0]
            state["tuple"] = not isinstance(output, torch.Tensor)
            inputs[i].append(h_in.detach().clone())
            cos = torch.nn.functional.cosine_similarity(h_in.float(), out.float(), dim=-1)
            cos_sums[i] += float(cos[state["mask"]].sum())

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    total, count, tokens = 0.0, 0, 0
    try:
        for batch in batches:
            state["mask"] = batch["attention_mask"].bool()
            tokens += int(state["mask"].sum())
            s, n = chunked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            total, count = total + float(s), count + n
    finally:
        for h in handles:
            h.remove()
    return {
        "loss": total / max(count, 1),
        "inputs": inputs,
        "block_influence": [1.0 - c / max(tokens, 1) for c in cos_sums],
        "as_tuple": state["tuple"],
    }


def _loss_without(model: nn.Module, i: int, batches: list[dict], recorded: dict[str, Any]) -> float:
    """Held-out loss with layer i dropped, starting from the recorded input of layer i."""
    owner = decoder_owner(model)
    layers, config = owner.layers, owner.config
    replay = _Replay(layers[i], recorded["as_tuple"])
    owner.layers = nn.ModuleList([replay, *layers[i + 1 :]])
    # Qwen2 and Gemma 3 read each layer's attention type from the config by position; the
    # replay stands at position 0 with layer i's type, the rest follow.
    saved = {a: getattr(config, a) for a in ("num_hidden_layers", *PER_LAYER_CONFIG) if hasattr(config, a)}
    config.num_hidden_layers = len(owner.layers)
    for attr in PER_LAYER_CONFIG:
        if isinstance(saved.get(attr), list) and len(saved[attr]) == len(layers):
            setattr(config, attr, saved[attr][i:])
    total, count = 0.0, 0
    try:
        for b, batch in enumerate(batches):
            replay.value = recorded["inputs"][i][b]
            s, n = chunked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            total, count = total + float(s), count + n
    finally:
        owner.layers = layers
        for attr, value in saved.items():
            setattr(config, attr, value)
    return total / max(count, 1)


@torch.no_grad()
def layer_importance(
    model: nn.Module,
    rows: list[dict],
    pad_id: int,
    batch_size: int = 8,
    on_layer: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Baseline loss, and per layer: loss when dropped, its increase, block influence, rank."""
    model.eval()
    device = next(model.parameters()).device
    batches = [
        {k: v.to(device) for k, v in pad_batch(rows[i : i + batch_size], pad_id).items()}
        for i in range(0, len(rows), batch_size)
    ]
    recorded = _record_pass(model, batches)
    baseline = recorded["loss"]
    n = len(recorded["inputs"])
    layers = []
    for i in range(n):
        loss = _loss_without(model, i, batches, recorded)
        recorded["inputs"][i] = []  # no longer needed: free it as we go
        layers.append(
            {
                "layer": i,
                "loss": loss,
                "delta": loss - baseline,
                "block_influence": recorded["block_influence"][i],
            }
        )
        if on_layer:
            on_layer(i + 1, n)
    for rank, row in enumerate(sorted(layers, key=lambda r: r["delta"]), 1):
        row["rank"] = rank  # 1 = least important: the first to drop
    return {"baseline": baseline, "rows": len(rows), "n_layers": n, "layers": layers}


def suggest_drop(result: dict[str, Any], target_layers: int) -> list[int]:
    """The layers to drop so `target_layers` remain: the smallest loss increases first."""
    n_drop = result["n_layers"] - target_layers
    if target_layers < 1 or n_drop < 0:
        raise DatasetError(f"--target-layers must be between 1 and {result['n_layers']}, got {target_layers}")
    ranked = sorted(result["layers"], key=lambda r: r["delta"])
    return sorted(r["layer"] for r in ranked[:n_drop])


def plot_importance(
    result: dict[str, Any], path: str | Path, suggested: list[int], title: str = "layer importance"
) -> Path:
    """Two bar charts (loss increase when dropped, block influence); suggested drops in orange."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    layers = result["layers"]
    xs = [r["layer"] for r in layers]
    colors = ["tab:orange" if r["layer"] in suggested else "tab:blue" for r in layers]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.35 * len(xs) + 2), 6), sharex=True)
    top.bar(xs, [r["delta"] for r in layers], color=colors)
    top.set_ylabel("loss increase when dropped")
    top.set_title(
        f"{title}: baseline loss {result['baseline']:.3f} on {result['rows']} rows "
        f"(orange: suggested drop_layers {suggested})",
        fontsize=9,
    )
    top.axhline(0, color="black", linewidth=0.5)
    for r in layers:
        if r["layer"] in suggested:
            top.annotate("drop", (r["layer"], max(r["delta"], 0)), ha="center", va="bottom", fontsize=7)
    bottom.bar(xs, [r["block_influence"] for r in layers], color=colors)
    bottom.set_ylabel("block influence\n(1 - cos(in, out))")
    bottom.set_xlabel("decoder layer")
    bottom.set_xticks(xs)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(result, indent=2))
    return path
