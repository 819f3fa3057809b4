"""CLI commands the UI runs for the user: one subprocess each, no shell, output to a log file.

A job is a plain dict (argv, cwd, log path, the Popen, timestamps). The process writes into
a pipe, and a thread copies it to the log file line by line through `mask_text`, so no token
or key a subprocess prints ever reaches the disk. Its state is read from
the process itself: running, stopping, finished (exit 0), stopped (the user asked) or
failed (anything else, with the `error:` line and the log tail to show). Stopping sends
SIGINT, which training answers by saving a checkpoint and exiting; if the process is still
there after a grace period it gets a second SIGINT, then SIGKILL.

Run as:
    job = start_job("train", [sys.executable, "-m", "smolora.cli.main", "train", "my.yaml"], Path("."), Path("t.log"))
    print(job_state(job)["state"])
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from smolora.redact import mask_text

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cli_argv(*args: str) -> list[str]:
    """The same CLI a user types, run with this interpreter (so the UI and CLI never drift)."""
    return [sys.executable, "-m", "smolora.cli.main", *args]


def start_job(kind: str, argv: list[str], cwd: Path, log_path: Path, **meta: Any) -> dict[str, Any]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the file (and the browser) as they happen
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )
    copier = threading.Thread(target=copy_masked, args=(proc.stdout, log_path), daemon=True)
    copier.start()
    return {
        "id": uuid.uuid4().hex[:12],
        "kind": kind,
        "argv": argv,
        "cwd": str(cwd),
        "log": log_path,
        "proc": proc,
        "copier": copier,
        "started": time.time(),
        "ended": None,
        "stop_requested": False,
        **meta,
    }


def copy_masked(pipe: Any, log_path: Path, chunk: int = 65536) -> None:
    """Copy a process's output to `log_path`, each line masked, until the process closes it.

    Lines end at `\n` or `\r` (progress bars redraw with `\r`), so the log follows them live;
    a secret cannot straddle two writes because only whole lines are masked and written.
    """
    fd = pipe.fileno()
    rest = b""
    with open(log_path, "wb") as log:
        while True:
            data = os.read(fd, chunk)
            if not data:
                break
            rest += data
            cut = max(rest.rfind(b"\n"), rest.rfind(b"\r")) + 1
            if cut == 0 and len(rest) < 16 * chunk:
                continue  # no line end yet: wait for it (a huge unbroken line is written anyway)
            done, rest = (rest[:cut], rest[cut:]) if cut else (rest, b"")
            log.write(mask_text(done.decode("utf-8", errors="replace")).encode("utf-8"))
            log.flush()
        if rest:
            log.write(mask_text(rest.decode("utf-8", errors="replace")).encode("utf-8"))
    pipe.close()


def job_state(job: dict[str, Any]) -> dict[str, Any]:
    """What the browser needs to know about a job, as JSON-ready values."""
    rc = job["proc"].poll()
    if rc is None:
        state = "stopping" if job["stop_requested"] else "running"
    else:
        job["ended"] = job["ended"] or time.time()
        state = "finished" if rc == 0 else "stopped" if job["stop_requested"] else "failed"
    out: dict[str, Any] = {
        "id": job["id"],
        "kind": job["kind"],
        "state": state,
        "pid": job["proc"].pid,
        "returncode": rc,
        "command": display_command(job["argv"]),
        "started": job["started"],
        "elapsed": round((job["ended"] or time.time()) - job["started"], 1),
    }
    if state in ("failed", "stopped", "finished"):
        if not job.get("drained"):  # the last lines the process printed reach the file first
            job["copier"].join(timeout=5)  # (bounded: a grandchild may still hold the pipe)
            job["drained"] = True
        tail = log_tail(job["log"])
        out["log_tail"] = tail
        if state == "failed":
            out["error"] = error_line(tail) or f"the command exited with code {rc}"
    return out


def stop_job(job: dict[str, Any], grace_s: float = 30.0) -> None:
    """SIGINT now (a clean stop), a second SIGINT after `grace_s`, SIGKILL after twice that."""
    proc: subprocess.Popen = job["proc"]
    if proc.poll() is not None or job["stop_requested"]:
        return
    job["stop_requested"] = True
    proc.send_signal(signal.SIGINT)

    def escalate() -> None:
        for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGKILL, grace_s)):
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)

    threading.Thread(target=escalate, daemon=True).start()


def log_tail(path: Path, lines: int = 40, max_bytes: int = 64_000) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - max_bytes))
        text = f.read().decode("utf-8", errors="replace")
    text = ANSI.sub("", text).replace("\r", "\n")
    # What a subprocess printed goes to the browser: never with a token or key in it.
    return mask_text("\n".join(line for line in text.splitlines()[-lines:]))


def error_line(tail: str) -> str | None:
    """The CLI prints a SmoLoRAError as one `error: ...` line; a crash ends with the exception line."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]+(Error|Exception|Interrupt)\b", line):
            return line
    return lines[-1] if lines else None


def display_command(argv: list[str]) -> str:
    """`smolora train x.yaml` rather than `/long/path/python -m smolora.cli.main train x.yaml`."""
    import shlex

    if argv[1:3] == ["-m", "smolora.cli.main"]:
        argv = ["smolora", *argv[3:]]
    return mask_text(shlex.join(argv))


def stop_all(jobs: dict[str, dict[str, Any]], timeout_s: float = 15.0) -> None:
    """On UI shutdown: ask every running job to stop cleanly, and wait a little for them."""
    running = [j for j in jobs.values() if j["proc"].poll() is None]
    for job in running:
        stop_job(job, grace_s=timeout_s / 2)
    deadline = time.time() + timeout_s
    for job in running:
        try:
            job["proc"].wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            job["proc"].kill()
