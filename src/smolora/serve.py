"""An OpenAI-compatible HTTP API for a run, with several adapters on one base and batched decoding.

Endpoints: GET /v1/models, POST /v1/chat/completions (plain or SSE streaming),
POST /v1/completions, GET /health. The request's `model` picks the base model or any loaded
adapter; all adapters share one base in memory (PEFT `load_adapter` / `set_adapter`, the base
through `disable_adapter`).

Batching (`batching.py`): requests wait in a queue; a single worker takes the oldest
request plus every other waiting request for the same model (up to --max-batch) and decodes
them in one `generate()` call. Each row keeps its own max_tokens, temperature, top_p and stop strings; a
row whose client went away is stopped at the next token, which frees its slot. This is
static batching: requests arriving mid-batch wait for the next one.

Errors follow OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with 4xx for
anything the client can fix. Loopback by default; `--api-key` requires `Authorization: Bearer`.

Run as:
    smolora serve runs/quickstart --adapter other=runs/other --port 8000
    curl localhost:8000/v1/chat/completions -d '{"model": "quickstart", "messages": [{"role": "user", "content": "Hi"}]}'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import Request as HTTPRequest
from pydantic import BaseModel, ConfigDict, Field

from smolora.batching import Job, Served, active, batch_loop, cancel, submit
from smolora.errors import ExportError
from smolora.generate import to_messages
from smolora.limits import body_limit, rate_limited
from smolora.redact import mask_text

log = logging.getLogger("smolora")

MAX_TOKENS_CEILING = 32768  # schema bound; the model's context is checked per request


# --- request shapes (validated by pydantic; failures become 400s) ---------------------------


class BaseRequest(BaseModel):
    # Clients send fields we do not use (user, seed, presence_penalty, ...): accept, ignore.
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CEILING)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    ignore_eos: bool = Field(False, description="vLLM extension: decode through end-of-sequence.")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CEILING)
    logprobs: bool | None = None
    tools: list[Any] | None = None


class CompletionRequest(BaseRequest):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS_CEILING)  # OpenAI's default for completions
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = Field(None, ge=1, le=1)


class APIError(Exception):
    """An OpenAI-style error response."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --- the loaded models ---------------------------------------------------------------------


def adapter_meta(path: str | Path) -> tuple[Path, dict[str, Any]]:
    from smolora.model.load import find_adapter_dir, read_adapter_meta

    adapter_dir = find_adapter_dir(path)
    if adapter_dir is None:
        raise ExportError(f"--adapter {path}: no adapter there (no adapter/smolora.json); train a run first")
    return adapter_dir, read_adapter_meta(adapter_dir)


def load_served(
    model_or_run: str, adapters: dict[str, str] | None = None, device: str | None = None
) -> Served:
    """Load a run (its base plus adapter) or a plain model, then any extra adapters onto the same base."""
    from smolora.model.load import (
        find_adapter_dir,
        load_for_inference,
        pickle_allowed_by_env,
        unsafe_pickle_error,
        weights_format,
    )
    from smolora.model.store import resolve_model

    adapters = dict(adapters or {})
    primary = find_adapter_dir(model_or_run)
    if primary is None and adapters:
        # A plain base plus adapters: load the first adapter as the primary, same base checked below.
        first_name, first_path = next(iter(adapters.items()))
        first_dir, first_meta = adapter_meta(first_path)
        if resolve_model(first_meta["base_model"]) != resolve_model(model_or_run):
            raise ExportError(
                f"--adapter {first_name} was trained on {first_meta['base_model']}, not {model_or_run}"
            )
        adapters.pop(first_name)
        model, tokenizer, meta = load_for_inference(first_dir, device)
        primary_name = first_name
    else:
        model, tokenizer, meta = load_for_inference(model_or_run, device)
        run_path = Path(model_or_run)
        primary_name = (
            (run_path.parent.name if run_path.name == "adapter" else run_path.name) if primary else None
        )
    base_name = str(meta["base_model"])
    names: dict[str, dict[str, Any]] = {}
    peft_model = hasattr(model, "load_adapter") and hasattr(model, "disable_adapter")
    names[base_name] = {"adapter": None, "template": None, "system": None}
    if meta.get("adapter") is not None:
        names[primary_name or "adapter"] = {
            "adapter": "default" if peft_model else None,
            "template": meta.get("chat_template"),
            "system": meta.get("system_prompt"),
        }
        if not peft_model:  # full fine-tune: the weights are the model, there is no separate base
            names.pop(base_name)
    for i, (name, path) in enumerate(adapters.items()):
        adapter_dir, extra = adapter_meta(path)
        if not peft_model or not (adapter_dir / "adapter_config.json").exists():
            raise ExportError(
                f"--adapter {name}: only LoRA-style adapters can share a base (not full weights)"
            )
        same_base = resolve_model(extra["base_model"]) == resolve_model(base_name)
        same_surgery = (extra.get("drop_layers") or [], extra.get("keep_layers")) == (
            meta.get("drop_layers") or [],
            meta.get("keep_layers"),
        )
        if not (same_base and same_surgery):
            raise ExportError(
                f"--adapter {name}: trained on {extra['base_model']} (layer surgery "
                f"{extra.get('drop_layers')}/{extra.get('keep_layers')}), but the served base is {base_name} "
                f"({meta.get('drop_layers')}/{meta.get('keep_layers')}); serve it in its own process"
            )
        peft_name = f"adapter{i + 1}"  # PEFT names become module keys: no dots or dashes
        weights_format(adapter_dir, pickle_allowed_by_env(), "adapter")  # a pickle only with the opt-in
        try:
            model.load_adapter(str(adapter_dir), adapter_name=peft_name)
        except pickle.UnpicklingError as e:
            raise unsafe_pickle_error(adapter_dir, e) from None
        names[name] = {
            "adapter": peft_name,
            "template": extra.get("chat_template"),
            "system": extra.get("system_prompt"),
        }
    model.eval()
    default = primary_name if primary_name in names else next(iter(names))
    context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    return Served(model=model, tokenizer=tokenizer, names=names, default=default, context=context)


# --- the HTTP app ----------------------------------------------------------------------------


def flatten_content(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = [part.get("text", "") for part in content if part.get("type") == "text"]
    if len(texts) != len(content):
        raise APIError(400, "only text content parts are supported", "messages", "unsupported_content")
    return "".join(texts)


def check_model(served: Served, name: str | None) -> str:
    name = name or served.default
    if name not in served.names:
        raise APIError(
            404,
            f"The model '{name}' does not exist; this server has: {', '.join(served.names)}",
            "model",
            "model_not_found",
        )
    return name


def chat_prompt_ids(served: Served, name: str, req: ChatRequest) -> list[int]:
    entry = served.names[name]
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": flatten_content(m.content)}
        for m in req.messages
    ]
    messages = to_messages(messages, entry["system"])
    template = entry["template"] or served.tokenizer.chat_template
    try:
        with served.tok_lock:
            text = served.tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=True
            )
            return served.tokenizer(text, add_special_tokens=False)["input_ids"]
    except Exception as e:  # the template rejected the conversation (role order, system turn, ...)
        raise APIError(400, f"the chat template cannot render these messages: {e}", "messages") from None


def new_job(served: Served, name: str, ids: list[int], req: BaseRequest, max_tokens: int | None) -> Job:
    room = served.context - len(ids)
    if room < 1:
        raise APIError(
            400,
            f"the prompt is {len(ids)} tokens; this model's context is {served.context}",
            "messages",
            "context_length_exceeded",
        )
    if max_tokens is not None and max_tokens > served.max_tokens_cap:
        raise APIError(
            400,
            f"max_tokens={max_tokens} is over this server's cap of {served.max_tokens_cap} (--max-tokens-cap)",
            "max_tokens",
            "max_tokens_too_large",
        )
    if max_tokens is not None and max_tokens > room:
        raise APIError(
            400,
            f"max_tokens={max_tokens} plus the {len(ids)}-token prompt exceeds the context of {served.context}",
            "max_tokens",
            "context_length_exceeded",
        )
    if len(served.pending) >= served.max_queue:
        raise APIError(
            429, "too many requests waiting; retry shortly", None, "queue_full", headers={"Retry-After": "1"}
        )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise APIError(400, "stop takes up to 4 non-empty strings", "stop")
    return Job(
        model=name,
        ids=ids,
        max_tokens=max_tokens or min(room, served.max_tokens_cap, 512),
        temperature=req.temperature,
        top_p=req.top_p,
        stop=stop,
        ignore_eos=req.ignore_eos,
        loop=asyncio.get_running_loop(),
    )


async def next_event(job: Job, request: Any, deadline: float) -> tuple[str, str] | None:
    """The job's next event, ("timeout", "") past `deadline`, or None once the client has gone away."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return ("timeout", "")
        try:
            return await asyncio.wait_for(job.events.get(), timeout=min(1.0, left))
        except asyncio.TimeoutError:  # noqa: UP041 (a different class on Python 3.10)
            if await request.is_disconnected():
                return None


def timeout_message(served: Served) -> str:
    return (
        f"the request took longer than this server's limit of {served.request_timeout:g} s "
        "(--request-timeout); ask for fewer max_tokens or retry when the server is less busy"
    )


async def collect(served: Served, job: Job, request: Any) -> str:
    """Wait for a non-streamed job; a client that leaves cancels it like a stream would."""
    deadline = time.monotonic() + served.request_timeout
    try:
        while True:
            event = await next_event(job, request, deadline)
            if event is None:
                return "cancelled"
            kind, value = event
            if kind == "timeout":
                raise APIError(504, timeout_message(served), None, "timeout")
            if kind == "error":
                raise APIError(500, value, None, "generation_failed")
            if kind == "done":
                return value
    finally:
        cancel(served, job)


def usage(jobs: list[Job]) -> dict[str, int]:
    prompt = sum(len(j.ids) for j in jobs)
    completion = sum(len(j.out_ids) for j in jobs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def stream(
    served: Served, job: Job, request: Any, chunk: Any, include_usage: bool
) -> AsyncIterator[str]:
    """SSE events for one job; a client that disconnects cancels the job (its slot is freed)."""
    deadline = time.monotonic() + served.request_timeout
    try:
        yield sse(chunk(None, "", first=True))
        while True:
            event = await next_event(job, request, deadline)
            if event is None:
                return
            kind, value = event
            if kind == "delta":
                yield sse(chunk(None, value))
            elif kind == "timeout":
                yield sse(error_body(timeout_message(served), "server_error", None, "timeout"))
                break
            elif kind == "error":
                yield sse(error_body(value, "server_error", None, "generation_failed"))
                break
            else:
                yield sse(chunk(value, ""))
                if include_usage:
                    yield sse({**chunk(None, ""), "choices": [], "usage": usage([job])})
                break
        yield sse("[DONE]")
    finally:
        cancel(served, job)


def create_app(served: Served, api_key: str | None = None) -> Any:
    """The FastAPI app around a loaded `Served`."""
    from fastapi import Depends, FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        served.wake = asyncio.Event()
        worker = asyncio.create_task(batch_loop(served))
        yield
        worker.cancel()

    app = FastAPI(title="SmoLoRA", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def _api_error(request: HTTPRequest, e: APIError):
        kind = "invalid_request_error" if e.status < 500 else "server_error"
        if e.status == 401:
            kind = "authentication_error"
        return JSONResponse(
            error_body(e.message, kind, e.param, e.code), status_code=e.status, headers=e.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: HTTPRequest, e: RequestValidationError):
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            message = f"We could not parse the JSON body of your request ({first.get('ctx', {}).get('error', 'invalid JSON')})"
            return JSONResponse(error_body(message, "invalid_request_error", None, "invalid_json"), 400)
        loc = [str(p) for p in first["loc"] if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first['msg']}" if param else first["msg"]
        return JSONResponse(error_body(message, "invalid_request_error", param, first["type"]), 400)

    @app.exception_handler(HTTPException)
    async def _http(request: HTTPRequest, e: HTTPException):
        return JSONResponse(error_body(str(e.detail), "invalid_request_error"), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: HTTPRequest, e: Exception):
        log.exception("request failed")
        return JSONResponse(error_body(mask_text(f"internal error: {e}"), "server_error"), status_code=500)

    async def auth(request: HTTPRequest) -> None:
        """The API key, compared in constant time (the rate limit runs before, in limits.py)."""
        given = request.headers.get("authorization", "")
        if api_key is not None and not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(
                401, "missing or wrong API key: send 'Authorization: Bearer KEY'", None, "invalid_api_key"
            )

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "models": list(served.names),
            "queued": len(served.pending),
            "active": active(served),
            "max_batch": served.max_batch,
            "device": str(next(served.model.parameters()).device),
            **served.stats,
        }

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models():
        return {"object": "list", "data": [model_card(n) for n in served.names]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(auth)])
    async def model(name: str):
        return model_card(check_model(served, name))

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat(req: ChatRequest, request: HTTPRequest):
        if req.logprobs or req.tools:
            raise APIError(
                400,
                "logprobs and tools are not supported by this server",
                "logprobs" if req.logprobs else "tools",
            )
        name = check_model(served, req.model)
        job = new_job(
            served, name, chat_prompt_ids(served, name, req), req, req.max_completion_tokens or req.max_tokens
        )
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(reason: str | None, text: str, first: bool = False) -> dict[str, Any]:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
            }

        submit(served, job)
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                stream(served, job, request, chunk, include_usage), media_type="text/event-stream"
            )
        reason = await collect(served, job, request)
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": job.text},
                    "logprobs": None,
                    "finish_reason": reason,
                }
            ],
            "usage": usage([job]),
        }

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(req: CompletionRequest, request: HTTPRequest):
        if req.echo or req.logprobs:
            raise APIError(
                400, "echo and logprobs are not supported by this server", "echo" if req.echo else "logprobs"
            )
        name = check_model(served, req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts or (req.stream and len(prompts) > 1):
            raise APIError(
                400, "prompt must be a string or a non-empty list (one prompt when streaming)", "prompt"
            )
        with served.tok_lock:
            encoded = [served.tokenizer(p)["input_ids"] for p in prompts]
        jobs = [new_job(served, name, ids, req, req.max_tokens) for ids in encoded]
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(reason: str | None, text: str, first: bool = False) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": name,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
            }

        for job in jobs:
            submit(served, job)
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                stream(served, jobs[0], request, chunk, include_usage), media_type="text/event-stream"
            )
        reasons = await asyncio.gather(*(collect(served, j, request) for j in jobs))
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": name,
            "choices": [
                {"index": i, "text": j.text, "logprobs": None, "finish_reason": r}
                for i, (j, r) in enumerate(zip(jobs, reasons, strict=True))
            ],
            "usage": usage(jobs),
        }

    return app


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "smolora"}


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def serve(
    model_or_run: str,
    adapters: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 8,
    batch_wait_ms: float = 20.0,
    threads: int | None = None,
    max_tokens_cap: int = 2048,
    request_timeout: float = 300.0,
    rate_limit: float = 0,
    max_body_kb: int = 1024,
) -> None:
    """Load, then serve until interrupted."""
    import uvicorn

    from smolora.model.load import physical_cores

    if host not in LOOPBACK and not api_key:
        log.warning("serving on %s without --api-key: anyone who can reach this port can use the model", host)
    torch.set_num_threads(threads or physical_cores())
    served = load_served(model_or_run, adapters)
    served.max_batch, served.batch_wait = max_batch, batch_wait_ms / 1000
    served.max_tokens_cap, served.request_timeout = max_tokens_cap, request_timeout
    # Both wrap the whole app: a client over its rate, an oversized or a trickling body never reach
    # FastAPI (which parses JSON before any dependency runs, so a dependency would miss broken bodies).
    app = create_app(served, api_key)
    app = body_limit(app, max_body_kb * 1024, read_timeout=min(30.0, request_timeout))
    app = rate_limited(app, rate_limit)
    log.info("serving %s on http://%s:%d/v1 (max batch %d)", ", ".join(served.names), host, port, max_batch)
    # timeout_keep_alive: idle keep-alive connections are closed after 5 s, so idle clients hold no slots.
    uvicorn.run(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2, timeout_keep_alive=5
    )
