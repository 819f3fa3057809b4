"""An OpenAI-compatible HTTP API for a run, with several adapters on one base and batched decoding.

Endpoints: GET /v1/models, POST /v1/chat/completions (plain or SSE streaming),
POST /v1/completions, POST/DELETE /v1/adapters, POST /tokenize and /detokenize, POST /v1/embeddings,
GET /health, and OpenAI's fine-tuning API (/v1/files, /v1/fine_tuning/jobs: finetune.py, on the job queue).
The request's `model` picks the base model or any loaded adapter; all adapters share one base
in memory (PEFT `load_adapter`; plain LoRA adapters and the base even share one batch).

Batching: requests wait in a queue (`batching.py`); admission counts rows (each prompt of a
list, times `n`): the queue holds 256, one client at most half of it (429 with Retry-After
beyond). Prompts are tokenised in a thread, so a long one never stalls the event loop. The
single worker is `engine.py`'s continuous batching (rows join at the next decoding step and
leave when they finish), or with `--batching static` `batching.py`'s one `generate()` per batch.
Each row keeps its own max_tokens, temperature, top_p, stop strings, seed and log-probability
settings; a row whose client went away is stopped at the next token, which frees its slot.

This file is the route table and `serve()`; the rest, one thing a file: `schema.py` (request
bodies), `routes.py` (the route functions), `jobs.py` (a request into queued rows), `engine.py`
and `pick.py` (decoding), `choices.py` and `stream.py` (rows back to the client, whole or
streamed), `openai.py` (every response, chunk and error shape), `load.py` (the models and
adapters), `admin.py` (adapters at run time, tokenize), `embeddings.py`, `limits.py` (body size, rate limit),
`vllm.py` (`--engine vllm`).

Errors follow OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with 4xx for
anything the client can fix, including unknown routes and methods; an unexpected failure is a
500 with a reference to the server log, never a traceback. `null` in any optional field means
its default, as in OpenAI's API. Loopback by default; `--api-key` requires `Authorization:
Bearer` (and hides the model names from /health); `X-Forwarded-For` counts only from the
proxies named by `--forwarded-allow-ips`.

Run as:
    smolora serve runs/quickstart --adapter other=runs/other --port 8000
    curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{"model": "quickstart", "messages": [{"role": "user", "content": "Hi"}]}'
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from fastapi import Depends, FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from smolora.errors import ConfigError
from smolora.serve.admin import add_admin_routes
from smolora.serve.batching import Served, batch_loop
from smolora.serve.embeddings import embeddings
from smolora.serve.engine import engine_loop, supports_continuous
from smolora.serve.finetune import add_finetune_routes, start_finetune, stop_finetune, uploads_apart
from smolora.serve.limits import body_limit, rate_limited
from smolora.serve.load import load_served
from smolora.serve.openai import APIError, error_response, validation_error
from smolora.serve.routes import auth, chat, completions, health, model, models
from smolora.serve.schema import ERRORS, READ_ERRORS, narrow_schema

log = logging.getLogger("smolora")


def create_app(
    served: Served, api_key: str | None = None, adapter_dir: str | None = None, jobs: dict | None = None
) -> Any:
    """The FastAPI app around a loaded `Served`: its route table and its errors in OpenAI's shape."""
    app = FastAPI(title="SmoLoRA", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.served, app.state.api_key = served, api_key  # what the routes read from request.app
    app.state.adapter_dir, app.state.adapters_busy = adapter_dir, set()  # admin.py: hot-loaded adapters
    app.state.jobs = jobs  # finetune.py: the job queue (root, template, workers); None: fine-tuning off
    app.openapi = functools.partial(narrowed_openapi, app)  # type: ignore[method-assign]
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, crash)
    guarded = [Depends(auth)]
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", models, methods=["GET"], dependencies=guarded, responses=READ_ERRORS)
    app.add_api_route(
        "/v1/models/{name:path}", model, methods=["GET"], dependencies=guarded, responses=READ_ERRORS
    )
    app.add_api_route("/v1/chat/completions", chat, methods=["POST"], dependencies=guarded, responses=ERRORS)
    app.add_api_route(
        "/v1/completions", completions, methods=["POST"], dependencies=guarded, responses=ERRORS
    )
    add_admin_routes(app, guarded)  # /v1/adapters, /tokenize, /detokenize
    app.add_api_route("/v1/embeddings", embeddings, methods=["POST"], dependencies=guarded, responses=ERRORS)
    add_finetune_routes(app, guarded)  # /v1/files, /v1/fine_tuning/jobs
    return app


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    """The single batching worker, for as long as the app runs."""
    served = app.state.served
    served.wake = asyncio.Event()
    if served.batching == "continuous" and not supports_continuous(served.model):
        log.warning("this model's attention (sliding window or recurrent layers) needs static batching")
        served.batching = "static"
    start_finetune(app, asyncio.get_running_loop())  # finished jobs' adapters first, then the job workers
    worker = asyncio.create_task((engine_loop if served.batching == "continuous" else batch_loop)(served))
    yield
    await stop_finetune(app)  # running jobs checkpoint and go back to the queue
    worker.cancel()


def narrowed_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        app.openapi_schema = narrow_schema(FastAPI.openapi(app), app.state.served)
    return app.openapi_schema


async def api_error(request: HTTPRequest, e: APIError):
    return error_response(e.status, e.message, e.param, e.code, e.headers)


async def invalid(request: HTTPRequest, e: RequestValidationError):
    return error_response(400, *validation_error(list(e.errors())))


async def http_error(request: HTTPRequest, e: HTTPException):
    """Starlette's own errors (unknown route, wrong method) in OpenAI's shape too."""
    message, code = str(e.detail), None
    if e.status_code == 404:
        message, code = (
            f"no route {request.url.path}; see /openapi.json for this server's routes",
            "not_found",
        )
    elif e.status_code == 405:
        message, code = f"{request.method} is not allowed on {request.url.path}", "method_not_allowed"
    return error_response(e.status_code, message, None, code, getattr(e, "headers", None))


async def crash(request: HTTPRequest, e: Exception):
    # The details (which may hold paths or data) go to the server log, not to the client.
    ref = uuid.uuid4().hex[:8]
    log.error("request %s failed (ref %s)", request.url.path, ref, exc_info=e)
    return error_response(
        500, f"internal error (ref {ref}); the server log has the details", None, "internal_error"
    )


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
    batching: str = "continuous",
    weight_layout: str = "auto",
    adapter_dir: str | None = None,
    jobs: dict | None = None,
) -> None:
    """Load, then serve until interrupted. `jobs`: {"root", "template", "workers", "max_file_bytes"}."""
    import uvicorn

    from smolora.model.load import physical_cores

    proxies = proxy_list(forwarded_allow_ips)

    if host not in LOOPBACK and not api_key:
        log.warning("serving on %s without --api-key: anyone who can reach this port can use the model", host)
    # The load runs on the thread every later forward pass runs on (Served.model_pool): torch work on
    # a second thread leaves a second OpenMP team behind, and decoding steps on the model thread then
    # measured 150-225 ms instead of 121-157 (SmolLM2-135M, 32 rows, 2 cores).
    pool = ThreadPoolExecutor(1, thread_name_prefix="smolora-model")
    pool.submit(torch.set_num_threads, threads or physical_cores()).result()
    served = pool.submit(load_served, model_or_run, adapters, layout=weight_layout).result()
    served.model_pool = pool
    served.max_batch, served.batch_wait, served.batching = max_batch, batch_wait_ms / 1000, batching
    served.max_tokens_cap, served.request_timeout = max_tokens_cap, request_timeout
    # Both wrap the whole app: a client over its rate, an oversized or a trickling body never reach
    # FastAPI (which parses JSON before any dependency runs, so a dependency would miss broken bodies).
    inner = create_app(served, api_key, adapter_dir, jobs)
    app = body_limit(inner, max_body_kb * 1024, read_timeout=min(30.0, request_timeout))
    if jobs is not None:  # uploads have their own cap (--max-file-mb), the rest keeps --max-body-kb
        big = body_limit(inner, jobs["max_file_bytes"] + (64 << 10), read_timeout=max(30.0, request_timeout))
        app = uploads_apart(app, big)
    app = rate_limited(app, rate_limit)
    log.info("serving %s on http://%s:%d/v1 (max batch %d)", ", ".join(served.names), host, port, max_batch)
    log.info("weights: %s", served.weight_layout)
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
