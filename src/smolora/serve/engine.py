"""Continuous batching: requests join the running batch at the next decoding step and leave it
when they finish, so nobody waits for somebody else's long answer.

The worker owns one `Lane` per group of rows decoded together: a left-padded batch with its own
KV cache (transformers' DynamicCache), attention mask, next positions and next-token logits.
Each iteration (`Engine.iterate`, on the model's own thread, `on_model_thread`):

1. chores (adapter loads and unloads, `between_steps`) run while no forward pass does;
2. newly admitted jobs are prefilled together (after the prompt start they share with earlier
   ones, whose keys/values `prefix.py` keeps) and merged into their lane: the shorter of the two
   caches is padded on the left and the rows are concatenated on the batch axis;
3. every lane picks each row's next token from its logits (`pick.py`: greedy, or temperature and
   top-p with the row's own seeded generator, through the row's grammar if it has one), streams
   it (batching.BatchControl.step: stop strings, end of turn, max_tokens), drops the rows that
   finished (index_select, then the all-padding columns on the left are cut), and runs one
   forward step for the rest.

Adapters: with plain LoRA adapters every row shares one lane and PEFT applies each row's adapter
(or none, "__base__") in the same forward (`adapter_names`); while every row uses the same
adapter, it is merged into the base weights instead (`Engine.merge`), and unmerged as soon as a
row needs something else. Other adapter kinds get one lane per served name, each stepped every
iteration, so a busy adapter never blocks another.

Measured against static batching and transformers' own continuous batching in docs/benchmarks.md.

Run as:
    asyncio.create_task(engine_loop(served))   # instead of batching.batch_loop
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from smolora.generate import end_token_ids
from smolora.serve.batching import (
    BatchControl,
    Job,
    Served,
    emit,
    finish,
    on_model_thread,
    peft_name,
    queued,
    run_chores,
    unqueue,
)
from smolora.serve.pick import entry, pick_tokens, prompt_entries
from smolora.serve.prefix import Prefix, Prefixes, batch_cache

log = logging.getLogger("smolora")


def cache_argument() -> str:
    """transformers renamed the forward's `past_key_values` to `cache` (5.2x); the name this one takes."""
    import inspect

    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


CACHE_ARG = cache_argument()


def cache_of(out: Any) -> Any:
    return out["cache"] if "cache" in out else out["past_key_values"]


@dataclass
class Lane:
    """Rows decoded together: left-padded, one KV cache, one forward per step."""

    rows: list[Job]
    cache: Any  # DynamicCache: per layer keys/values [rows, heads, width, head_dim]
    mask: torch.Tensor  # [rows, width], 0 on the left padding
    pos: torch.Tensor  # [rows], the position of each row's next token
    logits: torch.Tensor  # [rows, vocab], float32: what each row's next token is picked from


def mixed_adapters(model: Any) -> bool:
    """Whether PEFT can run several adapters (and the bare base) in one forward: plain LoRA only."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return True  # no adapters at all: every row is the base model
    return all(
        type(c).__name__ == "LoraConfig" and not getattr(c, "use_dora", False) for c in configs.values()
    )


def supports_continuous(model: Any) -> bool:
    """Merging caches needs plain full-attention layers (no sliding window, no recurrent state)."""
    config = getattr(model, "config", None)
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    return types <= {"full_attention"} and not getattr(config, "sliding_window", None)


class Engine:
    def __init__(self, served: Served):
        self.served = served
        self.model = served.model
        self.device = next(self.model.parameters()).device
        self.mixed = mixed_adapters(self.model)
        self.peft = hasattr(self.model, "disable_adapter")
        self.mergeable = self.peft and self.mixed  # plain LoRA: merging and unmerging are exact enough
        self.merged: str | None = None  # the adapter folded into the base weights now, if any
        self.prefixes = Prefixes()
        self.lanes: dict[str | None, Lane] = {}
        self.control = BatchControl(served, [])
        tok = served.tokenizer
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else end_token_ids(tok)[0]

    def rows(self) -> list[Job]:
        return [job for lane in self.lanes.values() for job in lane.rows]

    def lane_key(self, job: Job) -> str | None:
        return None if self.mixed else job.model

    @contextlib.contextmanager
    def adapters(self, key: str | None, rows: list[Job]):
        """Forward keyword arguments that make each row use its served model's adapter."""
        names = {peft_name(self.served, j) for j in rows}
        if len(names) != 1 or names == {None}:
            self.unmerge()  # the per-row split and the bare base need the base weights as loaded
        if not self.peft:
            yield {}
        elif self.mixed and len(names) > 1:
            yield {"adapter_names": [peft_name(self.served, j) or "__base__" for j in rows]}
        elif names == {None}:  # every row is the base model
            with self.model.disable_adapter():
                yield {}
        else:  # one adapter for all rows: its weights merged into the base, no LoRA matmuls at all
            (name,) = names
            self.merge(name)
            yield {}

    def merge(self, name: str) -> None:
        """Fold adapter `name` into the base weights while every row uses it. The rank-16 LoRA
        matmuls are small and slow on a CPU: ~20% of a decoding step, ~40% of a prefill
        (py-spy, quickstart at concurrency 8). Plain LoRA only; other kinds keep PEFT's path."""
        if self.merged == name:
            return
        self.unmerge()
        if self.model.active_adapter != name:
            self.model.set_adapter(name)
        if self.mergeable:
            self.model.merge_adapter()
            self.merged = name

    def unmerge(self) -> None:
        if self.merged is not None:
            self.model.unmerge_adapter()
            self.merged = None

    def forward(self, key: str | None, rows: list[Job], **inputs: Any) -> Any:
        # a plain forward: generate()'s stored settings (plain_generation) play no part here
        with self.adapters(key, rows) as extra:
            return self.model(**inputs, **extra, use_cache=True, return_dict=True)

    def shared_prefix(self, key: str | None, jobs: list[Job]) -> Prefix | None:
        """The prefix cache for these jobs (computed now if it is new), or None: prompts that
        want their own log-probabilities (echo) or rows of several adapters run whole."""
        names = {peft_name(self.served, j) for j in jobs}
        if len(names) != 1 or any(j.echo_logprobs for j in jobs):
            return None
        (name,) = names
        prefix = self.prefixes.lookup(name, [j.ids for j in jobs])
        if prefix is not None and prefix.cache is None:
            ids = torch.tensor([prefix.ids], device=self.device)
            prefix.cache = cache_of(self.forward(key, jobs[:1], input_ids=ids, logits_to_keep=1))
            self.prefixes.keep(name, prefix)
        return prefix

    @torch.inference_mode()
    def prefill(self, key: str | None, jobs: list[Job]) -> None:
        """Run the new jobs' prompts (after their shared prefix, if any) and merge them into their lane."""
        prefix = self.shared_prefix(key, jobs)
        skip = len(prefix.ids) if prefix else 0
        width = max(len(j.ids) for j in jobs) - skip
        ids = torch.full((len(jobs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), skip + width), dtype=torch.long)
        mask[:, :skip] = 1  # prefix | left padding | the rest of the prompt
        for i, job in enumerate(jobs):
            rest = len(job.ids) - skip
            ids[i, width - rest :] = torch.tensor(job.ids[skip:])
            mask[i, skip + width - rest :] = 1
        echo = any(j.echo_logprobs for j in jobs)
        cached = {}
        if prefix:
            cached[CACHE_ARG] = batch_cache(prefix, len(jobs))
            self.served.stats["prefix_tokens"] += skip * len(jobs)
        out = self.forward(
            key,
            jobs,
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, skip:].to(self.device),
            logits_to_keep=0 if echo else 1,
            **cached,
        )
        for i, job in enumerate(jobs):
            if job.echo_logprobs:  # the prompt's own log-probabilities (completions with echo)
                job.prompt_logprobs = prompt_entries(out.logits[i, width - len(job.ids) :], job)
        logits = out.logits[:, -1, :].float()
        self.served.stats["batches"] += 1
        keep = [i for i, j in enumerate(jobs) if j.max_tokens > 0]
        for job in jobs:
            if job.max_tokens == 0:  # echo only: the prompt's log-probabilities were all it asked for
                finish(self.served, job, "length")
        if not keep:
            return
        index = torch.tensor(keep, device=self.device)
        new = Lane(
            rows=[jobs[i] for i in keep],
            cache=cache_of(out),
            mask=mask.to(self.device)[index],
            pos=torch.tensor([len(jobs[i].ids) for i in keep], device=self.device),
            logits=logits[index],
        )
        if len(keep) < len(jobs):
            new.cache.batch_select_indices(index)
        self.lanes[key] = merge(self.lanes[key], new) if key in self.lanes else new

    @torch.inference_mode()
    def step(self, key: str | None) -> None:
        """One token for every row of a lane: pick, stream, drop the finished, forward the rest."""
        lane = self.lanes[key]
        tokens, logprobs = pick_tokens(lane.logits, lane.rows)
        for i, (job, token) in enumerate(zip(lane.rows, tokens, strict=True)):
            if job.finish is not None:
                continue
            if job.logprobs is not None and not job.cancelled:
                job.entries.append(entry(logprobs, i, token, job.logprobs))
            if job.constraint is not None and not job.cancelled:
                job.constraint.accept(token)
            self.control.step(job, token)
            if job.finish is None and job.constraint is not None and job.constraint.done():
                finish(self.served, job, "stop")
        keep = [i for i, job in enumerate(lane.rows) if job.finish is None]
        if not keep:
            del self.lanes[key]
            return
        if len(keep) < len(lane.rows):
            drop_rows(lane, keep)
        lane.mask = torch.cat([lane.mask, lane.mask.new_ones((len(lane.rows), 1))], dim=1)
        kept = torch.tensor([tokens[i] for i in keep], device=self.device)
        out = self.forward(
            key,
            lane.rows,
            input_ids=kept[:, None],
            attention_mask=lane.mask,
            position_ids=lane.pos[:, None],
            **{CACHE_ARG: lane.cache},
        )
        lane.pos = lane.pos + 1
        lane.logits = out.logits[:, -1, :].float()

    def iterate(self, new: list[Job]) -> None:
        """One round of the worker (see the module docstring); a failure answers only its own rows."""
        if not self.served.chores.empty():
            self.unmerge()  # adapter loads, unloads and embeddings see the base weights as loaded
            self.prefixes.clear()  # a reloaded name may be another adapter
        run_chores(self.served)
        groups: dict[str | None, list[Job]] = {}
        for job in new:
            groups.setdefault(self.lane_key(job), []).append(job)
        for key, jobs in groups.items():
            self.guarded(key, jobs, lambda k=key, j=jobs: self.prefill(k, j))
        for key in list(self.lanes):
            self.guarded(key, self.lanes[key].rows, lambda k=key: self.step(k))

    def guarded(self, key: str | None, jobs: list[Job], work: Any) -> None:
        try:
            work()
        except Exception:  # the failed lane's requests get an error; the server lives on
            ref = uuid.uuid4().hex[:8]
            log.exception("generation failed (ref %s)", ref)
            rows = jobs + (self.lanes.pop(key).rows if key in self.lanes else [])
            for job in rows:
                if job.finish is None:
                    job.finish = "error"
                    emit(job, "error", f"generation failed (ref {ref}); the server log has the details")


def merge(old: Lane, new: Lane) -> Lane:
    """One lane from two: the narrower padded on the left to the same width, rows concatenated."""
    width = max(old.mask.shape[1], new.mask.shape[1])

    def widen(t: torch.Tensor, dim_from_end: int) -> torch.Tensor:
        short = width - t.shape[-dim_from_end]
        if not short:
            return t
        pad = [0, 0] * (dim_from_end - 1) + [short, 0]
        return F.pad(t, pad)

    for a, b in zip(old.cache.layers, new.cache.layers, strict=True):
        a.keys = torch.cat([widen(a.keys, 2), widen(b.keys, 2)])
        a.values = torch.cat([widen(a.values, 2), widen(b.values, 2)])
    return Lane(
        rows=old.rows + new.rows,
        cache=old.cache,
        mask=torch.cat([widen(old.mask, 1), widen(new.mask, 1)]),
        pos=torch.cat([old.pos, new.pos]),
        logits=torch.cat([old.logits, new.logits]),
    )


def drop_rows(lane: Lane, keep: list[int]) -> None:
    """Keep only rows `keep`, then cut the columns that are padding in every remaining row."""
    index = torch.tensor(keep, device=lane.mask.device)
    lane.rows = [lane.rows[i] for i in keep]
    lane.mask, lane.pos, lane.logits = lane.mask[index], lane.pos[index], lane.logits[index]
    lane.cache.batch_select_indices(index)
    first = int(lane.mask.argmax(dim=1).min())  # the leftmost real token of any row
    if first:
        lane.mask = lane.mask[:, first:]
        for layer in lane.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]


def take_new(served: Served, room: int) -> list[Job]:
    """Up to `room` waiting jobs, oldest first, whatever model they ask for."""
    waiting = sorted((job for jobs in served.pending.values() for job in jobs), key=lambda j: j.seq)
    new = waiting[:room]
    for job in new:
        unqueue(served, job)
    return new


async def engine_loop(served: Served) -> None:
    """The single worker for continuous batching: admit, prefill, step, as long as there is work."""
    assert served.wake is not None
    engine = Engine(served)
    while True:
        if not engine.lanes and not served.pending and served.chores.empty():
            served.wake.clear()
            await served.wake.wait()
            if served.pending and queued(served) < served.max_batch:
                await asyncio.sleep(served.batch_wait)  # requests sent together share one prefill
            continue
        new = take_new(served, served.max_batch - len(engine.rows()))
        served.current = engine.rows() + new
        try:
            await on_model_thread(served, engine.iterate, new)
        finally:
            for job in new:  # a job the engine never saw to the end (a failed prefill) still gets closed
                if job.finish is None and all(job is not r for r in engine.rows()):
                    finish(served, job, "length")
            served.current = engine.rows()
