"""CLI options no other test used (tests/test_options_used.py lists them), each with its effect.

Every test passes the option and checks what it changes: the prompts read, the text the model
is given, the calls made, the files written, what a worker is asked to do. On the tiny model,
offline, in this process where that is possible.

Run as:
    pytest -q tests/test_cli_options.py
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from helpers import json_rows, last_commit, push_cli
from smolora.cli.main import app
from smolora.data.formats import domain_tag

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def ok(args: list[str], **kw) -> str:
    r = runner.invoke(app, args, **kw)
    assert r.exit_code == 0, f"{r.output}\n{r.exception!r}"
    return r.output


# --- smolora itself ------------------------------------------------------------------------


def test_verbose_and_quiet_set_the_log_level():
    log = logging.getLogger("smolora")
    before = log.level
    try:
        ok(["--verbose", "config", "show"])
        assert log.level == logging.DEBUG
        ok(["-q", "config", "show"])
        assert log.level == logging.WARNING
    finally:
        log.setLevel(before)


# --- generate and chat ---------------------------------------------------------------------


def test_generate_file_of_prompts(tiny_model_dir, tmp_path):
    txt = tmp_path / "prompts.txt"
    txt.write_text("What is 1 plus one?\n\nWhat is 2 plus one?\n")
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"prompt": "Name a color"}\n"Name a city"\n')
    out = ok(["generate", str(tiny_model_dir), "--file", str(txt), "--json", "--max-new-tokens", "2"])
    assert [r["prompt"] for r in json_rows(out)] == ["What is 1 plus one?", "What is 2 plus one?"]
    out = ok(["generate", str(tiny_model_dir), "extra", "-f", str(jsonl), "--json", "--max-new-tokens", "2"])
    assert [r["prompt"] for r in json_rows(out)] == ["extra", "Name a color", "Name a city"]


def test_generate_batch_size_sets_the_batches_not_the_answers(chatty_model_dir, generate_calls):
    prompts = ["What is 1 plus one?", "Name a color", "Write a haiku about rivers and the sea."]
    base = ["generate", str(chatty_model_dir), *prompts, "--json", "--max-new-tokens", "6"]
    together = json_rows(ok(base))
    assert len(generate_calls) == 1 and all(r["output"] for r in together)
    one_by_one = json_rows(ok([*base, "--batch-size", "1"]))
    assert len(generate_calls) == 1 + 3
    assert one_by_one == together  # left padding: batching does not change greedy answers


def test_generate_domain_tags_the_prompt(tiny_model_dir, rendered):
    ok(["generate", str(tiny_model_dir), "Name a color", "--domain", "medicine", "--max-new-tokens", "2"])
    assert domain_tag("medicine") in rendered[-1]
    ok(["generate", str(tiny_model_dir), "Name a color", "--max-new-tokens", "2"])
    assert "[domain:" not in rendered[-1]


def test_chat_system_prompt_and_max_new_tokens(tiny_model_dir, rendered, generate_calls):
    args = ["chat", str(tiny_model_dir), "--system", "You answer in French.", "--max-new-tokens", "3"]
    out = ok(args, input="Name a color\n\n")
    assert "bot>" in out
    assert "You answer in French." in rendered[-1] and generate_calls[-1]["max_new_tokens"] == 3


def pickled_copy(model_dir: Path, dest: Path) -> Path:
    """The tiny model with its weights as pytorch_model.bin (a pickle) instead of safetensors."""
    from safetensors.torch import load_file

    shutil.copytree(model_dir, dest)
    torch.save(load_file(str(dest / "model.safetensors")), dest / "pytorch_model.bin")
    (dest / "model.safetensors").unlink()
    return dest


def test_chat_allow_pickle(tiny_model_dir, tmp_path):
    pickled = pickled_copy(tiny_model_dir, tmp_path / "pickled")
    refused = runner.invoke(app, ["chat", str(pickled)], input="hi\n\n")
    assert refused.exit_code != 0 and "--allow-pickle" in str(refused.exception)
    out = ok(["chat", str(pickled), "--allow-pickle", "--max-new-tokens", "2"], input="hi\n\n")
    assert "bot>" in out


# --- init, data inspect, eval, push, ui --------------------------------------------------------


def test_init_model_and_task_need_no_questions(tmp_path, qa_file, tiny_model_dir):
    out = tmp_path / "my.yaml"
    args = ["init", "--out", str(out), "--data", str(qa_file), "--model", str(tiny_model_dir)]
    ok([*args, "--task", "add one to a number"], input="")  # no answers given: nothing is asked
    text = out.read_text()
    assert "Task: add one to a number" in text and f"name: {tiny_model_dir}" in text


def test_data_inspect_config_supplies_the_data_settings(tiny_model_dir, qa_file, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{max_length: 16}}\n")
    out = ok(["data", "inspect", str(qa_file), "--config", str(cfg), "--examples", "1"])
    assert "max_length 16" in out  # the rendered example's header names the config's limit
    out = ok(
        ["data", "inspect", str(qa_file), "-c", str(cfg), "--examples", "1", "--set", "data.max_length=32"]
    )
    assert "max_length 32" in out


def test_eval_set_and_lm_eval_limit(push_run_dir, monkeypatch):
    out = ok(["eval", str(push_run_dir), "--set", "eval.max_examples=2", "--samples", "1"])
    assert "scores on 2 held-out examples" in out
    pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install 'smolora[eval]')")
    import lm_eval
    import lm_eval.tasks

    real_manager, real_evaluate, seen = lm_eval.tasks.TaskManager, lm_eval.simple_evaluate, []
    # Indexing lm-eval's ~15k built-in task YAMLs takes a minute; the local task needs none of them.
    monkeypatch.setattr(
        lm_eval.tasks, "TaskManager", lambda **kw: real_manager(**{**kw, "include_defaults": False})
    )

    def spy(**kw):
        result = real_evaluate(**kw)
        seen.append(result["n-samples"]["smolora_orders"])
        return result

    monkeypatch.setattr(lm_eval, "simple_evaluate", spy)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = ["--lm-eval", "smolora_orders", "--include-path", str(ROOT / "examples" / "lm_eval")]
    ok(["eval", str(push_run_dir), "--set", "eval.max_examples=1", *tasks, "--lm-eval-limit", "3"])
    assert seen and all(s["effective"] == 3 and s["original"] == 20 for s in seen)


def test_push_private_and_message(fake_hub, push_run_dir):
    r = push_cli(
        fake_hub, str(push_run_dir), "--repo", "me/private-lora", "--private", "--message", "first cut"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    create = [c for c in fake_hub["calls"] if c["call"] == "create"][-1]
    assert create["body"]["name"] == "private-lora"
    assert create["body"].get("visibility") == "private" or create["body"].get("private") is True
    assert last_commit(fake_hub)["summary"] == "first cut"


def test_ui_host_is_where_it_binds(tmp_path, monkeypatch):
    import uvicorn

    bound: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: bound.append(kw))
    monkeypatch.chdir(tmp_path)  # `smolora ui` works inside its workspace
    out = ok(["ui", "--host", "0.0.0.0", "--port", "7999", "--workspace", str(tmp_path)])
    assert bound[-1]["host"] == "0.0.0.0" and bound[-1]["port"] == 7999
    assert "binding 0.0.0.0" in out  # off loopback: the warning
    ok(["ui", "--port", "7999", "--workspace", str(tmp_path)])
    assert bound[-1]["host"] == "127.0.0.1"


# --- models and layers ---------------------------------------------------------------------


def test_models_pull_name_and_force(tiny_model_dir, tmp_path):
    from smolora.model.store import models_dir

    src = tmp_path / "src-model"
    shutil.copytree(tiny_model_dir, src)
    ok(["models", "pull", str(src), "--name", "my-tiny"])
    stored = models_dir() / "my-tiny"
    assert (stored / "config.json").exists() and not (models_dir() / "src-model").exists()
    changed = json.loads((src / "config.json").read_text()) | {"smolora_test_mark": 1}
    (src / "config.json").write_text(json.dumps(changed))
    ok(["models", "pull", str(src), "--name", "my-tiny"])  # already there: left as it is
    assert "smolora_test_mark" not in (stored / "config.json").read_text()
    ok(["models", "pull", str(src), "--name", "my-tiny", "--force"])  # copied again
    assert "smolora_test_mark" in (stored / "config.json").read_text()


def test_models_pull_revision_is_the_one_downloaded(tiny_model_dir, monkeypatch):
    import huggingface_hub

    from smolora.model.store import models_dir, read_manifest

    asked: list[str | None] = []

    class Info:
        sha = "c0ffee"

    def model_info(repo_id, revision=None):
        asked.append(revision)
        return Info()

    def snapshot_download(repo_id, revision=None, local_dir=None, **kw):
        asked.append(revision)
        shutil.copytree(tiny_model_dir, local_dir, dirs_exist_ok=True)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    ok(["models", "pull", "someone/tiny", "--revision", "v1.0"])
    assert asked == ["v1.0", "c0ffee"]  # the branch/tag is pinned to its commit, then fetched
    entry = next(p for p in models_dir().iterdir() if (p / "config.json").exists())
    assert read_manifest(entry)["revision"] == "c0ffee"


def test_layers_importance_max_length_and_batch_size(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    import smolora.model.importance

    batches: list[list[dict]] = []
    real = smolora.model.importance.pad_batch
    monkeypatch.setattr(
        smolora.model.importance, "pad_batch", lambda rows, pad: batches.append(rows) or real(rows, pad)
    )
    png = tmp_path / "imp.png"
    args = ["layers", "importance", str(tiny_model_dir), "--data", str(qa_file), "--rows", "4"]
    short = runner.invoke(app, [*args, "--out", str(png), "--max-length", "24"])
    assert "no row with a trainable token; raise --max-length" in str(short.exception)  # answers cut off
    ok([*args, "--out", str(png), "--max-length", "48", "--batch-size", "3"])
    assert batches and {len(b) for b in batches} == {3, 1}  # 4 rows in forward passes of 3
    assert max(len(r["input_ids"]) for b in batches for r in b) <= 48
    assert json.loads(png.with_suffix(".json").read_text())["rows"] == 4


# --- bench: every option reaches the worker that acts on it (no model is timed) -------------


@pytest.fixture
def bench_workers(monkeypatch, tmp_path):
    """Fake benchmark workers: the command of each, answered with numbers of the right shape."""
    from helpers import fake_bench_workers, fake_report
    from smolora.bench import launch
    from smolora.model import precision

    report = fake_report()

    def answer(cmd):
        if "load" in cmd:
            return report["load"]
        if "generate" in cmd:
            return report["generation"]
        run = {"real_tokens_per_s": 100.0, "step_s": 1.0, "peak_rss_mib": 10, "last_loss": 1.0, "wall_s": 1}
        return run | (
            {"profile": [{"op": "aten::mm", "share": 0.5, "calls": 3}]} if "--profile" in cmd else {}
        )

    commands = fake_bench_workers(monkeypatch, tmp_path, answer)
    # float32 only, whatever this CPU has: tests/test_bench_precision.py runs both precisions
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    monkeypatch.setattr(launch, "serve_bench", lambda model_dir: {"requests": 4, "errors": 0})
    monkeypatch.setattr(torch, "set_num_threads", lambda n: commands.append(["set_num_threads", str(n)]))
    return commands


def test_bench_options_reach_the_workers(tiny_model_dir, qa_file, tmp_path, bench_workers):
    docs, records = tmp_path / "bench.md", tmp_path / "bench.json"
    ok(
        ["bench", "--steps", "3", "--warmup", "1", "--peers", "naive,grouped", "--model", str(tiny_model_dir)]
        + ["--data", str(qa_file), "--threads", "1", "--profile", "--convert", "--serve", "--lowmem"]
        + ["--extras", "--json", str(records), "--docs", str(docs)]
    )
    train = [c for c in bench_workers if "train" in c]
    # --lowmem: the two memory modes, each its own run
    assert len(train) == 3 and [c[c.index("--lowmem") + 1] for c in train[1:]] == ["micro", "checkpoint"]
    # every tool trains on the same rows: the data less its held-out quarter (40 rows: 10)
    assert (
        len({c[c.index("--data") + 1] for c in bench_workers if "--data" in c and "generate" not in c}) == 1
    )
    for cmd in train:
        assert cmd[cmd.index("--model") + 1] == str(tiny_model_dir) and cmd[cmd.index("--data") + 1] != str(
            qa_file
        )
        assert cmd[cmd.index("--steps") + 1] == "3" and cmd[cmd.index("--warmup") + 1] == "1"
        assert cmd[cmd.index("--threads") + 1] == "1"
    assert "--profile" in train[0]
    peers = [c[c.index("--mode") + 1] for c in bench_workers if "--mode" in c]
    assert peers == ["naive", "grouped"]
    assert ["set_num_threads", "1"] in bench_workers
    load = next(c for c in bench_workers if "load" in c)
    assert "--convert" in load and any("generate" in c for c in bench_workers)  # --extras
    text = docs.read_text()
    assert "smolora bench --steps 3 --warmup 1 --peers naive,grouped" in text
    assert "torch.profiler" in text and "Serve load test" in text  # --profile, --serve
    assert [r["name"] for r in json.loads(records.read_text())] == [
        "smolora",
        "smolora-lowmem",
        "smolora-ckpt",
        "naive",
        "grouped",
    ]


def test_bench_skip_peers_no_lowmem_no_extras(tiny_model_dir, qa_file, tmp_path, bench_workers):
    docs = tmp_path / "bench.md"
    args = ["bench", "--model", str(tiny_model_dir), "--data", str(qa_file), "--docs", str(docs)]
    ok([*args, "--skip-peers", "--no-lowmem", "--no-extras", "--steps", "1", "--warmup", "0"])
    assert [c for c in bench_workers if "train" in c and "--lowmem" not in c]
    assert not [
        c for c in bench_workers if "--mode" in c or "--lowmem" in c or "load" in c or "generate" in c
    ]
    assert "--skip-peers" in docs.read_text() and "Serve load test" not in docs.read_text()


def test_bench_writes_docs_only_when_asked(tiny_model_dir, qa_file, tmp_path, bench_workers, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a user's directory: no docs/benchmarks.md appears in it
    args = ["bench", "--model", str(tiny_model_dir), "--data", str(qa_file), "--skip-peers", "--no-extras"]
    out = ok([*args, "--steps", "1", "--warmup", "0"])
    assert not (tmp_path / "docs").exists() and "written to" not in out


def test_bench_outside_a_checkout_measures_smolora_alone(tiny_model_dir, qa_file, bench_workers, monkeypatch):
    from smolora.bench import launch

    # an installed package: no benchmarks/run_peers.py beside it
    monkeypatch.setattr(launch, "load_peers", lambda: None)
    args = ["bench", "--model", str(tiny_model_dir), "--data", str(qa_file), "--peers", "naive"]
    out = ok([*args, "--no-lowmem", "--no-extras", "--steps", "1", "--warmup", "0"])
    assert "peers skipped" in out and "benchmarks/run_peers.py" in out
    assert [c for c in bench_workers if "train" in c] and not [c for c in bench_workers if "--mode" in c]
