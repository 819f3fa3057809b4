"""train.objective and its settings, model.adapter / --from, and GRPO's rewards: as a user sets them, and
as a careless one does (a typo, a reward that raises, a run that is not there).

Run as:
    pytest -q tests/test_objective_config.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import tiny_overrides
from smolora.cli.main import app
from smolora.config import load_config
from smolora.errors import ConfigError, TrainingError
from smolora.eval.rewards import load_rewards, score_rewards
from smolora.train.schedule import auto_schedule

runner = CliRunner()


def write_pairs(path: Path, n: int = 24) -> Path:
    rows = [
        {"prompt": f"What is {i} plus one?", "chosen": f"It is {i + 1}.", "rejected": f"No idea {i}."}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_objective_defaults_and_per_objective_beta():
    cfg = load_config(None, [])
    assert cfg.train.objective == "sft" and cfg.train.beta is None
    for objective, beta in {"dpo": 0.1, "orpo": 0.1, "simpo": 2.0, "kto": 0.1}.items():
        assert load_config(None, [f"train.objective={objective}"]).train.strength == beta
    cfg = load_config(
        None, ["train.objective=dpo", "train.beta=0.5", "train.loss_type=ipo", "train.simpo_gamma=1"]
    )
    assert (cfg.train.strength, cfg.train.loss_type, cfg.train.simpo_gamma) == (0.5, "ipo", 1.0)
    grpo = load_config(
        None,
        [
            "train.objective=grpo",
            "train.rewards=[exact_match]",
            "train.num_generations=8",
            "train.max_completion_length=16",
            "train.temperature=0.7",
        ],
    ).train
    assert (grpo.strength, grpo.num_generations, grpo.max_completion_length, grpo.temperature) == (
        0.0,
        8,
        16,
        0.7,
    )


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["train.objective=dpx"], "train.objective"),
        (["train.objective=grpo"], "needs train.rewards"),
        (["train.objective=dpo", "train.beta=-1"], "train.beta"),
        (["train.objective=dpo", "train.loss_type=kto"], "train.loss_type"),
        (
            ["train.objective=grpo", "train.rewards=[exact_match]", "train.num_generations=1"],
            "num_generations",
        ),
        (["train.objective=grpo", "train.rewards=['']"], "train.rewards"),
        (["train.objective=dpo", "data.streaming=true"], "data.streaming"),
        (["train.objective=kto", "data.task=memorize"], "data.task=memorize"),
    ],
)
def test_bad_objective_settings_are_one_line_problems(overrides, says):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert says in str(e.value)


def test_preference_objectives_take_a_gentler_auto_lr_and_grpo_one_pass():
    sft = auto_schedule(load_config(None, []), 400, 135_000_000)
    dpo = auto_schedule(load_config(None, ["train.objective=dpo"]), 400, 135_000_000)
    grpo = auto_schedule(
        load_config(None, ["train.objective=grpo", "train.rewards=[exact_match]"]), 400, 135_000_000
    )
    assert dpo["lr"] == pytest.approx(sft["lr"] * 0.1)
    assert "for dpo" in dpo["reason"]
    assert grpo["epochs"] == 1 and "grpo" in grpo["reason"]


def test_builtin_rewards():
    rewards = load_rewards(["exact_match", "contains:answer", "regex:^It is \\d+", "length:3"])
    total, means = score_rewards(
        rewards,
        ["q1", "q2"],
        ["It is 4.", "I think it is 4 or so"],
        [{"answer": "It is 4."}, {"answer": "4"}],
    )
    assert means == {
        "exact_match": 0.5,
        "contains:answer": 1.0,
        "regex:^It is \\d+": 0.5,
        "length:3": pytest.approx(-2 / 3),
    }
    assert total == pytest.approx([3.0, 1 - 4 / 3])  # "It is 4." is 3 words; the other 7, 4 over


def test_reward_from_a_file(tmp_path):
    (tmp_path / "r.py").write_text(
        "def short(prompts, completions, **columns):\n    return [-len(c) for c in completions]\n"
    )
    total, means = score_rewards(load_rewards([f"{tmp_path}/r.py:short"]), ["p"], ["abc"], [{}])
    assert total == [-3.0]


@pytest.mark.parametrize(
    "spec, says",
    [
        ("exakt_match", "unknown reward"),
        ("missing.py:f", "no file"),
        ("regex:(", "regex:("),
        ("length:x", "length:N"),
    ],
)
def test_bad_reward_names_fail_before_training(spec, says):
    with pytest.raises(ConfigError) as e:
        load_rewards([spec])
    assert says in str(e.value)


def test_reward_file_without_the_function_lists_what_it_has(tmp_path):
    (tmp_path / "r.py").write_text(
        "def good(prompts, completions, **c):\n    return [1.0] * len(completions)\n"
    )
    with pytest.raises(ConfigError) as e:
        load_rewards([f"{tmp_path}/r.py:bad"])
    assert "no function 'bad'" in str(e.value) and "good" in str(e.value)


def test_a_reward_that_raises_or_returns_the_wrong_shape_names_itself_and_the_row(tmp_path):
    (tmp_path / "r.py").write_text(
        "def picky(prompts, completions, **c):\n    return [1.0 / (len(x) - 3) for x in completions]\n"
        "def short(prompts, completions, **c):\n    return [1.0]\n"
        "def nan(prompts, completions, **c):\n    return [float('nan')] * len(completions)\n"
    )
    with pytest.raises(TrainingError) as e:
        score_rewards(load_rewards([f"{tmp_path}/r.py:picky"]), ["a", "b"], ["long one", "abc"], [{}, {}])
    assert "picky" in str(e.value) and "row 2" in str(e.value) and "ZeroDivisionError" in str(e.value)
    with pytest.raises(TrainingError) as e:
        score_rewards(load_rewards([f"{tmp_path}/r.py:short"]), ["a", "b"], ["x", "y"], [{}, {}])
    assert "returned 1 values for 2 completions" in str(e.value)
    with pytest.raises(TrainingError) as e:
        score_rewards(load_rewards([f"{tmp_path}/r.py:nan"]), ["a"], ["x"], [{}])
    assert "row 1" in str(e.value) and "finite" in str(e.value)
    with pytest.raises(TrainingError) as e:  # exact_match against a column the data does not have
        score_rewards(load_rewards(["exact_match:solution"]), ["a"], ["x"], [{"answer": "x"}])
    assert "solution" in str(e.value)


def test_examples_rewards_file_scores_the_house_format():
    rewards = load_rewards(["examples/rewards.py:format_ok", "examples/rewards.py:correct_fields"])
    total, means = score_rewards(
        rewards,
        ["Extract. Message: 2 x mug to Oslo", "Extract. Message: 2 x mug to Oslo"],
        ["product=mug; qty=2; city=Oslo", "Sure! Here is the order:\nProduct: mug"],
        [{"output": "product=mug; qty=2; city=Oslo"}, {"output": "product=mug; qty=2; city=Oslo"}],
    )
    assert total[0] == pytest.approx(2.0)
    assert total[1] < 0.5


def test_train_from_an_sft_run_continues_its_adapter(tmp_path, tiny_model_dir, tiny_run):
    """--from sets model.adapter: the DPO run starts from the SFT adapter's weights, and its method."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sft = tmp_path / "sft"
    shutil.copytree(tiny_run, sft)
    args = tiny_overrides(
        tiny_model_dir,
        write_pairs(tmp_path / "pairs.jsonl"),
        tmp_path,
        "train.objective=dpo",
        "train.max_steps=2",
    )
    r = runner.invoke(app, ["train", "--from", str(sft), *[x for a in args for x in ("--set", a)]])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "tiny"
    saved = __import__("yaml").safe_load((run / "config.yaml").read_text())
    assert saved["model"]["adapter"] == str(sft) and saved["train"]["objective"] == "dpo"
    assert "continuing the adapter of" in (run / "train.log").read_text()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = PeftModel.from_pretrained(base, sft / "adapter").state_dict()
    after = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), run / "adapter"
    ).state_dict()
    lora_b = [k for k in before if "lora_B" in k]
    assert lora_b and any(before[k].abs().sum() > 0 for k in lora_b)  # the SFT adapter had learnt something
    assert any(not (before[k] == after[k]).all() for k in lora_b)  # and DPO moved it further
    # evaluated against the SFT run it continued, on its pairs or on plain SFT data (--data)
    from helpers import write_qa
    from smolora.eval.evaluate import evaluate_run

    on_pairs = evaluate_run(run, report=False)["metrics"]
    assert on_pairs["base_model"] == str(sft) and "preference_accuracy" in on_pairs["fine_tuned"]
    on_sft = evaluate_run(run, data_path=str(write_qa(tmp_path / "qa.jsonl", 6)), report=False)["metrics"]
    assert on_sft["n"] == 6 and "exact_match" in on_sft["fine_tuned"]
    assert "preference_accuracy" not in on_sft["fine_tuned"]


def test_model_adapter_that_is_not_a_run_or_has_another_base(tmp_path, tiny_model_dir, tiny_run):
    from smolora.train.recipe import train

    data = write_pairs(tmp_path / "pairs.jsonl")
    for adapter, says in [
        (tmp_path / "nowhere", "not a finished run"),
        (tiny_run, "was trained on"),
    ]:
        name = "some-other-base" if adapter == tiny_run else tiny_model_dir
        cfg = load_config(
            None, tiny_overrides(name, data, tmp_path, "train.objective=dpo", f"model.adapter={adapter}")
        )
        with pytest.raises(ConfigError) as e:
            train(cfg, show_progress=False)
        assert says in str(e.value)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "smolora.cli.main",
            "train",
            "--from",
            str(tmp_path / "nowhere"),
            "--set",
            f"data.path={data}",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "model.adapter" in r.stderr + r.stdout
