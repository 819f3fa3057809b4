"""OpenAI's wire shapes, built in one place: chat and text completions (whole or as stream chunks),
model cards, usage, server-sent events and errors, `{"error": {"message", "type", "param", "code"}}`.

Run as:
    reply = new_reply("chat", "quickstart")
    response(reply, [{"index": 0, "text": "Hello!", "finish": "stop"}], usage(jobs))  # the whole answer
    sse(response(reply, [{"index": 0, "text": "Hel"}], chunk=True))                  # one stream event
    raise APIError(400, "n > 1 is not supported when streaming", "n")  # becomes a 400 in this shape
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi.responses import JSONResponse

from smolora.serve.batching import Job

# kind -> (id prefix, object of a whole response, object of one chunk of its stream)
SHAPES = {
    "chat": ("chatcmpl", "chat.completion", "chat.completion.chunk"),
    "completion": ("cmpl", "text_completion", "text_completion"),
}


def new_reply(kind: str, model: str) -> dict[str, Any]:
    """What a response and every chunk of its stream share: the kind, id, creation time and model."""
    return {
        "kind": kind,
        "id": f"{SHAPES[kind][0]}-{uuid.uuid4().hex[:24]}",
        "created": int(time.time()),
        "model": model,
    }


def response(
    reply: dict[str, Any],
    choices: list[dict[str, Any]],
    usage: dict[str, int] | None = None,
    chunk: bool = False,
    first: bool = False,
) -> dict[str, Any]:
    """The body for `reply`: the whole response, or (chunk=True) one event of its stream.

    Each choice is {"index", "text", "finish", and optionally "logprobs", "tool_calls"} (choices.py
    builds them); `first` marks a stream's opening chunk.
    """
    kind = reply["kind"]
    _, whole, part = SHAPES[kind]
    body: dict[str, Any] = {
        "id": reply["id"],
        "object": part if chunk else whole,
        "created": reply["created"],
        "model": reply["model"],
        "choices": [
            {
                "index": c["index"],
                **content(kind, c, chunk, first),
                "logprobs": c.get("logprobs"),
                "finish_reason": c.get("finish"),
            }
            for c in choices
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def content(kind: str, choice: dict[str, Any], chunk: bool, first: bool) -> dict[str, Any]:
    """A choice's text: `text` for completions; for chat the `message`, or in a stream the `delta`,
    which names the role in the opening chunk and after that holds only new text (or nothing)."""
    text, calls = choice.get("text", ""), choice.get("tool_calls")
    if kind == "completion":
        return {"text": text}
    if not chunk:
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        return {"message": {**message, "tool_calls": calls} if calls else message}
    delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {}
    if text and not first:
        delta["content"] = text
    if calls:
        delta["tool_calls"] = calls
    return {"delta": delta}


def chat_logprobs(entries: list[tuple], text_of: Any) -> dict[str, Any]:
    """Chat's shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}."""

    def one(token: int, logprob: float) -> dict[str, Any]:
        text = text_of(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {
        "content": [{**one(t, lp), "top_logprobs": [one(i, v) for i, v in top]} for t, lp, top in entries],
        "refusal": None,
    }


def completion_logprobs(entries: list[tuple], text_of: Any, offset: int = 0) -> dict[str, Any]:
    """Completions' shape: parallel lists of tokens, their log-probabilities, the top ones (a dict
    per token, null for an echoed first token) and each token's character offset in the text."""
    tokens = [text_of(t) for t, _, _ in entries]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [lp for _, lp, _ in entries],
        "top_logprobs": [None if top is None else {text_of(i): v for i, v in top} for _, _, top in entries],
        "text_offset": offsets,
    }


def usage(jobs: list[Job], n: int = 1) -> dict[str, int]:
    prompt = sum(len(j.ids) for j in jobs[::n])  # each prompt once, however many choices it has
    completion = sum(len(j.out_ids) for j in jobs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "smolora"}


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


# --- errors ----------------------------------------------------------------------------------


class APIError(Exception):
    """An OpenAI-style error response."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int, message: str, param: str | None, code: str | None, headers: Any = None
) -> JSONResponse:
    kind = (
        "authentication_error"
        if status == 401
        else ("server_error" if status >= 500 else "invalid_request_error")
    )
    return JSONResponse(error_body(message, kind, param, code), status_code=status, headers=headers)


def validation_error(errors: list[dict[str, Any]]) -> tuple[str, str | None, str]:
    """(message, param, code) of pydantic's most specific error, its path without union branch names."""
    if any(e["type"] == "json_invalid" for e in errors):
        first = next(e for e in errors if e["type"] == "json_invalid")
        detail = first.get("ctx", {}).get("error", "invalid JSON")
        return f"We could not parse the JSON body of your request ({detail})", None, "invalid_json"
    # A union reports one error per branch (`prompt.str`, `prompt.list[str].0`). The deepest one
    # says what is wrong (the 3rd content part's text is a number, not "content is not a string"),
    # and among equals one that is not "wrong type" (an empty list is too short, not "not a string").
    first = max(errors, key=lambda e: (len(e["loc"]), not e["type"].endswith("_type")))
    loc = [str(p) for p in first["loc"][1:] if not is_branch(p)] if first["loc"][:1] == ("body",) else []
    param = ".".join(loc) or None
    return (f"{param}: {first['msg']}" if param else first["msg"]), param, first["type"]


def is_branch(part: Any) -> bool:
    """pydantic's name for a union branch in an error path: `str`, `constrained-str`, `list[str]`, `TextPart`."""
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool") or "[" in part or "-" in part or part[:1].isupper()
    )
