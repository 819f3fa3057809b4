"""Merge, GGUF and Ollama export on a tiny trained run: every artifact reloads and matches the adapter model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from helpers import smolora_main, tiny_config, write_qa
from smolora.errors import ExportError
from smolora.export.gguf import write_gguf
from smolora.export.merge import export_run, judge, merge_run, write_parity
from smolora.export.ollama import modelfile_text, template_parts
from smolora.runs import AdapterMeta


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny matmuls gain nothing from threads, and on a shared 2-core machine extra threads
    # spin against other processes (measured: an export takes 4 s on one thread, 20 s on two).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_tiny(tmp_path_factory, tiny_model_dir, *extra: str):
    """A LoRA run trained for 2 steps on the tiny Llama, as the shared `tiny_run` is, with `extra` settings."""
    from smolora.train.recipe import train

    root = tmp_path_factory.mktemp("export-run")
    data = write_qa(root / "qa.jsonl", 24)
    cfg = tiny_config(tiny_model_dir, data, root, "train.max_steps=2", "train.threads=1", *extra)
    return train(cfg, show_progress=False)


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0]


PROBE = "<|im_start|>user\nWhat is 3 plus one?<|im_end|>\n<|im_start|>assistant\n"


def test_merge_equals_adapter_and_loads_without_smolora(tiny_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from smolora.model.load import load_for_inference

    out = merge_run(tiny_run, tmp_path / "merged")
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["checks"]["merged"]["greedy_match"] == 1.0
    assert parity["checks"]["merged"]["max_logit_diff"] < 1e-5

    adapter_model, tok, _ = load_for_inference(tiny_run, device="cpu")
    merged = AutoModelForCausalLM.from_pretrained(out)
    ids = tok(PROBE, add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(logits(merged, ids), logits(adapter_model, ids), atol=1e-5, rtol=0)
    gen = json.loads((out / "generation_config.json").read_text())
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in (gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]])

    # Plain transformers, in a process that never imports smolora, gives the adapter's greedy tokens.
    with torch.inference_mode():
        expected = adapter_model.generate(
            torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(ids) :].tolist()
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); t = AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"ids = t({PROBE!r}, add_special_tokens=False, return_tensors='pt')['input_ids']\n"
        "out = m.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)\n"
        "assert 'smolora' not in sys.modules\n"
        "print(json.dumps(out[0, ids.shape[1]:].tolist()))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == expected


def test_gguf_f32_reloads_through_transformers_and_matches(tiny_run, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_run(tiny_run, "gguf", "f32", tmp_path / "gguf")
    path = out / "tiny-f32.gguf"
    parity = json.loads((out / "parity.json").read_text())
    check = parity["checks"]["gguf-f32"]
    assert parity["passed"] and check["tokenizer_match"] and check["chat_template_match"]
    assert check["greedy_match"] == 1.0 and check["max_logit_diff"] < 1e-4

    reader = gguf.GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama"
    assert field("tokenizer.ggml.model") == "gpt2" and "<|im_start|>" in field("tokenizer.chat_template")
    assert field("llama.block_count") == 2 and field("llama.attention.head_count_kv") == 2
    names = {t.name for t in reader.tensors}
    assert {
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.1.ffn_down.weight",
        "output_norm.weight",
    } <= names
    assert "output.weight" not in names  # tied embeddings

    # Our own reload: the q/k permutation is undone exactly, logits equal the merged model's.
    merged = AutoModelForCausalLM.from_pretrained(merge_run(tiny_run, tmp_path / "merged"))
    reloaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out, gguf_file=path.name)
    ids = tok(PROBE, add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(logits(reloaded, ids), logits(merged, ids), atol=1e-4, rtol=0)


def test_f16_within_tolerance_and_q8_0_reports_drift(tiny_run, tmp_path):
    f16 = json.loads((export_run(tiny_run, "gguf", "f16", tmp_path / "f16") / "parity.json").read_text())
    assert f16["passed"] and f16["checks"]["gguf-f16"]["broken"] == []
    q8 = export_run(tiny_run, "gguf", "q8_0", tmp_path / "q8")
    check = json.loads((q8 / "parity.json").read_text())["checks"]["gguf-q8_0"]
    assert check["max_logit_diff"] > f16["checks"]["gguf-f16"]["max_logit_diff"] > 0  # drift is measured
    assert check["broken"] == []  # and reported, not judged
    assert (q8 / "tiny-q8_0.gguf").stat().st_size < (tmp_path / "f16" / "tiny-f16.gguf").stat().st_size


def test_ollama_export_writes_modelfile_from_the_chat_template(tiny_run, tmp_path):
    out = export_run(tiny_run, "ollama", "f16", tmp_path / "ollama")
    assert (out / "model.gguf").exists() and json.loads((out / "parity.json").read_text())["passed"]
    text = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf" in text
    assert '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in text
    assert text.count('PARAMETER stop "<|im_end|>"') == 1 and "PARAMETER temperature 0" in text
    assert 'TEMPLATE """' in text and text.index("{{ end }}{{ end }}<|im_start|>assistant\n") > 0
    # beside it: FROM the unmerged base + ADAPTER the LoRA GGUF, checked like the merged file
    adapter = (out / "Modelfile.adapter").read_text()
    assert "FROM ./base.gguf\nADAPTER ./adapter-lora.gguf\n" in adapter
    assert adapter.split("TEMPLATE", 1)[1] == text.split("TEMPLATE", 1)[1]
    assert (out / "base.gguf").exists() and (out / "adapter-lora.gguf").exists()
    assert json.loads((out / "parity.json").read_text())["checks"]["gguf-lora-f16"]["broken"] == []


SMOLLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_STYLE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' "
    "+ m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@pytest.mark.parametrize("template", [SMOLLM_TEMPLATE, LLAMA3_STYLE], ids=["smollm", "llama3-style"])
def test_template_parts_rebuild_the_jinja_rendering(tiny_tokenizer, template):
    parts = template_parts(tiny_tokenizer, template)
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    rebuilt = parts["lead"] + "".join(parts[m["role"]][0] + m["content"] + parts[m["role"]][1] for m in convo)
    expected = tiny_tokenizer.apply_chat_template(
        convo, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    assert rebuilt + parts["generation"] == expected
    if template is SMOLLM_TEMPLATE:  # the template's own default system turn becomes SYSTEM
        assert parts["default_system"].startswith("You are a helpful AI assistant named SmolLM")
        assert 'SYSTEM """You are a helpful' in modelfile_text(tiny_tokenizer, template, None, "m.gguf", 512)
    else:
        assert parts["lead"] == tiny_tokenizer.bos_token and parts["default_system"] is None


def test_untranslatable_template_is_refused(tiny_tokenizer):
    odd = "{% for m in messages %}{{ loop.index }}:{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ExportError, match="Ollama TEMPLATE"):
        template_parts(tiny_tokenizer, odd)


def test_qwen2_model_exports_to_gguf(tmp_path, tiny_tokenizer):
    """No adapter at all: a plain Qwen2 directory (with q/k/v biases, no q/k permutation) round-trips."""
    from helpers import make_tiny_model

    src = tmp_path / "qwen2"
    make_tiny_model(len(tiny_tokenizer), arch="qwen2").save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    out = export_run(str(src), "gguf", "f32", tmp_path / "gguf")
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and "merged" not in parity["checks"]
    assert parity["checks"]["gguf-f32"]["max_logit_diff"] < 1e-4


def test_unsupported_architecture_is_a_clear_error(tmp_path, tiny_tokenizer):
    from helpers import make_tiny_model

    model = make_tiny_model(len(tiny_tokenizer), arch="gemma3")
    with pytest.raises(ExportError, match="GGUF export supports"):
        write_gguf(model, tiny_tokenizer, tmp_path / "x.gguf", "f16", "x", AdapterMeta(base_model="x"))


def test_broken_parity_fails_loudly_after_writing_the_report(tmp_path):
    row = {"greedy_match": 0.5, "token_agreement": 0.6, "max_logit_diff": 3.0, "ppl_rel_diff": 0.2}
    assert judge({**row, "max_logit_diff_rel": 0.1}, "f16") and judge(row, "q8_0") == []
    report = {
        "checks": {"gguf-f16": {**row, "broken": ["max logit diff 3 > 0.5"]}, "merged": {**row, "broken": []}}
    }
    with pytest.raises(ExportError, match="parity check failed.*gguf-f16"):
        write_parity(tmp_path, report)
    assert json.loads((tmp_path / "parity.json").read_text())["passed"] is False


def test_cli_merge_and_bad_quant(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from smolora.cli.main import app

    r = CliRunner().invoke(app, ["export", str(tiny_run), "--quant", "q4"])
    assert isinstance(r.exception, ExportError) and "--quant q4" in str(r.exception)
    r = CliRunner().invoke(app, ["merge", str(tiny_run), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "parity" in r.output and (tmp_path / "m" / "model.safetensors").exists()


def test_layer_surgery_survives_merge_and_gguf(tmp_path_factory, tiny_model_dir, tmp_path):
    """A run trained with layer 0 dropped: the merged model and the GGUF have one layer and match the adapter."""
    import gguf
    from transformers import AutoModelForCausalLM

    from smolora.model.load import load_for_inference

    run = train_tiny(tmp_path_factory, tiny_model_dir, "model.drop_layers=[0]")
    merged_dir = merge_run(run, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert merged.config.num_hidden_layers == 1 and len(merged.model.layers) == 1
    adapter_model, tok, _ = load_for_inference(run, device="cpu")
    ids = tok(PROBE, add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(logits(merged, ids), logits(adapter_model, ids), atol=1e-5, rtol=0)

    out = export_run(run, "gguf", "f32", tmp_path / "gguf")
    assert json.loads((out / "parity.json").read_text())["passed"]
    reader = gguf.GGUFReader(out / "tiny-f32.gguf")
    assert reader.fields["llama.block_count"].contents() == 1


# --- the adapter alone as a LoRA GGUF, beside the unmerged base ---------------------------------


def gguf_lora_files(out) -> tuple[dict, object, object]:
    """The gguf-lora row of parity.json and GGUFReaders of its (base, lora) files."""
    import gguf

    row = next(
        c
        for n, c in json.loads((out / "parity.json").read_text())["checks"].items()
        if n.startswith("gguf-lora")
    )
    return row, gguf.GGUFReader(out / row["base_file"]), gguf.GGUFReader(out / row["file"])


def test_gguf_lora_writes_the_adapter_and_the_unmerged_base(tiny_run, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    out = export_run(tiny_run, "gguf-lora", None, tmp_path / "lora")
    parity = json.loads((out / "parity.json").read_text())
    row, base, lora = gguf_lora_files(out)
    assert parity["passed"] and row["precision"] == "f16" and row["broken"] == []
    assert row["greedy_match"] == 1.0 and row["ppl_rel_diff"] < 0.01
    assert "lora" in row["file"] and row["file"].endswith("-lora-f16.gguf")
    assert row["base_file"] == f"{tiny_model_dir.name}-f16.gguf" and not list(out.glob("*.partial"))

    field = lambda reader, key: reader.fields[key].contents()  # noqa: E731
    assert field(lora, "general.type") == "adapter" and field(lora, "adapter.type") == "lora"
    assert field(lora, "general.architecture") == field(base, "general.architecture") == "llama"
    config = json.loads((tiny_run / "adapter" / "adapter_config.json").read_text())
    assert field(lora, "adapter.lora.alpha") == config["lora_alpha"]
    # every adapted module of both layers, as llama.cpp pairs them, and nothing else
    modules = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}
    names = {t.name for t in lora.tensors}
    assert names == {f"blk.{i}.{m}.weight.lora_{ab}" for i in (0, 1) for m in modules for ab in "ab"}
    # llama.cpp's shape checks (ne order): base ne0 == a ne0, base ne1 == b ne1, a ne1 == b ne0 == r
    base_shape = {t.name: list(t.shape) for t in base.tensors}
    for t in lora.tensors:
        if t.name.endswith("lora_a"):
            b = next(x for x in lora.tensors if x.name == t.name[:-1] + "b")
            w = base_shape[t.name.removesuffix(".lora_a")]
            assert t.shape[0] == w[0] and b.shape[1] == w[1] and t.shape[1] == b.shape[0] == config["r"]
    assert not any("lora" in n for n in base_shape)
    # the base file holds the base weights, not the merged ones (v_proj: no q/k row permutation)
    v = next(t for t in base.tensors if t.name == "blk.0.attn_v.weight")
    original = load_file(tiny_model_dir / "model.safetensors")["model.layers.0.self_attn.v_proj.weight"]
    torch.testing.assert_close(torch.from_numpy(v.data.astype("float32")), original, atol=1e-3, rtol=1e-3)


def test_rslora_scale_is_folded_into_b(tmp_path_factory, tiny_model_dir, tmp_path):
    """llama.cpp scales by alpha / r; rsLoRA trained with alpha / sqrt(r): B carries sqrt(r)."""
    from safetensors.torch import load_file

    run = train_tiny(tmp_path_factory, tiny_model_dir, "lora.method=rslora", "lora.r=4", "lora.alpha=8")
    out = export_run(run, "gguf-lora", "f32", tmp_path / "rs")
    row, _, lora = gguf_lora_files(out)
    assert row["broken"] == [] and row["max_logit_diff_rel"] < 1e-4  # transformers' reading, f32
    b_file = next(t for t in lora.tensors if t.name == "blk.1.attn_v.weight.lora_b").data
    b_peft = load_file(run / "adapter" / "adapter_model.safetensors")
    b_peft = next(v for k, v in b_peft.items() if "layers.1.self_attn.v_proj.lora_B" in k)
    torch.testing.assert_close(torch.from_numpy(b_file.copy()), b_peft * 2.0, atol=1e-6, rtol=1e-6)  # sqrt(4)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"adapter_config.json": {"use_dora": True}}, "DoRA"),
        ({"adapter_config.json": {"modules_to_save": ["lm_head"]}}, "modules_to_save"),
        ({"adapter_config.json": {"target_modules": ["q_proj", "embed_tokens"]}}, "embeddings"),
        ({"smolora.json": {"drop_layers": [0]}}, "layer surgery.*--format gguf"),
        ({"adapter_config.json": None}, "whole weights.*--format gguf"),
    ],
    ids=["dora", "modules_to_save", "embeddings", "surgery", "full"],
)
def test_gguf_lora_refuses_what_a_lora_file_cannot_hold(tiny_run, tmp_path, edit, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name, change in edit.items():
        path = run / "adapter" / name
        if change is None:
            path.unlink()
        else:
            path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    code, output = smolora_main("export", run, "--format", "gguf-lora", "--out", tmp_path / "out")
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert re.search(message, output), output
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_gguf_lora_bad_quant_and_nothing_partial_on_failure(tiny_run, tmp_path, monkeypatch):
    import smolora.export.gguf_lora as gguf_lora

    with pytest.raises(ExportError, match="gguf-lora --quant q4_k_m: choose f32, f16, q8_0"):
        export_run(tiny_run, "gguf-lora", "q4_k_m", tmp_path / "q4")

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(gguf_lora, "lora_tensors", broken)  # fails after the base file is complete
    with pytest.raises(OSError, match="disk full"):
        export_run(tiny_run, "gguf-lora", "f16", tmp_path / "out")
    assert not [p.name for p in (tmp_path / "out").iterdir() if "gguf" in p.name]


def test_ollama_modelfile_with_adapter(tiny_tokenizer):
    text = modelfile_text(
        tiny_tokenizer, tiny_tokenizer.chat_template, None, "base.gguf", 512, "adapter-lora.gguf"
    )
    assert "FROM ./base.gguf\nADAPTER ./adapter-lora.gguf\nTEMPLATE" in text
    assert "-f Modelfile.adapter" in text
    plain = modelfile_text(tiny_tokenizer, tiny_tokenizer.chat_template, None, "model.gguf", 512)
    assert "ADAPTER" not in plain and plain.split("TEMPLATE", 1)[1] == text.split("TEMPLATE", 1)[1]


def test_cli_prints_the_perplexity_drift_with_its_sign(tmp_path, capsys):
    from smolora.cli.export import print_parity

    row = {
        "greedy_match": 1.0,
        "token_agreement": 1.0,
        "max_logit_diff": 0.1,
        "precision": "q4_k_m",
        "broken": [],
    }
    checks = {"fell": {**row, "ppl": 80.0, "ppl_reference": 100.0, "ppl_rel_diff": 0.2}}
    checks["rose"] = {**row, "ppl": 101.0, "ppl_reference": 100.0, "ppl_rel_diff": 0.01}
    (tmp_path / "parity.json").write_text(
        json.dumps({"reference": "adapter model", "prompts": ["p"], "checks": checks})
    )
    print_parity(tmp_path)
    out = capsys.readouterr().out
    assert "-20.00%" in out and "+1.00%" in out and "+20.00%" not in out
