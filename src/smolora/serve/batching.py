"""Batched decoding for the server: a queue of requests, one generate() call per batch.

A single worker (`batch_loop`) takes the oldest waiting job plus every other waiting job for
the same served model, up to `max_batch`, and decodes them together. The waiting jobs live in
one insertion-ordered dict per served model, so taking a batch, cancelling a queued job and
counting a client's jobs never scan the whole queue. Each row keeps its own
max_tokens, temperature, top-p and stop strings (`RowSampling`, `BatchControl`); text is
streamed back to the request's asyncio queue as it grows; a cancelled row stops at the next
token, which frees its slot. Static batching: jobs arriving mid-batch wait for the next one.

Run as:
    served = Served(model, tokenizer, names={"base": {"adapter": None, ...}}, default="base")
    asyncio.create_task(batch_loop(served)); submit(served, job); ... cancel(served, job)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from smolora.generate import end_token_ids, greedy, plain_generation

log = logging.getLogger("smolora")

ORDER = itertools.count()  # arrival order across the per-model queues


@dataclass(eq=False)  # identity, not field equality: jobs are keys of the queue dicts
class Job:
    """One request's row in a batch, and the channel its tokens go back through."""

    model: str
    ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    ignore_eos: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    out_ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters already streamed
    text: str = ""
    finish: str | None = None
    cancelled: bool = False
    client: str = ""  # who asked (address), for the per-client share of the queue
    seq: int = field(default_factory=lambda: next(ORDER))
    index: int = 0  # the choice's index in its response (the choices of one request share `events`)
    logprobs: int | None = None  # None: no log-probabilities; k: each token's and its top k
    echo_logprobs: bool = False  # also the prompt's own log-probabilities (completions, echo)
    entries: list[tuple] = field(default_factory=list)  # (token, logprob, top) per generated token
    prompt_logprobs: list[tuple] = field(default_factory=list)  # the same for the prompt (echo)
    generator: torch.Generator | None = None  # the row's own random stream (`seed`), else torch's
    constraint: Any = None  # grammar.Constraint: response_format / a forced tool call
    adapter: str | None = None  # peft name taken at admission (None: its name's), kept past a DELETE


@dataclass
class Served:
    """The model in memory, what each served name means, and the batching state."""

    model: Any
    tokenizer: Any
    names: dict[str, dict[str, Any]]  # served name -> {"adapter": peft name or None, template, system}
    default: str
    max_batch: int = 8
    batching: str = "continuous"  # or "static" (this file's batch_loop; kept to measure against)
    batch_wait: float = 0.02
    max_queue: int = 256
    max_tokens_cap: int = 2048  # the most tokens one request may ask for (--max-tokens-cap)
    request_timeout: float = 300.0  # seconds a request may wait and decode (--request-timeout)
    context: int = 2048
    weight_layout: str = "row-major"  # what model/layout.py chose at load, and why (/health)
    meta: dict[str, Any] = field(default_factory=dict)  # the served run's (base, surgery): admin.py checks
    # served name -> waiting jobs, oldest first (a dict as an ordered set: O(1) removal)
    pending: dict[str, dict[Job, None]] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)  # client -> its jobs in `pending`
    current: list[Job] = field(default_factory=list)  # the batch being decoded
    stats: dict[str, int] = field(
        default_factory=lambda: {"completed": 0, "cancelled": 0, "batches": 0, "prefix_tokens": 0}
    )
    tok_lock: threading.Lock = field(default_factory=threading.Lock)
    # Prompts are tokenised here, off the event loop, one at a time (a 1 MB prompt takes a while).
    tok_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="smolora-tokenize")
    )
    # Every forward pass runs on this one thread. Each thread that calls torch gets its own OpenMP
    # team; asyncio.to_thread's pool alternates threads, and two teams on 2 cores took a decoding
    # step from 58 to 120 ms (docs/benchmarks.md).
    model_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="smolora-model")
    )
    wake: asyncio.Event | None = None
    # Work that must not race a forward pass (loading or unloading an adapter): run by the
    # worker between decoding steps, see `between_steps`.
    chores: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)


async def between_steps(served: Served, fn: Any) -> Any:
    """Run `fn()` in the model's worker between two decoding steps and return its result."""
    done: Future = Future()
    served.chores.put((fn, done))
    if served.wake is not None:
        served.wake.set()
    return await asyncio.wrap_future(done)


async def on_model_thread(served: Served, fn: Any, *args: Any) -> Any:
    """`fn(*args)` on the model's own thread (see Served.model_pool), awaited."""
    return await asyncio.get_running_loop().run_in_executor(served.model_pool, fn, *args)


def run_chores(served: Served) -> None:
    """The worker's side of `between_steps` (called where no forward pass is running)."""
    while True:
        try:
            fn, done = served.chores.get_nowait()
        except queue.Empty:
            return
        try:
            done.set_result(fn())
        except Exception as e:  # the caller gets the error; the worker lives on
            done.set_exception(e)


def peft_name(served: Served, job: Job) -> str | None:
    """The row's adapter: the one taken at admission (an unloaded name's rows keep it), else its name's."""
    return job.adapter if job.adapter is not None else served.names[job.model]["adapter"]


def in_flight(served: Served, name: str) -> int:
    """Jobs for served name `name` still waiting or decoding."""
    return len(served.pending.get(name, ())) + sum(
        job.model == name and job.finish is None for job in served.current
    )


def emit(job: Job, kind: str, value: str) -> None:
    """Hand an event of a job to its request (from the worker thread): (choice index, kind, value)."""
    job.loop.call_soon_threadsafe(job.events.put_nowait, (job.index, kind, value))


def queued(served: Served) -> int:
    return sum(len(jobs) for jobs in served.pending.values())


def submit(served: Served, job: Job) -> None:
    served.pending.setdefault(job.model, {})[job] = None
    served.waiting[job.client] = served.waiting.get(job.client, 0) + 1
    assert served.wake is not None
    served.wake.set()


def unqueue(served: Served, job: Job) -> None:
    """Take a job out of the waiting queue (into a batch, or cancelled)."""
    jobs = served.pending[job.model]
    del jobs[job]
    if not jobs:
        del served.pending[job.model]
    left = served.waiting[job.client] - 1
    if left:
        served.waiting[job.client] = left
    else:
        del served.waiting[job.client]  # the dict holds only clients with jobs waiting


def take_batch(served: Served) -> list[Job]:
    """The oldest waiting job and the next waiting jobs for its model, up to max_batch."""
    name = min(served.pending, key=lambda m: next(iter(served.pending[m])).seq)
    jobs = list(itertools.islice(served.pending[name], served.max_batch))
    for job in jobs:
        unqueue(served, job)
    return jobs


def active(served: Served) -> int:
    """Rows of the current batch still producing tokens (a cancelled row stops at its next token)."""
    return sum(job.finish is None for job in served.current)


def cancel(served: Served, job: Job) -> None:
    """The client went away: drop a queued job, or stop its row at the next token."""
    if job.finish is None:
        job.cancelled = True
        if job in served.pending.get(job.model, ()):
            unqueue(served, job)
            served.stats["cancelled"] += 1
            job.finish = "cancelled"


class RowSampling(LogitsProcessor):
    """Per-row temperature and top-p inside one sampled generate(); rows `greedy` (generate.py) calls
    greedy stay greedy: a row too cold to divide by would fail the whole batch with NaNs."""

    def __init__(self, temperature: torch.Tensor, top_p: torch.Tensor):
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        greedy_rows = greedy(self.temperature, self.top_p)
        best = scores.argmax(-1)
        scores = scores / torch.where(greedy_rows, 1.0, self.temperature)[:, None]
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        # Drop a token once the mass before it already reaches top_p; the first always stays.
        ordered = ordered.masked_fill((probs.cumsum(-1) - probs) >= self.top_p[:, None], float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, ordered)
        one_hot = torch.full_like(scores, float("-inf")).scatter(-1, best[:, None], 0.0)
        return torch.where(greedy_rows[:, None], one_hot, scores)


class BatchControl(StoppingCriteria):
    """Called after every decoding step: streams each row's new text and decides which rows are done."""

    def __init__(self, served: Served, jobs: list[Job]):
        self.served, self.jobs = served, jobs
        self.eos = set(end_token_ids(served.tokenizer))

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        done = []
        for job, token in zip(self.jobs, last, strict=True):
            if job.finish is None:
                self.step(job, token)
            done.append(job.finish is not None)
        return torch.tensor(done, device=input_ids.device)

    def step(self, job: Job, token: int) -> None:
        if job.cancelled:
            return finish(self.served, job, "cancelled")
        if token in self.eos and not job.ignore_eos:
            return finish(self.served, job, "stop")
        job.out_ids.append(token)
        with self.served.tok_lock:
            text = self.served.tokenizer.decode(job.out_ids, skip_special_tokens=True)
        hits = [text.index(s) for s in job.stop if s in text]
        if hits:
            job.text = text[: min(hits)]
            return finish(self.served, job, "stop")
        job.text = text
        if len(job.out_ids) >= job.max_tokens:
            return finish(self.served, job, "length")
        # Hold back a half-decoded character and anything that may be the start of a stop string
        # (stop strings are short, schema.py caps them: this is at most a few hundred comparisons).
        safe = len(text.rstrip("\ufffd"))
        for s in job.stop:
            shown = text[:safe]
            for k in range(min(len(s) - 1, safe), 0, -1):
                if shown.endswith(s[:k]):
                    safe -= k
                    break
        if safe > job.sent:
            emit(job, "delta", text[job.sent : safe])
            job.sent = safe


def finish(served: Served, job: Job, reason: str) -> None:
    """Close a row: flush the text not yet streamed and hand the finish reason back."""
    job.finish = reason
    rest = job.text[job.sent :] if reason != "cancelled" else ""
    job.sent = len(job.text)
    served.stats["cancelled" if reason == "cancelled" else "completed"] += 1
    if rest:
        emit(job, "delta", rest)
    emit(job, "done", reason)


@torch.inference_mode()
def run_batch(served: Served, jobs: list[Job]) -> None:
    """Decode a batch of same-model jobs with one generate() call (runs in the worker thread)."""
    from transformers import GenerationConfig

    model, tok = served.model, served.tokenizer
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else end_token_ids(tok)[0]
    width = max(len(j.ids) for j in jobs)
    input_ids = torch.full((len(jobs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(jobs), width), dtype=torch.long)
    for i, job in enumerate(jobs):  # left padding: every row's next token comes right after its prompt
        input_ids[i, width - len(job.ids) :] = torch.tensor(job.ids)
        mask[i, width - len(job.ids) :] = 1
    sample = not all(greedy(j.temperature, j.top_p) for j in jobs)
    # No eos here: BatchControl ends each row at end-of-turn itself (ignore_eos is per row).
    config = GenerationConfig(
        max_new_tokens=max(j.max_tokens for j in jobs), do_sample=sample, pad_token_id=pad
    )
    if sample:
        config.top_k = 0  # RowSampling does temperature and top-p per row; no global top-k
    processors = []
    if sample:
        temperature = torch.tensor([j.temperature for j in jobs], device=device)
        processors.append(RowSampling(temperature, torch.tensor([j.top_p for j in jobs], device=device)))
    adapter = peft_name(served, jobs[0])
    if adapter is not None:
        model.set_adapter(adapter)
    off = (
        model.disable_adapter()
        if adapter is None and hasattr(model, "disable_adapter")
        else contextlib.nullcontext()
    )
    with off, plain_generation(model):
        model.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=[BatchControl(served, jobs)],
        )


async def batch_loop(served: Served) -> None:
    """The single worker: oldest job first, batched with every waiting job for the same model."""
    assert served.wake is not None
    while True:
        while not served.pending:
            if not served.chores.empty():
                await on_model_thread(served, run_chores, served)
                continue
            served.wake.clear()
            await served.wake.wait()
        if not served.chores.empty():
            await on_model_thread(served, run_chores, served)
        if queued(served) < served.max_batch:
            await asyncio.sleep(served.batch_wait)  # let requests sent together share the batch
        if not served.pending:  # all of them cancelled meanwhile
            continue
        jobs = take_batch(served)  # cancelled jobs already left the queue in cancel()
        served.current = jobs
        served.stats["batches"] += 1
        try:
            await on_model_thread(served, run_batch, served, jobs)
        except Exception:  # a failed batch answers its own requests, the server lives on
            # The exception text (shapes, paths) goes to the log; clients get a reference to it.
            ref = uuid.uuid4().hex[:8]
            log.exception("generation failed (ref %s)", ref)
            for job in jobs:
                if job.finish is None:
                    job.finish = "error"
                    job.events.put_nowait(
                        (job.index, "error", f"generation failed (ref {ref}); the server log has the details")
                    )
        finally:
            for job in jobs:  # a row the criteria never saw (generate ended early) still gets closed
                if job.finish is None:
                    finish(served, job, "length")
            served.current = []
