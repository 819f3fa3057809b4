"""lm-evaluation-harness against a real `smolora serve` subprocess on a tiny run scores what
smolora's in-process lm-eval (eval/harness.py run_lm_eval) scores on the same run: a
log-likelihood task through `local-completions` (token-id prompts, echo, logprobs) and a
generation task through `local-chat-completions` (the server renders the chat template).

The run is a 2-step LoRA run of the chatty tiny model: the shared tiny_run's greedy answer is
a newline, which the generation task's stop sequence cuts to "", and "" == "" proves nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from helpers import start_server, tiny_config, write_qa

lm_eval = pytest.importorskip("lm_eval")

TASKS = Path(__file__).resolve().parents[1] / "examples" / "lm_eval"
LIMIT_LL = 6  # 6 documents x 4 choices = 24 log-likelihood requests
LIMIT_GEN = 4


@pytest.fixture(scope="module")
def chatty_run(tmp_path_factory, chatty_model_dir) -> Path:
    from smolora.train.recipe import train

    root = tmp_path_factory.mktemp("lmeval-run")
    data = write_qa(root / "qa.jsonl", 24)
    cfg = tiny_config(chatty_model_dir, data, root, "train.max_steps=2", "train.threads=1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMOLORA_HOME", str(root / "home"))  # module fixtures start before isolated_home
        run = train(cfg, show_progress=False)
    # train() leaves its train.log handler on the `smolora` logger; later tests' lines do not belong there.
    logger = logging.getLogger("smolora")
    for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(h)
        h.close()
    return run


@pytest.fixture(scope="module")
def server(chatty_run, tmp_path_factory):
    proc, url, _ = start_server(chatty_run, tmp_path_factory, "--max-batch", "4")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def task_manager():
    from smolora.eval.harness import find_tasks

    return find_tasks(["smolora_orders", "smolora_orders_gen"], TASKS)


@pytest.fixture(scope="module")
def in_process(chatty_run, task_manager):
    """smolora's own lm-eval on the run loaded here, as `smolora eval --lm-eval` loads it: its flat
    scores and, through a spy that turns on log_samples, lm-eval's per-document samples."""
    from smolora.eval.harness import run_lm_eval
    from smolora.model.load import load_for_inference

    model, tokenizer, _ = load_for_inference(chatty_run, "cpu")
    real = lm_eval.simple_evaluate
    out: dict[str, dict] = {}

    def spy(**kw):
        results = real(**{**kw, "log_samples": True})
        out["samples"] = results["samples"]
        return results

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lm_eval, "simple_evaluate", spy)
        for task, limit in (("smolora_orders", LIMIT_LL), ("smolora_orders_gen", LIMIT_GEN)):
            scores = run_lm_eval(model, tokenizer, [task], task_manager, limit=limit)
            out[task] = {"scores": scores, "samples": out.pop("samples")[task]}
    return out


def through_server(model: str, url: str, run: Path, task: str, limit: int, task_manager) -> dict:
    """lm-eval's API model against the server: (flat scores, per-document samples) of one task."""
    from smolora.eval.harness import flatten_results

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    args = {
        "base_url": url,
        "model": "tiny",
        # No hub here: the run's own tokenizer directory (adapter/), the one the server loaded.
        "tokenizer_backend": "huggingface",
        "tokenizer": str(run / "adapter"),
        "num_concurrent": 2,
        "max_retries": 1,
        "tokenized_requests": model == "local-completions",
    }
    results = lm_eval.simple_evaluate(
        model=model,
        model_args=args,
        tasks=[task],
        task_manager=task_manager,
        limit=limit,
        apply_chat_template=True,
        log_samples=True,
        verbosity="ERROR",
    )
    return {"scores": flatten_results(results["results"]), "samples": results["samples"][task]}


def by_doc(samples: list[dict]) -> dict[int, dict]:
    return {s["doc_id"]: s for s in samples}


def test_local_completions_loglikelihoods_equal_in_process(server, chatty_run, task_manager, in_process):
    url = f"{server}/v1/completions"
    got = through_server("local-completions", url, chatty_run, "smolora_orders", LIMIT_LL, task_manager)
    want = in_process["smolora_orders"]
    assert got["scores"]["smolora_orders/acc"] == want["scores"]["smolora_orders/acc"]
    assert got["scores"]["smolora_orders/acc_norm"] == want["scores"]["smolora_orders/acc_norm"]
    served, local = by_doc(got["samples"]), by_doc(want["samples"])
    assert sorted(served) == sorted(local) == list(range(LIMIT_LL))
    for doc_id, sample in local.items():
        # resps: one [(log-likelihood, is_greedy)] per choice
        mine = [r[0][0] for r in sample["resps"]]
        theirs = [r[0][0] for r in served[doc_id]["resps"]]
        assert len(theirs) == len(mine) == 4
        assert theirs == pytest.approx(mine, abs=1e-4), doc_id
        assert [r[0][1] for r in served[doc_id]["resps"]] == [r[0][1] for r in sample["resps"]], doc_id


def test_local_chat_completions_generations_equal_in_process(server, chatty_run, task_manager, in_process):
    url = f"{server}/v1/chat/completions"
    got = through_server(
        "local-chat-completions", url, chatty_run, "smolora_orders_gen", LIMIT_GEN, task_manager
    )
    want = in_process["smolora_orders_gen"]
    key = "smolora_orders_gen/exact_match"
    assert got["scores"][key] == want["scores"][key]
    served, local = by_doc(got["samples"]), by_doc(want["samples"])
    assert sorted(served) == sorted(local) == list(range(LIMIT_GEN))
    # the greedy text itself, not only its score: exact_match is 0 for a random tiny model
    assert all(s["filtered_resps"][0] for s in local.values()), "empty answers would prove nothing"
    for doc_id, sample in local.items():
        assert served[doc_id]["filtered_resps"] == sample["filtered_resps"], doc_id
