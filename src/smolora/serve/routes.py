"""The server's routes: plain functions that find the loaded models (`Served`) and the API key in
`request.app.state`; app.py's route table says which path calls which.

A completion request becomes rows of the shared queue (jobs.py: one per prompt and choice),
then `answer` queues them and replies in OpenAI's shape (openai.py): a stream of the single
row, or every choice at once.

Run as:
    app.add_api_route("/v1/chat/completions", chat, methods=["POST"], dependencies=[Depends(auth)])
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from fastapi import Request as HTTPRequest
from fastapi.responses import StreamingResponse

from smolora.serve.batching import Job, active, queued, submit
from smolora.serve.jobs import admit, chat_prompt_ids, check_model, client_of, new_job, prompt_ids, tokenize
from smolora.serve.openai import APIError, model_card, new_reply, response, usage
from smolora.serve.schema import BaseRequest, ChatRequest, CompletionRequest
from smolora.serve.stream import collect, stream


def authorized(request: HTTPRequest) -> bool:
    """The API key, compared in constant time (the rate limit runs before, in limits.py)."""
    api_key = request.app.state.api_key
    given = request.headers.get("authorization", "")
    return api_key is None or secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode())


async def auth(request: HTTPRequest) -> None:
    if not authorized(request):
        raise APIError(
            401, "missing or wrong API key: send 'Authorization: Bearer KEY'", None, "invalid_api_key"
        )


# The routes' docstrings and names are the OpenAPI schema's descriptions and operation ids.


async def health(request: HTTPRequest):
    """Liveness and load, open to probes; the model names only to those who may use them."""
    served = request.app.state.served
    state = {
        "status": "ok",
        "queued": queued(served),
        "active": active(served),
        "max_batch": served.max_batch,
        "device": str(next(served.model.parameters()).device),
        **served.stats,
    }
    return {**state, "models": list(served.names)} if authorized(request) else state


async def models(request: HTTPRequest):
    return {"object": "list", "data": [model_card(n) for n in request.app.state.served.names]}


async def model(name: str, request: HTTPRequest):
    return model_card(check_model(request.app.state.served, name))


async def chat(req: ChatRequest, request: HTTPRequest):
    served = request.app.state.served
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
    return await answer(request, req, new_reply("chat", name), jobs, n)


async def completions(req: CompletionRequest, request: HTTPRequest):
    served = request.app.state.served
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
    return await answer(request, req, new_reply("completion", name), jobs, n)


async def answer(
    request: HTTPRequest, req: BaseRequest, reply: dict[str, Any], jobs: list[Job], n: int
) -> Any:
    """Queue the jobs, then reply: an SSE stream of the one job, or every choice once all are done."""
    served = request.app.state.served
    for job in jobs:
        submit(served, job)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            stream(served, jobs[0], request, reply, include_usage), media_type="text/event-stream"
        )
    reasons = await asyncio.gather(*(collect(served, j, request) for j in jobs))
    choices = [(j.text, r) for j, r in zip(jobs, reasons, strict=True)]
    return response(reply, choices, usage(jobs, n))
