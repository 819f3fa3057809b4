"""A UI app served by a real uvicorn in a thread, for tests that need real sockets (client
disconnects, schemathesis over HTTP). Imported by test_ui_security.py and test_ui_fuzz.py.

Run as:
    with serve_in_thread(create_app(ws, token=TOKEN)) as base_url:
        httpx.get(base_url + "/api/info", headers={"Authorization": f"Bearer {TOKEN}"})
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
