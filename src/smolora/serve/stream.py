"""A queued job's tokens back to its client: waited for whole (`collect`) or streamed as server-sent
events (`stream`), within --request-timeout, and cancelled (its batch slot freed) once the client leaves.

Run as:
    reason = await collect(served, job, request)                        # "stop", "length", "cancelled"
    StreamingResponse(stream(served, job, request, reply, include_usage=False), media_type="text/event-stream")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from smolora.serve.batching import Job, Served, cancel
from smolora.serve.openai import APIError, error_body, response, sse, usage

DISCONNECT_CHECK_S = 0.5  # how often a waiting request asks whether its client is still there


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


async def stream(
    served: Served, job: Job, request: Any, reply: dict[str, Any], include_usage: bool
) -> AsyncIterator[str]:
    """SSE events for one job; a client that disconnects cancels the job (its slot is freed)."""
    deadline = time.monotonic() + served.request_timeout
    try:
        yield sse(response(reply, [("", None)], chunk=True, first=True))
        async for kind, value in events(job, request, deadline):
            if kind == "delta":
                yield sse(response(reply, [(value, None)], chunk=True))
            elif kind == "timeout":
                yield sse(error_body(timeout_message(served), "server_error", None, "timeout"))
                break
            elif kind == "error":
                yield sse(error_body(value, "server_error", None, "generation_failed"))
                break
            else:
                yield sse(response(reply, [("", value)], chunk=True))
                if include_usage:
                    yield sse(response(reply, [], usage([job]), chunk=True))
                break
        else:
            return  # the client went away
        yield sse("[DONE]")
    finally:
        cancel(served, job)
