"""The Data view's server side: `inspect_data` (what `smolora data inspect` prints) plus a histogram.

The data settings and the tokenizer come from the Train form's current values, so what is
shown is exactly what that training run would see. Tokenizers are kept per model name.

The UI never reads a data file itself: `inspect_in_worker` hands the request to a worker
process (`python -m smolora.ui.inspect`, kept between requests so its tokenizers stay
loaded) whose address space is capped at what it needs after its imports plus
`MEMORY_HEADROOM`. A file too big for that, a hang past `TIMEOUT_S` or a crash costs the
worker (restarted on the next request), never the UI; the browser gets a one-line error.

Run as:
    report = inspect_in_worker(Path("data/qa.jsonl"), ["model.name=tiny-llama"], Path("."))
    print(report["format"], report["histogram"])
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
from fastapi import HTTPException

from smolora.config import RunConfig, apply_overrides, build_config
from smolora.errors import SmoLoRAError
from smolora.redact import mask_text

_tokenizers: dict[str, Any] = {}
_lock = threading.Lock()
# Virtual memory the worker may use beyond its own footprint after importing torch and
# transformers (that footprint differs a lot between builds: CUDA maps gigabytes).
MEMORY_HEADROOM = min(4 * 2**30, psutil.virtual_memory().total // 2)
TIMEOUT_S = 600.0  # the first use of the bundled model converts it (tens of seconds)
_worker: dict[str, subprocess.Popen | None] = {"proc": None}
_worker_lock = threading.Lock()


def tokenizer_for(name: str, revision: str | None = None) -> Any:
    from smolora.model.load import load_tokenizer
    from smolora.model.store import resolve_model

    with _lock:
        if name not in _tokenizers:
            _tokenizers[name] = load_tokenizer(resolve_model(name, revision))
        return _tokenizers[name]


def histogram(lengths: list[int], max_length: int, bins: int = 24) -> dict[str, Any]:
    """Equal-width bins from 0 to max(longest, max_length), so the max_length line always fits."""
    top = max([max_length, *lengths]) if lengths else max_length
    width = max(1, -(-top // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min(bins - 1, n // width)] += 1
    return {
        "width": width,
        "counts": counts,
        "max_length": max_length,
        "over": sum(n > max_length for n in lengths),
    }


def token_lengths(path: str, cfg: RunConfig, tokenizer: Any) -> list[int]:
    """Untruncated token lengths of every example (inspect_data reports only their summary)."""
    from smolora.data.encode import load_examples
    from smolora.data.render import encode_examples

    examples, *_ = load_examples(path, cfg.data)
    d = cfg.data
    _, info = encode_examples(examples, tokenizer, d.max_length, d.train_on, d.chunk_overlap)
    return info["lengths"]  # measured before truncation


def inspect_file(path: Path, overrides: list[str], workspace: Path, n_examples: int = 3) -> dict[str, Any]:
    from smolora.data import inspect_data
    from smolora.ui.workspace import model_ref

    cfg = build_config(apply_overrides({}, [*overrides, f"data.path={path}"]), "form")
    tokenizer = tokenizer_for(model_ref(workspace, cfg.model.name), cfg.model.revision)
    report = inspect_data(str(path), cfg, tokenizer, n_examples=n_examples)
    try:
        lengths = token_lengths(str(path), cfg, tokenizer)
        report["histogram"] = histogram(lengths, cfg.data.max_length)
    except Exception as e:  # the histogram is a nicety; the report above is what matters
        report["histogram"] = None
        report["histogram_error"] = f"{type(e).__name__}: {e}"
    report["model"] = cfg.model.name
    return report


# --- the worker process -----------------------------------------------------------------------


def inspect_in_worker(path: Path, overrides: list[str], workspace: Path, n_examples: int = 3) -> dict:
    """`inspect_file` run in the capped worker; its failures become HTTP errors with one line."""
    request = {"path": str(path), "overrides": overrides, "workspace": str(workspace), "examples": n_examples}
    with _worker_lock:  # one inspection at a time: the worker answers requests in order
        proc = _worker["proc"]
        if proc is None or proc.poll() is not None:
            proc = _worker["proc"] = subprocess.Popen(
                [sys.executable, "-m", "smolora.ui.inspect", str(MEMORY_HEADROOM)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "MALLOC_ARENA_MAX": "2"},  # fewer reserved arenas under the cap
            )
        ready: list = []
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT_S)
            line = proc.stdout.readline() if ready else b""
        except OSError:  # the worker died between requests
            line = b""
        reply = json.loads(line) if line else None
        if reply is None or reply.get("fatal"):
            stop_worker()
    if reply is None:
        if not ready:
            raise HTTPException(504, f"{path.name}: inspecting took over {TIMEOUT_S:.0f} s; stopped")
        raise HTTPException(
            500, f"{path.name}: the Data view's worker died (exit {proc.returncode}); try a smaller file"
        )
    if "error" in reply:
        raise HTTPException(reply["status"], reply["error"])
    return reply["report"]


def stop_worker() -> None:
    proc, _worker["proc"] = _worker["proc"], None
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def cap_memory(headroom: int) -> None:
    """Limit this process's address space to what it uses now plus `headroom` (Linux/macOS)."""
    import resource

    used = psutil.Process().memory_info().vms
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = used + headroom if hard == resource.RLIM_INFINITY else min(hard, used + headroom)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def answer(request: dict) -> dict:
    """One request's reply: the report, or an HTTP status and a one-line error."""
    from smolora.ui.workspace import OutsideWorkspace

    try:
        args = Path(request["path"]), request["overrides"], Path(request["workspace"]), request["examples"]
        return {"report": inspect_file(*args)}
    except MemoryError:
        headroom = MEMORY_HEADROOM // 2**20
        message = f"reading it needs more than the Data view's {headroom} MiB; use `smolora data inspect`"
        return {"status": 413, "error": f"{Path(request['path']).name}: {message}", "fatal": True}
    except OutsideWorkspace as e:
        return {"status": 403, "error": str(e)}
    except (SmoLoRAError, ValueError) as e:
        return {"status": 400, "error": mask_text(str(e))}
    except Exception as e:  # anything else is still one line for the browser, and the UI lives on
        return {"status": 500, "error": mask_text(f"{type(e).__name__}: {e}"), "fatal": True}


def worker_main(headroom: int) -> None:
    global MEMORY_HEADROOM
    MEMORY_HEADROOM = headroom
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into the replies
    import torch  # noqa: F401  (imported before the cap, which is headroom over this footprint)

    import smolora.data  # noqa: F401
    import smolora.model.load  # noqa: F401

    cap_memory(headroom)
    for line in sys.stdin:
        replies.write(json.dumps(answer(json.loads(line)), default=str) + "\n")
        replies.flush()


if __name__ == "__main__":
    worker_main(int(sys.argv[1]))
