"""A queued job's tokens back to its client: waited for whole (`collect`) or streamed as server-sent
events (`stream`), within --request-timeout, and cancelled (its batch slot freed) once the client leaves.

Run as:
    reasons = await collect(served, jobs, request)                      # {0: "stop", 1: "length"}
    StreamingResponse(stream(served, choices, request, reply, False), media_type="text/event-stream")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from smolora.serve.batching import Job, Served, cancel
from smolora.serve.choices import Choice
from smolora.serve.openai import APIError, error_body, response, sse, usage

DISCONNECT_CHECK_S = 0.5  # how often a waiting request asks whether its client is still there


async def events(queue: asyncio.Queue, request: Any, deadline: float) -> AsyncIterator[tuple[int, str, str]]:
    """A request's events (choice index, kind, value), then (-1, "timeout", "") past `deadline`;
    it just ends once the client has gone.

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
            yield (-1, "timeout", "")
            return
        try:
            yield await asyncio.wait_for(queue.get(), timeout=min(check_at, deadline) - now)
        except asyncio.TimeoutError:  # noqa: UP041 (a different class on Python 3.10)
            continue


def timeout_message(served: Served) -> str:
    return (
        f"the request took longer than this server's limit of {served.request_timeout:g} s "
        "(--request-timeout); ask for fewer max_tokens or retry when the server is less busy"
    )


async def collect(served: Served, jobs: list[Job], request: Any) -> dict[int, str] | None:
    """Wait for every job of a request (they share one queue): {choice index: finish reason},
    or None once the client went away; a client that leaves cancels them like a stream would."""
    deadline = time.monotonic() + served.request_timeout
    reasons: dict[int, str] = {}
    try:
        async for index, kind, value in events(jobs[0].events, request, deadline):
            if kind == "timeout":
                raise APIError(504, timeout_message(served), None, "timeout")
            if kind == "error":
                raise APIError(500, value, None, "generation_failed")
            if kind == "done":
                reasons[index] = value
                if len(reasons) == len(jobs):
                    return reasons
        return None  # the client went away
    finally:
        for job in jobs:
            cancel(served, job)


async def stream(
    served: Served,
    choices: list[Choice],
    request: Any,
    reply: dict[str, Any],
    include_usage: bool,
    n: int = 1,
) -> AsyncIterator[str]:
    """SSE events for a request's choices; a client that disconnects cancels them (slots freed)."""
    deadline = time.monotonic() + served.request_timeout
    jobs = [c.job for c in choices]
    by_index = {c.job.index: c for c in choices}
    left = len(jobs)
    try:
        opening = [{"index": c.job.index, "text": ""} for c in choices]
        yield sse(response(reply, opening, chunk=True, first=True))
        for c in choices:
            for piece in c.opening():
                yield sse(response(reply, [piece], chunk=True))
        async for index, kind, value in events(jobs[0].events, request, deadline):
            if kind == "delta":
                for piece in by_index[index].delta(value):
                    yield sse(response(reply, [piece], chunk=True))
            elif kind == "timeout":
                yield sse(error_body(timeout_message(served), "server_error", None, "timeout"))
                break
            elif kind == "error":
                yield sse(error_body(value, "server_error", None, "generation_failed"))
                break
            else:
                for piece in by_index[index].closing(value):
                    yield sse(response(reply, [piece], chunk=True))
                left -= 1
                if left:
                    continue
                if include_usage:
                    yield sse(response(reply, [], usage(jobs, n), chunk=True))
                break
        else:
            return  # the client went away
        yield sse("[DONE]")
    finally:
        for job in jobs:
            cancel(served, job)
