"""Adapters loaded and unloaded while the server runs, and the tokenizer over HTTP.

`POST /v1/adapters {"name", "path"}` loads a run's adapter (a run or adapter directory inside
`--adapter-dir`, checked like `--adapter`: same base, same layer surgery) between two decoding
steps; `DELETE /v1/adapters/{name}` takes the name off the model list at once (new requests get
404), lets the rows already admitted on it finish (each job holds its PEFT name, jobs.new_job),
then unloads it. `POST /tokenize` and `POST /detokenize` have vLLM's shapes.

Run as:
    smolora serve runs/quickstart --adapter-dir runs --api-key secret
    curl localhost:8000/v1/adapters -H 'Authorization: Bearer secret' -d '{"name": "b", "path": "other"}'
"""

from __future__ import annotations

import asyncio
import logging
import re
import stat
import uuid
from pathlib import Path
from typing import Any

from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from smolora.errors import SmoLoRAError
from smolora.serve.batching import Served, between_steps, in_flight
from smolora.serve.jobs import chat_prompt_ids, check_model, prompt_ids, tokenize
from smolora.serve.openai import APIError, model_card
from smolora.serve.schema import ChatRequest, Message

log = logging.getLogger("smolora")

NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # safe in a URL path, a log line and a file name
MAX_FILES = 256  # an adapter directory holds a handful; more is not an adapter


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64, description="Letters, digits, '.', '_', '-'; 1 to 64 characters.")
    path: str = Field(max_length=4096, description="A run or adapter directory inside --adapter-dir.")


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = Field(None, min_length=1)


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[int]


def add_admin_routes(app: Any, guarded: list[Any]) -> None:
    """This file's routes in app.py's table, behind the API key when one is set."""
    app.add_api_route("/v1/adapters", load_adapter, methods=["POST"], dependencies=guarded, status_code=201)
    app.add_api_route("/v1/adapters/{name:path}", unload_adapter, methods=["DELETE"], dependencies=guarded)
    app.add_api_route("/tokenize", tokenize_route, methods=["POST"], dependencies=guarded)
    app.add_api_route("/detokenize", detokenize_route, methods=["POST"], dependencies=guarded)


def check_name(served: Served, name: str, busy: set[str]) -> None:
    if not NAME.fullmatch(name) or name in (".", ".."):
        raise APIError(
            400, "name: 1 to 64 letters, digits, '.', '_' or '-' (not '.' or '..')", "name", "invalid_name"
        )
    if name in served.names or name in busy:
        raise APIError(409, f"the model '{name}' already exists; DELETE it first", "name", "name_taken")


def inside(root: str | None, path: str) -> Path:
    """The adapter directory `path` names, if it and every file in it resolve inside `root` (403
    otherwise) and are plain directories and files (400: a FIFO would hang the loader)."""
    if root is None:
        raise APIError(
            403, "loading adapters is off; start the server with --adapter-dir DIR", "path", "forbidden"
        )
    base = Path(root).resolve()
    try:
        target = (base / path).resolve()  # an absolute path stays itself; symlinks resolved
    except (ValueError, OSError) as e:
        raise APIError(400, f"path: {e}", "path") from None
    if not target.is_relative_to(base):
        raise APIError(403, f"path: {path!r} is outside --adapter-dir", "path", "forbidden")
    if not target.is_dir():
        raise APIError(400, f"path: {path!r} is not a directory", "path", "not_a_directory")
    found = next((c for c in (target, target / "adapter") if (c / "smolora.json").exists()), None)
    if found is None:
        raise APIError(400, f"path: no adapter at {path!r} (no adapter/smolora.json)", "path", "no_adapter")
    files = list(found.resolve().iterdir())[: MAX_FILES + 1]
    if len(files) > MAX_FILES:
        raise APIError(400, f"path: {path!r} holds over {MAX_FILES} files; not an adapter", "path")
    for f in files:
        real = f.resolve()
        if not real.is_relative_to(base):
            raise APIError(
                403, f"path: {f.name} in {path!r} links outside --adapter-dir", "path", "forbidden"
            )
        try:
            mode = real.stat().st_mode
        except OSError:  # a dangling link
            mode = 0
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise APIError(400, f"path: {f.name} in {path!r} is not a plain file", "path")
    return found.resolve()


def load_in_worker(served: Served, name: str, adapter_dir: Path) -> dict[str, Any]:
    """Runs between decoding steps: load the adapter under a fresh PEFT name; undo a half load."""
    from smolora.serve.engine import mixed_adapters
    from smolora.serve.load import load_extra_adapter

    model = served.model
    peft_model = hasattr(model, "load_adapter") and hasattr(model, "disable_adapter")
    taken = set(getattr(model, "peft_config", {}) or {})
    peft_name = next(f"live{i}" for i in range(1, len(taken) + 2) if f"live{i}" not in taken)
    mixed = mixed_adapters(model)
    try:
        entry = load_extra_adapter(model, peft_model, served.meta, name, str(adapter_dir), peft_name)
        # The engine decided at start whether adapters share a forward; a new kind must not break that.
        if mixed and not mixed_adapters(model):
            raise SmoLoRAError(
                f"--adapter {name}: not a plain LoRA adapter; this server decodes plain LoRA adapters "
                "together, so serve it in its own process"
            )
    except BaseException:
        if peft_name in (getattr(model, "peft_config", None) or {}):
            model.delete_adapter(peft_name)
        raise
    model.eval()
    return entry


async def load_adapter(req: AdapterRequest, request: HTTPRequest):
    """Load a trained adapter under a new name; it is listed and answers at once."""
    state = request.app.state
    served, busy = state.served, state.adapters_busy
    check_name(served, req.name, busy)
    adapter_dir = await asyncio.to_thread(inside, state.adapter_dir, req.path)
    check_name(served, req.name, busy)  # again: another request may have taken it meanwhile
    busy.add(req.name)
    try:
        entry = await between_steps(served, lambda: load_in_worker(served, req.name, adapter_dir))
    except SmoLoRAError as e:
        raise APIError(400, str(e).removeprefix("--adapter "), "path", "invalid_adapter") from None
    except Exception:  # a broken adapter file: the details (paths, shapes) go to the log
        ref = uuid.uuid4().hex[:8]
        log.exception("loading adapter %s failed (ref %s)", req.name, ref)
        raise APIError(
            400,
            f"the adapter at {req.path!r} failed to load (ref {ref}); the server log has the details",
            "path",
        ) from None
    finally:
        busy.discard(req.name)
    served.names[req.name] = entry
    log.info("loaded adapter %s from %s", req.name, adapter_dir)
    return JSONResponse(model_card(req.name), status_code=201)


async def unload_adapter(name: str, request: HTTPRequest):
    """Unload an adapter: new requests get 404 at once, those already admitted finish first."""
    served = request.app.state.served
    entry = served.names.get(check_model(served, name))
    peft_name = entry["adapter"]
    if peft_name is None:
        raise APIError(400, f"'{name}' is the base model; only adapters can be unloaded", "name")
    if sum(e["adapter"] is not None for e in served.names.values()) <= 1:
        raise APIError(400, f"'{name}' is the last adapter on this base; stop the server instead", "name")
    del served.names[name]  # new requests: 404 (jobs.new_job checks again after tokenising)
    if served.default == name:
        served.default = next(
            (n for n, e in served.names.items() if e["adapter"] is None), next(iter(served.names))
        )
    request.app.state.adapters_busy.add(name)
    try:
        while in_flight(served, name):  # rows keep their PEFT name (Job.adapter) until they finish
            await asyncio.sleep(0.05)
        await between_steps(served, lambda: served.model.delete_adapter(peft_name))
    finally:
        request.app.state.adapters_busy.discard(name)
    log.info("unloaded adapter %s", name)
    return {"id": name, "object": "model", "deleted": True}


async def tokenize_route(req: TokenizeRequest, request: HTTPRequest):
    """A prompt's token ids as completions read it, or a conversation's as chat renders it (vLLM's shape)."""
    served = request.app.state.served
    name = check_model(served, req.model)
    if (req.prompt is None) == (req.messages is None):
        raise APIError(400, "send either prompt (a string) or messages (a list), not both", "prompt")
    if req.messages is not None:
        ids = await tokenize(served, chat_prompt_ids, name, ChatRequest(model=name, messages=req.messages))
    else:
        ids = (await tokenize(served, prompt_ids, [req.prompt]))[0]
    return {"tokens": ids, "count": len(ids), "max_model_len": served.context}


def decode(served: Served, tokens: list[int]) -> str:
    vocab = served.model.get_input_embeddings().num_embeddings
    bad = next((t for t in tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise APIError(400, f"tokens: id {bad} is outside this model's vocabulary of {vocab}", "tokens")
    with served.tok_lock:
        return served.tokenizer.decode(tokens)


async def detokenize_route(req: DetokenizeRequest, request: HTTPRequest):
    """Token ids back to text (vLLM's shape)."""
    served = request.app.state.served
    check_model(served, req.model)
    return {"prompt": await tokenize(served, decode, req.tokens)}
