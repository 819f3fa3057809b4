"""Adapter arithmetic (export/combine.py): two tiny runs combined into a new run that plain PEFT loads,
equal to PEFT's own add_weighted_adapter; every refusal; eval scores the parents on the same rows."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from helpers import smolora_main


def second_run(tiny_run, root):
    """A second run of the same base: the tiny run copied, its LoRA weights changed (no second training)."""
    from safetensors.torch import load_file, save_file

    out = root / "runs" / "second"
    shutil.copytree(tiny_run, out)
    weights = out / "adapter" / "adapter_model.safetensors"
    torch.manual_seed(1)
    tensors = {k: v * -3 + 0.01 * torch.randn_like(v) for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    return out


@pytest.fixture
def parents(tiny_run, tmp_path):
    first = tmp_path / "runs" / "first"
    shutil.copytree(tiny_run, first)
    return first, second_run(tiny_run, tmp_path)


class Result:
    def __init__(self, exit_code: int, output: str):
        self.exit_code, self.output = exit_code, output


def run_cli(*args) -> Result:
    return Result(*smolora_main(*args))


def peft_reference(parents, weights, combine, ids):
    """Logits of PEFT's own add_weighted_adapter on the same parents."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from smolora.runs import read_meta

    base = AutoModelForCausalLM.from_pretrained(read_meta(parents[0] / "adapter").base_model)
    model = PeftModel.from_pretrained(base, str(parents[0] / "adapter"), adapter_name="a")
    model.load_adapter(str(parents[1] / "adapter"), adapter_name="b")
    model.add_weighted_adapter(["a", "b"], weights, "mix", combination_type=combine, density=0.5)
    model.set_adapter("mix")
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("combine", ["linear", "cat", "ties"])
def test_combined_run_loads_in_plain_peft_and_equals_peft(parents, combine):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from smolora.runs import is_marked, read_meta

    result = run_cli("merge", *parents, "--weights", "0.7,0.3", "--combine", combine)
    assert result.exit_code == 0, result.output
    out = parents[0].parent / f"first+second-{combine}"
    assert is_marked(out) and (out / "config.yaml").is_file()
    meta = read_meta(out / "adapter")
    assert meta.extra["combined"]["weights"] == [0.7, 0.3] and meta.extra["combined"]["combine"] == combine
    assert [p["name"] for p in meta.extra["combined"]["parents"]] == ["first", "second"]
    base = AutoModelForCausalLM.from_pretrained(meta.base_model)
    model = PeftModel.from_pretrained(base, str(out / "adapter"))  # plain PEFT, no SmoLoRA
    ids = torch.tensor([[1, 5, 9, 20, 33, 7]])
    with torch.no_grad():
        ours = model(ids).logits
    torch.testing.assert_close(ours, peft_reference(parents, [0.7, 0.3], combine, ids), atol=1e-5, rtol=1e-5)
    rank = json.loads((out / "adapter" / "adapter_config.json").read_text())["r"]
    assert (
        rank
        == (2 if combine == "cat" else 1)
        * json.loads((parents[0] / "adapter" / "adapter_config.json").read_text())["r"]
    )


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "args, change, message",
    [
        (["--weights", "1,2,3"], None, "3 weights for 2 runs"),
        (["--weights", "a,b"], None, "comma-separated numbers"),
        (["--combine", "average"], None, "choose one of linear, cat, svd, ties, dare_ties"),
        (["--combine", "cat", "--density", "0.3"], None, "--density is used by"),
        (["--combine", "ties", "--density", "2"], None, "in (0, 1]"),
        ([], ("smolora.json", {"base_sha256": "a" * 64}), "only adapters of one base"),
        ([], ("smolora.json", {"drop_layers": [1]}), "layer surgery"),
        ([], ("adapter_config.json", {"use_dora": True}), "use_dora"),
        ([], ("adapter_config.json", {"use_rslora": True}), "use_rslora"),
        (["--combine", "linear"], ("adapter_config.json", {"r": 4}), "needs equal ranks"),
    ],
)
def test_refusals(parents, args, change, message):
    if change:
        edit_json(parents[1] / "adapter" / change[0], **change[1])
        if "base_sha256" in change[1]:  # a parent without a hash is judged by its base's name
            edit_json(parents[0] / "adapter" / "smolora.json", base_sha256="b" * 64)
    result = run_cli("merge", *parents, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not list(parents[0].parent.glob("first+second*"))  # nothing left behind


def test_one_run_with_combine_and_full_weights_refused(parents):
    result = run_cli("merge", parents[0], "--combine", "cat")
    assert result.exit_code == 2 and "two or more runs" in result.output
    (parents[1] / "adapter" / "adapter_config.json").unlink()
    result = run_cli("merge", *parents)
    assert result.exit_code == 2 and "only LoRA adapters can be combined" in result.output


def test_out_is_refused_unless_smolora_made_it(parents, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = run_cli("merge", *parents, "--out", foreign)
    assert result.exit_code == 2 and "not a SmoLoRA run" in result.output
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert run_cli("merge", *parents, "--out", parents[0]).exit_code == 2  # never over a parent
    out = tmp_path / "combined"
    assert run_cli("merge", *parents, "--out", out).exit_code == 0
    assert run_cli("merge", *parents, "--out", out, "--combine", "svd").exit_code == 0  # ours: replaced
    assert (tmp_path / "combined.previous").is_dir()


def test_eval_scores_each_parent_on_the_same_rows(parents, tmp_path):
    out = tmp_path / "combined"
    assert run_cli("merge", *parents, "--out", out).exit_code == 0
    result = run_cli("eval", out, "--set", "eval.max_new_tokens=4", "--set", "eval.max_examples=4")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(metrics["against"]) == {"first", "second"}
    assert "eval_loss" in metrics["against"]["first"] and "exact_match" in metrics["against"]["second"]
    assert "against first, second" in result.output
    named = run_cli(
        "eval", out, "--against", parents[0], "--set", "eval.max_new_tokens=4", "--set", "eval.max_examples=4"
    )
    assert named.exit_code == 0, named.output
    assert set(json.loads((out / "eval" / "metrics.json").read_text())["against"]) == {"first"}
    assert run_cli("eval", out, "--against", tmp_path / "nothing").exit_code == 2
