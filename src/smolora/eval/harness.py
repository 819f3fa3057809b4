"""lm-evaluation-harness on an already loaded model: base and fine-tuned share one load.

Tasks come from `--include-path DIR` (task YAMLs, e.g. examples/lm_eval) and from lm-eval's
built-in tasks. Built-in tasks are only indexed (about a minute: thousands of YAMLs) when a
requested task is not in DIR. Local tasks that read local files need no network; set
HF_DATASETS_OFFLINE=1 to be sure nothing is fetched.

Run as:
    tm = find_tasks(["smolora_orders"], "examples/lm_eval")
    scores = run_lm_eval(model, tokenizer, ["smolora_orders"], tm)   # {"smolora_orders/acc": 0.55, ...}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from smolora.errors import SmoLoRAError

log = logging.getLogger("smolora")


def _import_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise SmoLoRAError(
            "--lm-eval needs lm-evaluation-harness, which is not installed; "
            "install it with: pip install 'smolora[eval]' (or pip install lm-eval)"
        ) from None


def find_tasks(tasks: list[str], include_path: str | Path | None = None) -> Any:
    """A TaskManager that knows every task in `tasks`, or a one-line error naming the missing ones."""
    _import_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise SmoLoRAError(
            f"--include-path {include_path}: no such directory; point it at a folder of lm-eval task "
            "YAMLs, e.g. --include-path examples/lm_eval"
        )
    include = str(include_path) if include_path else None
    if include:
        local = TaskManager(include_path=include, include_defaults=False, verbosity="ERROR")
        if not set(tasks) - set(local.match_tasks(tasks)):
            return local
    log.info("indexing lm-eval's built-in tasks (takes about a minute)")
    manager = TaskManager(include_path=include, verbosity="ERROR")
    missing = [t for t in tasks if t not in manager.match_tasks([t])]
    if missing:
        import difflib

        where = f"in {include_path} or " if include else ""
        close = difflib.get_close_matches(missing[0], manager.all_tasks, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SmoLoRAError(
            f"lm-eval task(s) not found {where}among lm-eval's built-in tasks: {', '.join(missing)}{hint}; "
            "check the name (lm-eval ls tasks) or pass --include-path DIR with the task's YAML "
            "(example: --include-path examples/lm_eval --lm-eval smolora_orders)"
        )
    return manager


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    task_manager: Any,
    batch_size: int = 8,
    limit: int | None = None,
    chat_template: bool = True,
) -> dict[str, float]:
    """Flat scores `{"task/metric": value}` (lm-eval's own scale; stderr left out)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    # lm-eval warns at length about being handed a live model; that is what we mean to do.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=task_manager,
        limit=limit,
        # SmoLoRA trains on chat-rendered prompts; score the model the way it was trained.
        apply_chat_template=chat_template,
        log_samples=False,
        verbosity="ERROR",
    )
    if results is None:  # non-zero ranks in a distributed run get nothing back
        return {}
    return flatten_results(results["results"])


def flatten_results(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lm-eval's `{"task": {"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ...}}` -> flat floats."""
    flat: dict[str, float] = {}
    for task, scores in results.items():
        for key, value in scores.items():
            metric, _, flt = key.partition(",")
            skip = "_stderr" in metric or metric in ("sample_len", "samples")
            if skip or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name = f"{task}/{metric}" if flt in ("", "none") else f"{task}/{metric}[{flt}]"
            flat[name] = float(value)
    return flat
