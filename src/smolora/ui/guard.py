"""Who may talk to the UI: a launch token, the Host check, the Origin check and anti-framing headers.

Anyone who can reach the port (another user of the machine, the network when bound off
loopback, a web page in the user's own browser) must not read the workspace or start jobs:

- A random token per launch, printed in the URL as Jupyter does (`/?token=...`). A visit with
  it sets an HttpOnly, SameSite=Strict cookie and redirects to the clean URL; every `/api`
  route then needs that cookie or `Authorization: Bearer TOKEN` (else 401).
- The Host header must be a loopback name, the bound name or an `--allowed-host`: a
  DNS-rebinding page reaches 127.0.0.1 under its own name and is refused.
- A state-changing request whose Origin is not this UI's own is refused (403), and so is one
  without the `X-SmoLoRA: 1` header, which a cross-site form cannot send.
- Every response forbids framing (clickjacking) and content sniffing.

Run as:
    app.add_middleware(guard, token=new_token(), hosts=allowed_hosts("127.0.0.1"))
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse

LOOPBACK = ["127.0.0.1", "localhost", "::1"]
WILDCARDS = {"0.0.0.0", "::", ""}
CSRF_HEADER = "x-smolora"
WRITES = {"POST", "PUT", "DELETE", "PATCH"}
MIN_TOKEN = 16
HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token URL never leaks to a page a report links to
}


def new_token() -> str:
    return secrets.token_urlsafe(24)


def allowed_hosts(bind: str, extra: list[str] | None = None) -> list[str]:
    """Loopback names, the bound name (unless it is a wildcard) and each `--allowed-host`."""
    names = [*LOOPBACK, *([] if bind in WILDCARDS else [bind]), *(extra or [])]
    return list(dict.fromkeys(h.strip().lower().strip("[]") for h in names if h.strip()))


def host_name(netloc: str) -> str:
    """`[::1]:7860` -> `::1`, `Example.COM:80` -> `example.com`."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def cookie_name(request: Request) -> str:
    # Cookies ignore ports: two UIs on one machine each keep their own.
    return f"smolora_ui_{request.url.port or 80}"


def has_token(request: Request, token: str) -> bool:
    auth = request.headers.get("authorization", "")
    given = (
        auth[7:].strip() if auth.lower().startswith("bearer ") else request.cookies.get(cookie_name(request))
    )
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def refusal(request: Request, token: str, hosts: list[str]) -> Any:
    """The response that turns this request away, or None when it may go on."""
    host = request.headers.get("host", "")
    if host_name(host) not in hosts:
        return _error(400, f"Host {host!r} is not allowed; start smolora ui with --allowed-host NAME")
    path = request.url.path
    given = request.query_params.get("token")
    if given is not None and request.method == "GET" and not path.startswith("/api"):
        if not hmac.compare_digest(given.encode(), token.encode()):
            return _error(401, "wrong token; open the URL smolora ui printed")
        query = urlencode([(k, v) for k, v in parse_qsl(request.url.query) if k != "token"])
        clean = RedirectResponse(path + (f"?{query}" if query else ""), status_code=303)
        clean.set_cookie(cookie_name(request), token, httponly=True, samesite="strict", path="/")
        return clean
    write = request.method in WRITES
    origin = request.headers.get("origin")
    # Same origin means the same host:port the browser asked for (the Host header, checked above).
    if write and origin is not None and urlsplit(origin).netloc.lower() != host.lower():
        return _error(403, f"Origin {origin!r} is not this UI; requests must come from its own page")
    if (path.startswith("/api") or path == "/openapi.json") and not has_token(request, token):
        return _error(401, "missing or wrong token: open the URL smolora ui printed (.../?token=...)")
    if write and request.headers.get(CSRF_HEADER) != "1":
        return _error(403, "missing X-SmoLoRA: 1 header")
    return None


def guard(app: Any, token: str, hosts: list[str]) -> Any:
    """ASGI middleware (pure, so streamed answers and client disconnects pass through untouched)."""

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    if name == "Content-Security-Policy" and name.lower() in headers:
                        # Keep the route's own policy (a sandboxed report) and add the framing rule.
                        headers[name] = f"{headers[name]}; {value}"
                    elif name.lower() not in headers:
                        headers[name] = value
            await send(message)

        turned_away = refusal(Request(scope), token, hosts)
        if turned_away is not None:
            return await turned_away(scope, receive, send_with_headers)
        await app(scope, receive, send_with_headers)

    return middleware


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
