"""Before an API job trains: its files and base model checked, its data written where its config points.

Everything a job names is checked when it starts, not only when it was created: a file may be
deleted and a model removed from the store in between. A problem is one sentence for the job's
events and error (the job fails; the server never answers 500 for it).

Run as:
    problem = prepare_job(root, job)   # None: ready to train
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smolora.errors import SmoLoRAError
from smolora.queue import store
from smolora.queue.files import KIND_OF_METHOD, write_training
from smolora.queue.submit import CONFIG, TRAIN_DATA, VALID_DATA, job_dir

LR_SCALED = ".lr-scaled"  # the config's lr already carries the job's learning_rate_multiplier
SHAPE_HELP = {
    "chat": 'chat conversations ({"messages": [...]})',
    "preference": 'preference pairs ({"input", "preferred_output", "non_preferred_output"})',
}


def known_model(name: str) -> str | None:
    """None when `name` is a model this machine has (no download); else why not."""
    from smolora.model.store import BUNDLED, MANIFEST, cache_name, models_dir

    path = Path(name).expanduser()
    try:  # a name too long for a path, or with a NUL byte, is simply not one
        if name in BUNDLED or (path.is_dir() and (path / "config.json").exists()):
            return None
        if path.suffix == ".gguf" and path.is_file():
            return None
        if "/" not in name.strip("/") and (models_dir() / cache_name(name) / MANIFEST).exists():
            return None
    except (OSError, ValueError):
        pass
    return (
        f"model '{name}' is not served here and not in the model store; fine-tune the served base "
        f"model (GET /v1/models), or add it first: smolora models pull {name}"
    )


def check_file(root: Path, file_id: str, what: str, method: str) -> tuple[Path | None, str | None]:
    """(the upload's path, None), or (None, the problem)."""
    row = store.get_file(root, file_id)
    path = store.file_path(root, file_id)
    if row is None or not path.is_file():
        return (
            None,
            f"{what} '{file_id}' does not exist (deleted, or never uploaded); upload it with POST /v1/files",
        )
    want = KIND_OF_METHOD[method]
    if row["kind"] != want:
        return (
            None,
            f"{what} '{file_id}' holds {SHAPE_HELP[row['kind']]}; method {method} needs {SHAPE_HELP[want]}",
        )
    return path, None


def prepare_job(root: Path, job: dict[str, Any]) -> str | None:
    """Check an API job's model and files and write its training data; None, or the problem."""
    if job["source"] != "api":
        return None  # a config from the UI: `smolora train` checks it and says what is wrong
    problem = known_model(job["base"])
    if problem:
        return problem
    method = (job["method"] or {}).get("type", "supervised")
    folder = job_dir(root, job["id"])
    names = [("training_file", TRAIN_DATA), ("validation_file", VALID_DATA)]
    for column, target in names:
        if not job[column] or (folder / target).is_file():
            continue  # none named, or written before this job was interrupted
        src, problem = check_file(root, job[column], column, method)
        if problem:
            return problem
        try:
            write_training(src, folder / target, KIND_OF_METHOD[method])
        except SmoLoRAError as e:
            return f"{column} '{job[column]}': {e}"
    multiplier = (job["hyperparameters"] or {}).get("learning_rate_multiplier")
    if multiplier not in (None, "auto", 1, 1.0) and not (folder / LR_SCALED).exists():
        try:
            scale_lr(folder / CONFIG, float(multiplier))
        except SmoLoRAError as e:
            return f"model '{job['base']}': {e}"
        (folder / LR_SCALED).write_text(f"{multiplier}\n", encoding="utf-8")  # once, not again on resume
    return None


def scale_lr(config: Path, multiplier: float) -> None:
    """train.lr times the multiplier; an auto lr is worked out first (from the model's size)."""
    from smolora.config import load_config, save_config
    from smolora.model.info import count_parameters
    from smolora.model.store import resolve_model
    from smolora.train.schedule import auto_lr

    cfg = load_config(config)
    lr = cfg.train.lr
    if lr == "auto":
        lr, _ = auto_lr(cfg, count_parameters(resolve_model(cfg.model.name, cfg.model.revision)) or 0)
    cfg.train.lr = lr * multiplier
    tmp = config.with_name(f".{config.name}.tmp")
    save_config(cfg, tmp)
    tmp.replace(config)
