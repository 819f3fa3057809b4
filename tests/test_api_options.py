"""`SmoLoRA`'s arguments no other test used (tests/test_options_used.py lists them), each with its
effect, on the tiny model: text_field, train(resume=), load_model(path), and generate's
batch_size, domain, system_prompt and stop.

Run as:
    pytest -q tests/test_api_options.py
"""

from __future__ import annotations

import json

import pytest

from smolora import SmoLoRA
from smolora.data.formats import domain_tag
from smolora.errors import TrainingError

PROMPTS = ["What is 1 plus one?", "Name a color", "Write a haiku about rivers and the sea."]
TINY = {"data.max_length": 64, "train.batch_size": 4, "train.lr": 1e-2}


@pytest.fixture
def body_file(tmp_path):
    """Plain text rows under a column no detector knows: only text_field says which it is."""
    p = tmp_path / "notes.jsonl"
    p.write_text(
        "".join(
            json.dumps({"body": f"Note {i}: the river runs to the sea.", "n": i}) + "\n" for i in range(16)
        )
    )
    return p


def test_text_field_names_the_text_column(tiny_model_dir, body_file, tmp_path):
    tuner = SmoLoRA(
        str(tiny_model_dir),
        dataset=str(body_file),
        text_field="body",
        output_dir=str(tmp_path / "runs" / "notes"),
        **TINY,
        **{"train.max_steps": 2},
    )
    assert tuner.config.data.fields == {"text": "body"}
    run = tuner.train()
    assert json.loads((run / "adapter" / "smolora.json").read_text())["base_model"]


def test_train_resume_continues_from_the_checkpoint(tiny_model_dir, qa_file, tmp_path):
    out = str(tmp_path / "runs" / "r")
    fresh = SmoLoRA(str(tiny_model_dir), dataset=str(qa_file), output_dir=out, **TINY)
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        fresh.train(resume=True)  # resume=True looks for a checkpoint; a fresh name has none
    first = SmoLoRA(
        str(tiny_model_dir), dataset=str(qa_file), output_dir=out, **TINY, **{"train.max_steps": 2}
    )
    first.config.train.save_every = 2
    first.train()
    more = SmoLoRA(
        str(tiny_model_dir), dataset=str(qa_file), output_dir=out, **TINY, **{"train.max_steps": 4}
    )
    run = more.train(resume=True)
    steps = [
        r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]
    assert steps[-1] == 4 and 3 in steps


def test_load_model_answers_like_the_trained_run(chatty_model_dir, qa_file, tmp_path):
    out = str(tmp_path / "runs" / "a")
    trained = SmoLoRA(
        str(chatty_model_dir), dataset=str(qa_file), output_dir=out, **TINY, **{"train.max_steps": 3}
    )
    run = trained.train()
    other = SmoLoRA(str(chatty_model_dir))
    assert other.load_model(run) is other and other.meta["adapter"]  # the run's adapter, on its base
    answers = other.generate(PROMPTS, max_new_tokens=8)
    assert all(answers) and answers == trained.generate(PROMPTS, max_new_tokens=8)


def test_generate_batch_size_domain_system_prompt_and_stop(chatty_model_dir, rendered, generate_calls):
    tuner = SmoLoRA(str(chatty_model_dir))
    together = tuner.generate(PROMPTS, max_new_tokens=8)
    assert len(generate_calls) == 1
    assert tuner.generate(PROMPTS, max_new_tokens=8, batch_size=1) == together and len(generate_calls) == 4

    tuner.generate("Name a color", max_new_tokens=2, domain="medicine", system_prompt="Answer in French.")
    assert domain_tag("medicine") in rendered[-1] and "Answer in French." in rendered[-1]

    answer = next(a for a in together if len(a.strip()) >= 4)
    stop = answer.strip()[2:4]
    cut = tuner.generate(PROMPTS[together.index(answer)], max_new_tokens=8, stop=[stop])
    assert cut == answer[: answer.index(stop)] and stop not in cut
