"""From a validated request to rows of the shared queue: which served model, the prompt's token ids
(tokenised in a thread, off the event loop), room in the queue for this client, and one `Job` per
choice with its own max_tokens, temperature, top-p and stop strings.

Run as:
    admit(served, client, rows=2, param="n")                      # 400 / 429 when there is no room
    ids = await tokenize(served, chat_prompt_ids, name, req)
    jobs = new_jobs(served, name, [ids], req, max_tokens=32, client=client, param="messages")
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from fastapi import Request as HTTPRequest

from smolora.generate import to_messages
from smolora.serve.batching import Job, Served, queued
from smolora.serve.openai import APIError
from smolora.serve.schema import BaseRequest, ChatRequest, TextPart


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


def chat_messages(req: ChatRequest) -> list[dict[str, Any]]:
    """The request's messages as the chat template wants them (developer is the system turn)."""
    messages = []
    for m in req.messages:
        message: dict[str, Any] = {
            "role": "system" if m.role == "developer" else m.role,
            "content": flatten_content(m.content),
        }
        if m.tool_calls:
            message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        for key in ("tool_call_id", "name"):
            if getattr(m, key) is not None:
                message[key] = getattr(m, key)
        messages.append(message)
    if not any(m["content"] or m.get("tool_calls") for m in messages):
        raise APIError(400, "every message is empty; send some text to answer", "messages", "empty_prompt")
    return messages


def chat_prompt_ids(served: Served, name: str, req: ChatRequest) -> list[int]:
    """Render and tokenise a conversation, with its tools (runs in served.tok_pool, off the event loop)."""
    entry = served.names[name]
    template = entry["template"] or served.tokenizer.chat_template
    messages, extra = to_messages(chat_messages(req), entry["system"]), {}
    if req.tools or any(m.tool_calls for m in req.messages):
        from smolora.serve.tools import template_inputs

        messages, extra = template_inputs(messages, req.tools, req.tool_choice, template)
    try:
        with served.tok_lock:
            text = served.tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=True, **extra
            )
            return served.tokenizer(text, add_special_tokens=False)["input_ids"]
    except Exception as e:  # the template rejected the conversation (role order, system turn, ...)
        raise APIError(400, f"the chat template cannot render these messages: {e}", "messages") from None


def prompt_ids(served: Served, prompts: list[str] | list[list[int]]) -> list[list[int]]:
    """Tokenise completion prompts, or check token-id prompts (runs in served.tok_pool, off the event loop)."""
    vocab = served.model.get_input_embeddings().num_embeddings
    for p in prompts:
        if not isinstance(p, str) and max(p) >= vocab:
            raise APIError(
                400, f"prompt: token id {max(p)} is outside this model's vocabulary of {vocab}", "prompt"
            )
    with served.tok_lock:
        return [served.tokenizer(p)["input_ids"] if isinstance(p, str) else list(p) for p in prompts]


def prompt_texts(served: Served, prompts: list[str] | list[list[int]]) -> list[str]:
    """What an echoed prompt reads as: the text sent, or the decoded token ids."""
    with served.tok_lock:
        return [p if isinstance(p, str) else served.tokenizer.decode(p) for p in prompts]


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


def new_jobs(
    served: Served,
    name: str,
    prompts: list[list[int]],
    req: BaseRequest,
    max_tokens: int | None,
    client: str,
    param: str,
    logprobs: int | None = None,
    echo: bool = False,
    constraint: Any = None,
) -> list[Job]:
    """Every prompt times every choice, indexed as OpenAI does (prompt i, choice j: i * n + j),
    sharing one event queue; each with its own seeded generator and grammar state."""
    n = req.n or 1
    if served.batching == "static" and (
        logprobs is not None or constraint is not None or req.seed is not None
    ):
        raise APIError(
            400,
            "logprobs, echo, seed, response_format and tools need continuous batching; "
            "restart the server without --batching static",
            "logprobs" if logprobs is not None else None,
        )
    events: asyncio.Queue = asyncio.Queue()
    jobs = []
    for i, ids in enumerate(prompts):
        for j in range(n):
            job = new_job(served, name, ids, req, max_tokens, client, param)
            job.index, job.events, job.logprobs = i * n + j, events, logprobs
            job.echo_logprobs = echo and logprobs is not None
            if req.seed is not None:  # choice j draws from seed + j: n choices differ, reruns repeat
                job.generator = torch.Generator().manual_seed((req.seed + j) % 2**63)
            job.constraint = constraint() if constraint is not None else None
            jobs.append(job)
    return jobs


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
    if max_tokens == 0 and not getattr(req, "echo", False):
        raise APIError(400, "max_tokens=0 asks for nothing; it is only useful with echo", "max_tokens")
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
        max_tokens=min(room, served.max_tokens_cap, 512) if max_tokens is None else max_tokens,
        # null means OpenAI's default, 1 (as generate()'s); `greedy` in generate.py says when it is greedy
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),  # lengths checked by pydantic
        ignore_eos=bool(req.ignore_eos),
        loop=asyncio.get_running_loop(),
        client=client,
        adapter=served.names[check_model(served, name)]["adapter"],  # 404 once unloaded
    )
