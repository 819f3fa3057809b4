"""Each row's next token, and the log-probabilities a request asked for.

Log-probabilities are the model's own (log-softmax of the raw logits, before temperature, top-p
or a grammar), as OpenAI and vLLM report them, so they equal an offline forward pass of the same
text. The pick itself: greedy rows take the argmax; sampled rows divide by their temperature, keep
their top-p mass and draw with their own generator (a request's `seed`), so the same seed gives
the same text whatever else shares the batch. A row with a grammar (`constraint`) first has the
tokens it may not emit set to -inf.

Run as:
    tokens, logprobs = pick_tokens(lane.logits, lane.rows)   # logprobs None unless a row asked
    job.entries.append(entry(logprobs, i, tokens[i], top=job.logprobs))
"""

from __future__ import annotations

from typing import Any

import torch

from smolora.generate import greedy


def pick_tokens(logits: torch.Tensor, rows: list[Any]) -> tuple[list[int], torch.Tensor | None]:
    """The next token of every row of `logits` [rows, vocab] (float32), and log-softmax if any row wants it."""
    logprobs = torch.log_softmax(logits, dim=-1) if any(r.logprobs is not None for r in rows) else None
    scores = logits
    constrained = [i for i, r in enumerate(rows) if r.constraint is not None and r.finish is None]
    if constrained:
        scores = logits.clone()
        for i in constrained:
            scores[i] = rows[i].constraint.mask(scores[i])
    tokens = scores.argmax(dim=-1).tolist()
    for i, row in enumerate(rows):
        if row.finish is None and not greedy(row.temperature, row.top_p):
            tokens[i] = sample(scores[i], row.temperature, row.top_p, row.generator)
    return tokens, logprobs


def sample(scores: torch.Tensor, temperature: float, top_p: float, generator: Any) -> int:
    """One draw from a row's distribution at `temperature`, keeping the smallest set of mass >= top_p."""
    scores = scores / temperature
    if top_p < 1.0:
        ordered, order = scores.sort(descending=True)
        probs = ordered.softmax(-1)
        # Drop a token once the mass before it already reaches top_p; the first always stays.
        ordered = ordered.masked_fill((probs.cumsum(-1) - probs) >= top_p, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, ordered)
    return int(torch.multinomial(scores.softmax(-1), 1, generator=generator))


def entry(
    logprobs: torch.Tensor, row: int, token: int, top: int
) -> tuple[int, float, list[tuple[int, float]]]:
    """(token, its log-probability, the `top` most likely tokens and theirs) for one row's step."""
    values = logprobs[row]
    return token, float(values[token]), tops(values, top)


def tops(values: torch.Tensor, k: int) -> list[tuple[int, float]]:
    if k <= 0:
        return []
    best = torch.topk(values, k)
    return list(zip(best.indices.tolist(), best.values.tolist(), strict=True))


def prompt_entries(logits: torch.Tensor, job: Any) -> list[tuple]:
    """Entries for the prompt's tokens from the prefill's logits over the prompt: the first token has
    no log-probability (nothing comes before it), token t is scored by the logits at t - 1."""
    ids = torch.tensor(job.ids, device=logits.device)
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    chosen = logprobs.gather(1, ids[1:, None])[:, 0].tolist()
    k = job.logprobs or 0
    return [(job.ids[0], None, None)] + [
        (job.ids[t], chosen[t - 1], tops(logprobs[t - 1], k)) for t in range(1, len(job.ids))
    ]
