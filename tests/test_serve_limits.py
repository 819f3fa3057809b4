"""Server hardening on a real `smolora serve` subprocess: body limit, max_tokens cap, timeouts, rate limit,
the bind warning, and a soak of well-formed and malformed requests with no 5xx and no crash."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import random
import socket

import httpx
import pytest

from helpers import start_server
from smolora.serve.limits import RateLimiter


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    proc, url, log = start_server(
        tiny_run, tmp_path_factory, "--max-body-kb", "4", "--max-tokens-cap", "16", "--rate-limit", "0"
    )
    yield {"url": url, "proc": proc, "log": log}
    proc.terminate()
    proc.wait(timeout=30)


def chat(url, body, timeout=60, headers=None):
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(
        f"{url}/v1/chat/completions",
        content=content,
        headers={"Content-Type": "application/json", **(headers or {})},
        timeout=timeout,
    )


def ok_body(**extra):
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": "What is 3 plus one?"}],
        "max_tokens": 4,
        **extra,
    }


def test_body_over_the_limit_is_413_whatever_content_length_says(server):
    big = json.dumps(ok_body(padding="x" * 8000))
    r = chat(server["url"], big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    # A chunked body (no Content-Length) is counted as it arrives.
    chunks = (big[i : i + 1000].encode() for i in range(0, len(big), 1000))
    r = httpx.post(
        f"{server['url']}/v1/chat/completions",
        content=chunks,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413
    assert chat(server["url"], ok_body()).status_code == 200  # the server is fine afterwards


def test_every_client_of_a_much_larger_body_reads_its_413(server):
    """Up to 16x the limit is read and dropped before answering, so no client sees a reset instead.

    The reset itself showed only under generation load (7 of 36 oversized requests in the
    1,000-request soak benchmark, 0 of 36 after the fix); here the drain path must answer every one.
    """
    big = json.dumps(ok_body(padding="x" * 60_000))  # 15x the 4 KB limit

    def send(_):
        try:
            return chat(server["url"], big, timeout=30).status_code
        except httpx.HTTPError as e:
            return type(e).__name__

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(send, range(40)))
    assert codes == [413] * 40, collections.Counter(codes)


def test_max_tokens_over_the_cap_is_a_400_naming_the_flag(server):
    r = chat(server["url"], ok_body(max_tokens=17))
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "max_tokens" and "--max-tokens-cap" in error["message"]
    assert chat(server["url"], ok_body(max_tokens=16)).status_code == 200


def test_soak_well_formed_and_malformed_requests_no_5xx(server):
    """200 requests at concurrency 16, a third of them malformed: each gets its 2xx or 4xx, never a 5xx."""
    url = server["url"]
    bad = [
        '{"model": "tiny", "messages": [',
        b"\xff\xfe\x00junk",
        json.dumps(ok_body(padding="y" * 5000)),
        json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        json.dumps(ok_body(max_tokens=10_000)),
        json.dumps(ok_body(temperature=-1)),
        json.dumps({"model": "tiny", "messages": "not a list"}),
        json.dumps({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        "[]",
        "null",
    ]
    rng = random.Random(0)
    requests = [rng.choice(bad) if i % 3 == 0 else json.dumps(ok_body(stream=i % 2 == 0)) for i in range(200)]

    def send(body):
        try:
            return chat(url, body, timeout=120).status_code
        except httpx.HTTPError as e:
            return type(e).__name__

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(send, requests))
    assert all(isinstance(c, int) for c in codes), codes
    assert not [c for c in codes if c >= 500]
    good = [
        c
        for body, c in zip(requests, codes, strict=True)
        if body in {json.dumps(ok_body(stream=s)) for s in (True, False)}
    ]
    assert good and all(c == 200 for c in good)
    assert {400, 404, 413} <= set(codes)
    assert server["proc"].poll() is None and httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"


def test_timeout_rate_limit_and_bind_warning(tiny_run, tmp_path_factory):
    """Another server: a batch window longer than the request timeout, 6 requests a minute, bound to 0.0.0.0."""
    proc, url, log = start_server(
        tiny_run,
        tmp_path_factory,
        "--host",
        "0.0.0.0",
        "--request-timeout",
        "1",
        "--batch-wait-ms",
        "5000",
        "--rate-limit",
        "6",
    )
    try:
        r = chat(url, ok_body())
        assert (
            r.status_code == 504 and r.json()["error"]["code"] == "timeout" and "--request-timeout" in r.text
        )
        trickle(url)
        # Malformed requests count too, and a forged X-Forwarded-For buys no new bucket: without
        # --forwarded-allow-ips the header is ignored, even from loopback (uvicorn's default trusts it).
        forged = [{"X-Forwarded-For": f"10.0.0.{i}"} for i in range(8)]
        codes = [chat(url, '{"broken', headers=h).status_code for h in forged]
        # Six a minute: the 504 and the trickle took two, four broken requests the rest (a refill takes 10 s).
        assert codes[:4] == [400] * 4 and set(codes[5:]) <= {400, 429} and codes.count(429) >= 2
        r = chat(url, ok_body())
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # liveness is never limited
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "serving on 0.0.0.0 without --api-key" in log.read_text()


def trickle(url):
    """A client that sends headers and then nothing gets a 408 instead of holding the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        reply = b""
        while chunk := s.recv(4096):  # the server closes the connection after its answer
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 408") and "request_timeout" in reply


def test_rate_limiter_refills_over_time(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("smolora.serve.limits.time.monotonic", lambda: now[0])
    limiter = RateLimiter(per_minute=2)
    assert limiter.take("a") is None and limiter.take("a") is None
    assert limiter.take("a") == pytest.approx(30.0)  # one token per 30 s
    assert limiter.take("b") is None  # buckets are per client
    now[0] += 30
    assert limiter.take("a") is None
    assert RateLimiter(per_minute=0).take("a") is None  # off
