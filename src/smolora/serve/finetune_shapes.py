"""OpenAI's fine-tuning wire shapes: the job request body, and the file, job, event and checkpoint
objects built from the queue's rows (queue/store.py), so the `openai` client parses them as OpenAI's.

Run as:
    req = JobRequest(model="smollm2-135m", training_file="file-abc", hyperparameters={"n_epochs": 2})
    body = job_object(store.get_job(root, job_id))   # {"object": "fine_tuning.job", ...}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ID = r"^[A-Za-z0-9._:-]{1,128}$"  # what a client may send as an id; unknown ones are a failed job or a 404


class Hyperparameters(BaseModel):
    # The bounds sit on the numeric branch: on the whole union pydantic would apply them to "auto" too.
    model_config = ConfigDict(extra="forbid")
    n_epochs: Annotated[int, Field(ge=1, le=100)] | Literal["auto"] | None = Field(
        None, description="Epochs; auto: the recipe's."
    )
    batch_size: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] | None = None
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Literal["auto"] | None = Field(
        None, description="Times the recipe's learning rate (train.lr, or the auto one)."
    )
    beta: Annotated[float, Field(gt=0, le=100)] | Literal["auto"] | None = Field(
        None, description="dpo only: train.beta."
    )


class MethodSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: MethodSettings | None = None
    dpo: MethodSettings | None = None


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=256, pattern=r"^[^\x00-\x1f]+$", description="The served base model.")
    training_file: str = Field(pattern=ID, description="An id from POST /v1/files.")
    validation_file: str | None = Field(None, pattern=ID)
    suffix: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._-]{0,40}$", description="Part of the model's name."
    )
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    integrations: list[Any] | None = Field(None, max_length=0, description="Not supported: send none.")


def settings(req: JobRequest) -> tuple[str, dict[str, Any]]:
    """(method type, its hyperparameters): the method's own win over the top-level ones, as in OpenAI's API."""
    method = req.method or Method()
    chosen = getattr(method, method.type)
    merged = (req.hyperparameters.model_dump(exclude_none=True) if req.hyperparameters else {}) | (
        chosen.hyperparameters.model_dump(exclude_none=True) if chosen and chosen.hyperparameters else {}
    )
    return method.type, merged


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
    }


def job_object(job: dict[str, Any]) -> dict[str, Any]:
    hyper = job["hyperparameters"] or {}
    method = job["method"] or {"type": "supervised"}
    shown = {k: hyper.get(k, "auto") for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    own = {**shown, **({"beta": hyper.get("beta", "auto")} if method["type"] == "dpo" else {})}
    return {
        "object": "fine_tuning.job",
        "id": job["id"],
        "model": job["model"],
        "created_at": job["created_at"],
        "finished_at": job["finished_at"],
        "fine_tuned_model": job["fine_tuned_model"],
        "organization_id": "smolora",
        "result_files": [],
        "status": job["status"],
        "validation_file": job["validation_file"],
        "training_file": job["training_file"],
        "hyperparameters": shown,
        "method": {"type": method["type"], method["type"]: {"hyperparameters": own}},
        "trained_tokens": job["trained_tokens"],
        "error": job["error"],
        "seed": job["seed"],
        "estimated_finish": None,
        "integrations": [],
        "user_provided_suffix": job["suffix"],
        "metadata": job["metadata"],
    }


def event_object(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": event["id"],
        "created_at": event["created_at"],
        "level": event["level"],
        "message": event["message"],
        "data": event["data"] or {},
        "type": event["type"],
    }


def checkpoint_object(row: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    model = job["fine_tuned_model"] or f"ft:{job['model']}:{job['id']}"
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": row["id"],
        "created_at": row["created_at"],
        "fine_tuned_model_checkpoint": f"{model}:ckpt-step-{row['step']}",
        "fine_tuning_job_id": job["id"],
        "metrics": {k: v for k, v in (row["metrics"] or {}).items() if v is not None},
        "step_number": row["step"],
    }


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more}
