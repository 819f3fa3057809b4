"""What the server refuses before any model work: big or slow bodies, and clients asking too often.

- `body_limit`: an ASGI wrapper that reads the request body itself, up to `max_bytes`
  (413 beyond, whatever Content-Length claims) and within `read_timeout` seconds (408: a
  client trickling bytes cannot hold a connection forever), then hands it on.
- `rate_limited`: a token bucket per client address on the /v1 routes (`per_minute` requests
  per minute, bursts up to the same number); an empty bucket answers 429 with Retry-After.
  Every request counts, a malformed or unauthenticated one too: they cost the server work.
  Keyed by address, not by API key, so sending made-up keys does not buy new buckets; the
  address is the peer's, or X-Forwarded-For's only from --forwarded-allow-ips proxies (uvicorn
  rewrites scope["client"]), so a forged header does not buy new buckets either. A bucket idle
  long enough to refill is forgotten, and at most MAX_CLIENTS are kept: memory stays bounded.

The max_tokens cap and the per-request generation timeout live in jobs.py and stream.py, next
to the request they judge.

Run as:
    app = rate_limited(body_limit(create_app(served), max_bytes=1 << 20, read_timeout=30), per_minute=600)
    limiter = RateLimiter(per_minute=300)
    wait = limiter.take("10.0.0.7")   # None: go ahead; else seconds until the next request may pass
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import OrderedDict
from typing import Any

DRAIN_FACTOR = 16  # an oversized body up to 16x the limit is read and dropped before the 413
MAX_CLIENTS = 10_000  # rate-limit buckets kept at once


def error_response(status: int, message: str, code: str, headers: list | None = None) -> tuple[dict, bytes]:
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    )
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"connection", b"close"), *(headers or [])],
    }
    return start, body.encode()


def body_limit(app: Any, max_bytes: int, read_timeout: float) -> Any:
    """Wrap an ASGI app so no request body beyond `max_bytes` or slower than `read_timeout` reaches it."""

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await app(scope, receive, send)

        async def refuse(status: int, message: str, code: str) -> None:
            start, body = error_response(status, message, code)
            await send(start)
            await send({"type": "http.response.body", "body": body})

        async def drain(more: bool) -> None:
            # Closing a socket with unread bytes makes the kernel send a reset, which can destroy
            # the 413 before the client reads it (1 in 5 oversized requests in the soak test).
            # Reading and discarding a bounded amount first lets the client see the answer.
            left, until = DRAIN_FACTOR * max_bytes, time.monotonic() + min(read_timeout, 5.0)
            while more and left > 0 and time.monotonic() < until:
                try:
                    message = await asyncio.wait_for(receive(), timeout=max(until - time.monotonic(), 0.001))
                except asyncio.TimeoutError:  # noqa: UP041
                    return
                if message["type"] == "http.disconnect":
                    return
                left -= len(message.get("body", b""))
                more = message.get("more_body", False)

        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
            if declared.isdigit() and int(declared) <= DRAIN_FACTOR * max_bytes:
                await drain(more=True)
            return await refuse(
                413,
                f"request body over this server's limit of {max_bytes} bytes (--max-body-kb)",
                "body_too_large",
            )
        body, deadline = bytearray(), time.monotonic() + read_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:  # noqa: UP041 (a different class on Python 3.10)
                return await refuse(
                    408, f"request body not received within {read_timeout:g} s", "request_timeout"
                )
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > max_bytes:
                await drain(message.get("more_body", False))
                return await refuse(
                    413,
                    f"request body over this server's limit of {max_bytes} bytes (--max-body-kb)",
                    "body_too_large",
                )
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # afterwards: the disconnect, for streaming responses

        return await app(scope, replay, send)

    return wrapped


class RateLimiter:
    """Token buckets, one per client; `per_minute=0` turns limiting off."""

    def __init__(self, per_minute: float, max_clients: int = MAX_CLIENTS):
        self.rate = per_minute / 60.0
        self.capacity = max(per_minute, 1.0)
        self.refill = self.capacity / self.rate if self.rate > 0 else 0.0  # seconds from empty to full
        self.max_clients = max_clients
        # client -> (tokens, last refill time), least recently seen first
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.lock = threading.Lock()

    def take(self, client: str) -> float | None:
        """None when the request may pass; otherwise seconds until it may."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        with self.lock:
            self.prune(now)
            tokens, last = self.buckets.pop(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            passed = tokens >= 1
            self.buckets[client] = (tokens - 1 if passed else tokens, now)  # now the most recent
            return None if passed else (1 - tokens) / self.rate

    def prune(self, now: float) -> None:
        """Forget buckets from the least recently seen: any idle for a full refill (it would be full
        again, the same as no bucket), and beyond `max_clients` the oldest (it starts full next time).
        Stops at the first bucket still refilling, so each call costs what it removes."""
        while self.buckets:
            client, (_, last) = next(iter(self.buckets.items()))
            if now - last < self.refill and len(self.buckets) < self.max_clients:
                return
            del self.buckets[client]


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def rate_limited(app: Any, per_minute: float) -> Any:
    """Wrap an ASGI app so each client address gets `per_minute` requests a minute on /v1 (0: no limit)."""
    limiter = RateLimiter(per_minute)

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            return await app(scope, receive, send)  # /health stays open for liveness probes
        client = (scope.get("client") or ("?", 0))[0]
        wait = limiter.take(client)
        if wait is None:
            return await app(scope, receive, send)
        start, body = error_response(
            429,
            f"rate limit of {per_minute:g} requests per minute reached; retry in {retry_after(wait)} s",
            "rate_limit_exceeded",
            headers=[(b"retry-after", retry_after(wait).encode())],
        )
        await send(start)
        await send({"type": "http.response.body", "body": body})

    return wrapped
