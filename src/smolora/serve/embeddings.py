"""`POST /v1/embeddings` in OpenAI's shape: each input's last hidden state, mean-pooled over its
real tokens, through the adapter the request's `model` names (or the bare base).

The forward passes run in the model's worker between decoding steps (`between_steps`), a few
hundred tokens at a time; while rows are decoding, each chunk is followed by a pause as long as
itself, so a long embedding request at most halves their speed instead of stopping them.
Vectors have unit length, as OpenAI's (dot product = cosine similarity); `"normalize": false`
(vLLM's name) gives the raw mean.

Run as:
    curl localhost:8000/v1/embeddings -H 'Content-Type: application/json' -d '{"model": "quickstart", "input": "Hi"}'
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from typing import Any, Literal

import torch
from fastapi import Request as HTTPRequest
from pydantic import BaseModel, ConfigDict, Field

from smolora.serve.batching import Served, active, between_steps
from smolora.serve.jobs import check_model, prompt_ids, tokenize
from smolora.serve.openai import APIError
from smolora.serve.schema import prompts_type

MAX_INPUTS = 128  # inputs in one request (OpenAI allows 2048; a CPU server is slower)
EmbeddingInputs = prompts_type(MAX_INPUTS)
MAX_TOTAL_TOKENS = 32768  # over all inputs of one request
# Padded tokens per forward pass, i.e. per pause of the decoding worker: 4096 took 16 s on SmolLM2-135M
# with one CPU thread; 512 is about one prefill of a 512-token prompt, which the engine pauses for anyway.
CHUNK_TOKENS = 512


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `user` and the like: accepted, ignored
    model: str | None = None
    input: EmbeddingInputs = Field(
        description="Text, a list of texts, token ids, or a list of token-id lists."
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1, description="Only the model's hidden size is accepted.")
    normalize: bool | None = Field(None, description="vLLM extension: false for the raw mean (default true).")


async def embeddings(req: EmbeddingRequest, request: HTTPRequest):
    """Mean-pooled last hidden states of the inputs, through the named model's adapter."""
    served = request.app.state.served
    name = check_model(served, req.model)
    width = served.model.get_input_embeddings().embedding_dim
    if req.dimensions is not None and req.dimensions != width:
        raise APIError(400, f"dimensions: this model's embeddings have {width}", "dimensions")
    value = req.input
    inputs = [value] if isinstance(value, str) or isinstance(value[0], int) else value
    rows = await tokenize(served, prompt_ids, inputs)  # token ids checked against the vocabulary
    check_lengths(served, rows)
    vectors = []
    for chunk in chunks(rows):
        vector, seconds = await between_steps(served, lambda c=chunk: embed_in_worker(served, name, c))
        vectors.append(vector)
        if active(served):  # rows are decoding: leave them as much of the worker as this chunk took
            await asyncio.sleep(seconds)
    pooled = torch.cat(vectors)
    if req.normalize is not False:
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    tokens = sum(len(r) for r in rows)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v, req.encoding_format)}
            for i, v in enumerate(pooled)
        ],
        "model": name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def check_lengths(served: Served, rows: list[list[int]]) -> None:
    for i, ids in enumerate(rows):
        if not ids:
            raise APIError(400, f"input {i} is empty after tokenisation; send some text", "input")
        if len(ids) > served.context:
            raise APIError(
                400,
                f"input {i} is {len(ids)} tokens; this model's context is {served.context}",
                "input",
                "context_length_exceeded",
            )
    total = sum(len(r) for r in rows)
    if total > MAX_TOTAL_TOKENS:
        raise APIError(
            400, f"the inputs are {total} tokens together; one request may send {MAX_TOTAL_TOKENS}", "input"
        )


def chunks(rows: list[list[int]]) -> list[list[list[int]]]:
    """Consecutive rows, as many per forward pass as keep rows x longest row within CHUNK_TOKENS."""
    out: list[list[list[int]]] = []
    for ids in rows:
        if out and (len(out[-1]) + 1) * max(len(ids), *map(len, out[-1])) <= CHUNK_TOKENS:
            out[-1].append(ids)
        else:
            out.append([ids])
    return out


@torch.inference_mode()
def embed_in_worker(served: Served, name: str, rows: list[list[int]]) -> tuple[torch.Tensor, float]:
    """Runs between decoding steps: one right-padded forward of the decoder body (no lm head),
    the mean of each row's last hidden state over its real tokens (float32, on the CPU), and the
    seconds it took."""
    start = time.perf_counter()
    entry = served.names.get(name)
    if entry is None:  # unloaded (DELETE /v1/adapters) since the request was checked
        raise APIError(404, f"The model '{name}' does not exist", "model", "model_not_found")
    model = served.model
    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):  # right padding: causal attention keeps the padding out of real tokens
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    mask = mask.to(device)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    with adapter_of(model, entry["adapter"]):
        hidden = inner.base_model(input_ids=ids.to(device), attention_mask=mask).last_hidden_state
    hidden = hidden.float() * mask[..., None]
    return (hidden.sum(1) / mask.sum(1, keepdim=True)).cpu(), time.perf_counter() - start


@contextlib.contextmanager
def adapter_of(model: Any, adapter: str | None):
    """The served name's adapter active for one forward (the bare base: disabled), then the
    active adapter as it was: the continuous engine passes per-row names, static batching sets its own."""
    if not hasattr(model, "disable_adapter"):  # a plain model or a full fine-tune
        yield
    elif adapter is None:
        with model.disable_adapter():
            yield
    else:
        before = model.active_adapter
        model.set_adapter(adapter)
        try:
            yield
        finally:
            model.set_adapter(before)


def encode(vector: torch.Tensor, encoding_format: str | None) -> list[float] | str:
    """A list of floats, or base64 of little-endian float32 (what the openai client asks for)."""
    if encoding_format == "base64":
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode()
    return vector.tolist()
