"""An OpenAI-compatible HTTP API for a run, with several adapters on one base and batched decoding.

Endpoints: GET /v1/models, POST /v1/chat/completions (plain or SSE streaming),
POST /v1/completions, GET /health. The request's `model` picks the base model or any loaded
adapter; all adapters share one base in memory (PEFT `load_adapter` / `set_adapter`, the base
through `disable_adapter`).

Batching (`batching.py`): requests wait in a queue; a single worker takes the oldest
request plus every other waiting request for the same model (up to --max-batch) and decodes
them in one `generate()` call. Admission counts rows (each prompt of a list, times `n`): the
queue holds 256, one client at most half of it (429 with Retry-After beyond). Prompts are
tokenised in a thread, so a long one never stalls the event loop. Each row keeps its own max_tokens, temperature, top_p and stop strings; a
row whose client went away is stopped at the next token, which frees its slot. This is
static batching: requests arriving mid-batch wait for the next one.

Errors follow OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with 4xx for
anything the client can fix, including unknown routes and methods; an unexpected failure is a
500 with a reference to the server log, never a traceback. `null` in any optional field means
its default, as in OpenAI's API. Loopback by default; `--api-key` requires `Authorization:
Bearer` (and hides the model names from /health); `X-Forwarded-For` counts only from the
proxies named by `--forwarded-allow-ips`.

Run as:
    smolora serve runs/quickstart --adapter other=runs/other --port 8000
    curl localhost:8000/v1/chat/completions -d '{"model": "quickstart", "messages": [{"role": "user", "content": "Hi"}]}'
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import pickle
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import Request as HTTPRequest
from pydantic import BaseModel, ConfigDict, Field

from smolora.errors import ConfigError, ExportError
from smolora.generate import to_messages
from smolora.serve.batching import Job, Served, active, batch_loop, cancel, queued, submit
from smolora.serve.limits import body_limit, rate_limited

log = logging.getLogger("smolora")

MAX_TOKENS_CEILING = 32768  # schema bound; the model's context is checked per request
MAX_PROMPTS = 64  # prompts in one /v1/completions list; each is a row of the shared queue
MAX_N = 16  # choices per prompt
MAX_STOPS, MAX_STOP_CHARS = 4, 256  # stop strings are matched after every token of every row
DISCONNECT_CHECK_S = 0.5  # how often a waiting request asks whether its client is still there


# --- request shapes (validated by pydantic; failures become 400s) ---------------------------
# Every optional field is nullable: OpenAI's API (and clients built on it) send null for "the
# default", so None is resolved to the default where the value is used, never refused.

Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Prompt = Annotated[str, Field(min_length=1)]  # an empty prompt gives the model nothing to continue


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool | None = None


class BaseRequest(BaseModel):
    # Clients send fields we do not use (user, seed, presence_penalty, ...): accept, ignore.
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CEILING)
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default 1; below 1e-5 greedy.")
    top_p: float | None = Field(None, ge=0.0, le=1.0, description="Default 1.")
    n: int | None = Field(None, ge=1, le=MAX_N, description="Choices per prompt (default 1; 1 to stream).")
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOPS)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = Field(None, description="vLLM extension: decode through end-of-sequence.")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"] = Field(description="Only text content parts are supported.")
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None


class ChatRequest(BaseRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CEILING)
    logprobs: bool | None = None
    tools: list[Any] | None = None


class CompletionRequest(BaseRequest):
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=MAX_PROMPTS)]
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CEILING, description="Default 16, as OpenAI's.")
    echo: bool | None = None
    logprobs: int | None = None
    best_of: int | None = Field(None, ge=1, le=1)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# Documented per route, so the OpenAPI schema says what a client (or a fuzzer) may get back.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in [
        (400, "bad request: the message names the field"),
        (401, "missing or wrong API key"),
        (404, "unknown model or route"),
        (413, "request body over --max-body-kb"),
        (429, "rate limit, queue full or this client's share of the queue used (see Retry-After)"),
        (504, "over --request-timeout"),
    ]
}
READ_ERRORS = {status: ERRORS[status] for status in (401, 404, 429)}


def narrow_schema(schema: dict[str, Any], served: Served) -> dict[str, Any]:
    """FastAPI's OpenAPI schema, narrowed to this server: its model names and its max_tokens cap,
    so clients (and fuzzers) see what it really accepts instead of any string and 32768."""
    names = {"enum": list(served.names)}
    most = max(1, min(served.max_tokens_cap, served.context - 1))
    for body in ("ChatRequest", "CompletionRequest"):
        fields = schema["components"]["schemas"][body]["properties"]
        fields["model"]["anyOf"] = [names, {"type": "null"}]
        for key in ("max_tokens", "max_completion_tokens"):
            for option in fields.get(key, {}).get("anyOf", []):
                if option.get("type") == "integer":
                    option["maximum"] = most
    for parameter in schema["paths"]["/v1/models/{name}"]["get"]["parameters"]:
        parameter["schema"] = {**parameter["schema"], **names}
    return schema


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


def flatten_content(content: str | list[TextPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text for part in content)  # pydantic checked each part: type "text", text a string


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
    """Render and tokenise a conversation (runs in served.tok_pool, off the event loop)."""
    entry = served.names[name]
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": flatten_content(m.content)}
        for m in req.messages
    ]
    if not any(m["content"] for m in messages):
        raise APIError(400, "every message is empty; send some text to answer", "messages", "empty_prompt")
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


def prompt_ids(served: Served, prompts: list[str]) -> list[list[int]]:
    """Tokenise completion prompts (runs in served.tok_pool, off the event loop)."""
    with served.tok_lock:
        return [served.tokenizer(p)["input_ids"] for p in prompts]


async def tokenize(served: Served, fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(served.tok_pool, fn, served, *args)


def client_of(request: HTTPRequest) -> str:
    """The client's address: the peer, or X-Forwarded-For from a --forwarded-allow-ips proxy (uvicorn)."""
    return request.client.host if request.client else "?"


def admit(served: Served, client: str, rows: int, param: str) -> None:
    """Room in the queue for `rows` more rows from `client`: the whole queue, and half of it per client."""
    share = max(1, served.max_queue // 2)  # so one client alone can never starve the others
    if rows > share:
        raise APIError(
            400,
            f"this request asks for {rows} completions (prompts x n); one client may queue at most {share}",
            param,
            "too_many_completions",
        )
    retry = {"Retry-After": "1"}
    if queued(served) + rows > served.max_queue:
        raise APIError(429, "too many requests waiting; retry shortly", None, "queue_full", headers=retry)
    if served.waiting.get(client, 0) + rows > share:
        raise APIError(
            429,
            f"this client already has {served.waiting[client]} completions waiting (the most is {share}); "
            "retry when some are done",
            None,
            "client_queue_full",
            headers=retry,
        )


def new_job(
    served: Served,
    name: str,
    ids: list[int],
    req: BaseRequest,
    max_tokens: int | None,
    client: str,
    param: str,
) -> Job:
    if not ids:
        raise APIError(400, "the prompt is empty after tokenisation; send some text", param, "empty_prompt")
    room = served.context - len(ids)
    if room < 1:
        raise APIError(
            400,
            f"the prompt is {len(ids)} tokens; this model's context is {served.context}",
            param,
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
    return Job(
        model=name,
        ids=ids,
        max_tokens=max_tokens or min(room, served.max_tokens_cap, 512),
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),  # lengths checked by pydantic
        ignore_eos=bool(req.ignore_eos),
        loop=asyncio.get_running_loop(),
        client=client,
    )


async def events(job: Job, request: Any, deadline: float) -> AsyncIterator[tuple[str, str]]:
    """The job's events, then ("timeout", "") past `deadline`; it just ends once the client has gone.

    The client is asked every DISCONNECT_CHECK_S even while tokens flow: a plain request gets a
    token event every few milliseconds, and a check made only when none arrived never ran.
    """
    check_at = time.monotonic() + DISCONNECT_CHECK_S
    while True:
        now = time.monotonic()
        if now >= check_at:
            if await request.is_disconnected():
                return
            check_at = now + DISCONNECT_CHECK_S
        if now >= deadline:
            yield ("timeout", "")
            return
        try:
            yield await asyncio.wait_for(job.events.get(), timeout=min(check_at, deadline) - now)
        except asyncio.TimeoutError:  # noqa: UP041 (a different class on Python 3.10)
            continue


def timeout_message(served: Served) -> str:
    return (
        f"the request took longer than this server's limit of {served.request_timeout:g} s "
        "(--request-timeout); ask for fewer max_tokens or retry when the server is less busy"
    )


async def collect(served: Served, job: Job, request: Any) -> str:
    """Wait for a non-streamed job; a client that leaves cancels it like a stream would."""
    deadline = time.monotonic() + served.request_timeout
    try:
        async for kind, value in events(job, request, deadline):
            if kind == "timeout":
                raise APIError(504, timeout_message(served), None, "timeout")
            if kind == "error":
                raise APIError(500, value, None, "generation_failed")
            if kind == "done":
                return value
        return "cancelled"  # the client went away
    finally:
        cancel(served, job)


def usage(jobs: list[Job], n: int = 1) -> dict[str, int]:
    prompt = sum(len(j.ids) for j in jobs[::n])  # each prompt once, however many choices it has
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
        async for kind, value in events(job, request, deadline):
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
        else:
            return  # the client went away
        yield sse("[DONE]")
    finally:
        cancel(served, job)


def validation_error(errors: list[dict[str, Any]]) -> tuple[str, str | None, str]:
    """(message, param, code) of pydantic's most specific error, its path without union branch names."""
    if any(e["type"] == "json_invalid" for e in errors):
        first = next(e for e in errors if e["type"] == "json_invalid")
        detail = first.get("ctx", {}).get("error", "invalid JSON")
        return f"We could not parse the JSON body of your request ({detail})", None, "invalid_json"
    # A union reports one error per branch (`prompt.str`, `prompt.list[str].0`). The deepest one
    # says what is wrong (the 3rd content part's text is a number, not "content is not a string"),
    # and among equals one that is not "wrong type" (an empty list is too short, not "not a string").
    first = max(errors, key=lambda e: (len(e["loc"]), not e["type"].endswith("_type")))
    loc = [str(p) for p in first["loc"][1:] if not is_branch(p)] if first["loc"][:1] == ("body",) else []
    param = ".".join(loc) or None
    return (f"{param}: {first['msg']}" if param else first["msg"]), param, first["type"]


def is_branch(part: Any) -> bool:
    """pydantic's name for a union branch in an error path: `str`, `constrained-str`, `list[str]`, `TextPart`."""
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool") or "[" in part or "-" in part or part[:1].isupper()
    )


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

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = narrow_schema(FastAPI.openapi(app), served)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    def error(status: int, message: str, param: str | None, code: str | None, headers: Any = None) -> Any:
        kind = (
            "authentication_error"
            if status == 401
            else ("server_error" if status >= 500 else "invalid_request_error")
        )
        return JSONResponse(error_body(message, kind, param, code), status_code=status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(request: HTTPRequest, e: APIError):
        return error(e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: HTTPRequest, e: RequestValidationError):
        return error(400, *validation_error(list(e.errors())))

    @app.exception_handler(HTTPException)
    async def _http(request: HTTPRequest, e: HTTPException):
        """Starlette's own errors (unknown route, wrong method) in OpenAI's shape too."""
        message, code = str(e.detail), None
        if e.status_code == 404:
            message, code = (
                f"no route {request.url.path}; see /openapi.json for this server's routes",
                "not_found",
            )
        elif e.status_code == 405:
            message, code = f"{request.method} is not allowed on {request.url.path}", "method_not_allowed"
        return error(e.status_code, message, None, code, getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: HTTPRequest, e: Exception):
        # The details (which may hold paths or data) go to the server log, not to the client.
        ref = uuid.uuid4().hex[:8]
        log.error("request %s failed (ref %s)", request.url.path, ref, exc_info=e)
        return error(
            500, f"internal error (ref {ref}); the server log has the details", None, "internal_error"
        )

    def authorized(request: HTTPRequest) -> bool:
        """The API key, compared in constant time (the rate limit runs before, in limits.py)."""
        given = request.headers.get("authorization", "")
        return api_key is None or secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode())

    async def auth(request: HTTPRequest) -> None:
        if not authorized(request):
            raise APIError(
                401, "missing or wrong API key: send 'Authorization: Bearer KEY'", None, "invalid_api_key"
            )

    @app.get("/health")
    async def health(request: HTTPRequest):
        """Liveness and load, open to probes; the model names only to those who may use them."""
        state = {
            "status": "ok",
            "queued": queued(served),
            "active": active(served),
            "max_batch": served.max_batch,
            "device": str(next(served.model.parameters()).device),
            **served.stats,
        }
        return {**state, "models": list(served.names)} if authorized(request) else state

    @app.get("/v1/models", dependencies=[Depends(auth)], responses=READ_ERRORS)
    async def models():
        return {"object": "list", "data": [model_card(n) for n in served.names]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(auth)], responses=READ_ERRORS)
    async def model(name: str):
        return model_card(check_model(served, name))

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)], responses=ERRORS)
    async def chat(req: ChatRequest, request: HTTPRequest):
        if req.logprobs or req.tools:
            raise APIError(
                400,
                "logprobs and tools are not supported by this server",
                "logprobs" if req.logprobs else "tools",
            )
        name, n, client = check_model(served, req.model), req.n or 1, client_of(request)
        if req.stream and n > 1:
            raise APIError(400, "n > 1 is not supported when streaming", "n")
        admit(served, client, n, "n")  # before the tokeniser's work, and again before the queue
        ids = await tokenize(served, chat_prompt_ids, name, req)
        max_tokens = req.max_completion_tokens or req.max_tokens
        jobs = [new_job(served, name, ids, req, max_tokens, client, "messages") for _ in range(n)]
        admit(served, client, n, "n")
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

        for job in jobs:
            submit(served, job)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                stream(served, jobs[0], request, chunk, include_usage), media_type="text/event-stream"
            )
        reasons = await asyncio.gather(*(collect(served, j, request) for j in jobs))
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": j.text},
                    "logprobs": None,
                    "finish_reason": r,
                }
                for i, (j, r) in enumerate(zip(jobs, reasons, strict=True))
            ],
            "usage": usage(jobs, n),
        }

    @app.post("/v1/completions", dependencies=[Depends(auth)], responses=ERRORS)
    async def completions(req: CompletionRequest, request: HTTPRequest):
        if req.echo or req.logprobs:
            raise APIError(
                400, "echo and logprobs are not supported by this server", "echo" if req.echo else "logprobs"
            )
        name, n, client = check_model(served, req.model), req.n or 1, client_of(request)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt  # 1..MAX_PROMPTS, by pydantic
        if req.stream and len(prompts) * n > 1:
            raise APIError(400, "streaming takes one prompt and n = 1", "prompt" if len(prompts) > 1 else "n")
        rows = len(prompts) * n  # every prompt, every choice: a row of the shared queue
        admit(served, client, rows, "prompt" if n == 1 else "n")
        encoded = await tokenize(served, prompt_ids, prompts)
        max_tokens = 16 if req.max_tokens is None else req.max_tokens  # OpenAI's default for completions
        jobs = [
            new_job(served, name, ids, req, max_tokens, client, "prompt") for ids in encoded for _ in range(n)
        ]
        admit(served, client, rows, "prompt" if n == 1 else "n")
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
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
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
            "usage": usage(jobs, n),
        }

    return app


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "smolora"}


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def proxy_list(value: str | None) -> list[str]:
    """--forwarded-allow-ips as a list of addresses/networks ('*': any), checked before the model loads."""
    items = [item.strip() for item in (value or "").split(",") if item.strip()]
    for item in items:
        try:
            if item != "*":
                ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(
                f"--forwarded-allow-ips: {item!r} is not an IP address or network "
                "(e.g. 127.0.0.1 or 10.0.0.0/8, comma-separated)"
            ) from None
    return items


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
    forwarded_allow_ips: str | None = None,
) -> None:
    """Load, then serve until interrupted."""
    import uvicorn

    from smolora.model.load import physical_cores

    proxies = proxy_list(forwarded_allow_ips)

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
    # X-Forwarded-For decides who a client is (rate limit, queue share), so uvicorn honours it only
    # from the named proxies; its own default trusts loopback, where any local process can forge it.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=2,
        timeout_keep_alive=5,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=",".join(proxies) or None,
    )
