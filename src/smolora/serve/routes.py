"""The server's routes: plain functions that find the loaded models (`Served`) and the API key in
`request.app.state`; app.py's route table says which path calls which.

A completion request becomes rows of the shared queue (jobs.py: one per prompt and choice, with
their log-probability, seed and grammar settings), then `answer` queues them and replies in
OpenAI's shape (choices.py, openai.py): a stream of every choice, or all of them at once.

Run as:
    app.add_api_route("/v1/chat/completions", chat, methods=["POST"], dependencies=[Depends(auth)])
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import Request as HTTPRequest
from fastapi.responses import StreamingResponse

from smolora.serve.batching import Served, active, queued, submit
from smolora.serve.choices import Choice
from smolora.serve.jobs import (
    admit,
    chat_prompt_ids,
    check_model,
    client_of,
    new_jobs,
    prompt_ids,
    prompt_texts,
    tokenize,
)
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
        "weight_layout": served.weight_layout,
        **served.stats,
    }
    return {**state, "models": list(served.names)} if authorized(request) else state


async def models(request: HTTPRequest):
    return {"object": "list", "data": [model_card(n) for n in request.app.state.served.names]}


async def model(name: str, request: HTTPRequest):
    return model_card(check_model(request.app.state.served, name))


async def chat(req: ChatRequest, request: HTTPRequest):
    served = request.app.state.served
    name, n, client = check_model(served, req.model), req.n or 1, client_of(request)
    tools = req.tools if req.tools and req.tool_choice != "none" else None
    constraint, ToolStream = grammar_of(served, req, tools)
    admit(served, client, n, "n")  # before the tokeniser's work, and again before the queue
    ids = await tokenize(served, chat_prompt_ids, name, req)
    max_tokens = req.max_completion_tokens or req.max_tokens
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    jobs = new_jobs(served, name, [ids], req, max_tokens, client, "messages", logprobs, constraint=constraint)
    admit(served, client, n, "n")
    choices = [Choice(served, j, "chat", tools=ToolStream(tools) if tools else None) for j in jobs]
    return await answer(request, req, new_reply("chat", name), choices, n)


async def completions(req: CompletionRequest, request: HTTPRequest):
    served = request.app.state.served
    name, n, client = check_model(served, req.model), req.n or 1, client_of(request)
    prompt = req.prompt
    # One text, a list of texts, one list of token ids, or a list of them (lm-eval sends token ids).
    prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
    rows = len(prompts) * n  # every prompt, every choice: a row of the shared queue
    admit(served, client, rows, "prompt" if n == 1 else "n")
    encoded = await tokenize(served, prompt_ids, prompts)
    echoes = await tokenize(served, prompt_texts, prompts) if req.echo else [None] * len(prompts)
    max_tokens = 16 if req.max_tokens is None else req.max_tokens  # OpenAI's default for completions
    jobs = new_jobs(served, name, encoded, req, max_tokens, client, "prompt", req.logprobs, bool(req.echo))
    admit(served, client, rows, "prompt" if n == 1 else "n")
    choices = [Choice(served, j, "completion", echo=echoes[j.index // n]) for j in jobs]
    return await answer(request, req, new_reply("completion", name), choices, n)


def grammar_of(served: Served, req: ChatRequest, tools: list | None) -> tuple[Any, Any]:
    """The grammar a request's answers must follow (response_format, or a tool call that
    tool_choice forces), and the tool-call parser class when tools are offered."""
    stream_class, forced = None, None
    if tools:
        from smolora.serve.tools import ToolStream, tool_schema

        stream_class, forced = ToolStream, tool_schema(req.tools, req.tool_choice)
    response_format = req.response_format.model_dump(by_alias=True) if req.response_format else None
    if forced is None and (response_format is None or response_format["type"] == "text"):
        return None, stream_class
    from smolora.serve.grammar import constraint_factory

    vocab = served.model.get_output_embeddings().out_features
    return constraint_factory(served.tokenizer, vocab, response_format, forced), stream_class


async def answer(
    request: HTTPRequest, req: BaseRequest, reply: dict[str, Any], choices: list[Choice], n: int
) -> Any:
    """Queue the jobs, then reply: an SSE stream of every choice, or all of them once all are done."""
    served = request.app.state.served
    jobs = [c.job for c in choices]
    for job in jobs:
        submit(served, job)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            stream(served, choices, request, reply, include_usage, n), media_type="text/event-stream"
        )
    reasons = await collect(served, jobs, request)
    if reasons is None:  # the client went away: nobody reads this
        return response(reply, [])
    return response(reply, [c.whole(reasons[c.job.index]) for c in choices], usage(jobs, n))
