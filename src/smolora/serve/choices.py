"""A job's output as OpenAI choices: the whole choice once it is done, or the pieces of a stream.

One `Choice` per job follows what the worker streamed: text deltas, the log-probabilities of the
tokens behind them (the worker appends a token's entry before it streams that token's text), and,
when the request offered tools, the text split into content and tool-call deltas (tools.ToolStream,
which holds back anything that may still turn into a `<tool_call>`). Echoed completions start with
the prompt's text and log-probabilities.

Run as:
    choice = Choice(served, job, "chat")
    pieces = choice.delta("Hel")          # [{"index": 0, "text": "Hel", "logprobs": ...}] for chunks
    whole = choice.whole("stop")          # {"index", "text", "finish", "logprobs", "tool_calls"}
"""

from __future__ import annotations

from typing import Any

from smolora.serve.batching import Job, Served
from smolora.serve.openai import chat_logprobs, completion_logprobs


class Choice:
    def __init__(self, served: Served, job: Job, kind: str, echo: str | None = None, tools: Any = None):
        self.served, self.job, self.kind, self.echo, self.tools = served, job, kind, echo, tools
        self.sent_entries = 0  # generated tokens whose log-probabilities went out already
        self.offset = 0  # characters of text streamed (completions' text_offset)
        self.calls: list[dict[str, Any]] = []

    def text_of(self, token: int) -> str:
        with self.served.tok_lock:
            return self.served.tokenizer.decode([token])

    def logprobs(self, entries: list[tuple]) -> dict[str, Any] | None:
        if self.job.logprobs is None:
            return None
        if self.kind == "chat":
            return chat_logprobs(entries, self.text_of)
        return completion_logprobs(entries, self.text_of, self.offset)

    def fresh_entries(self) -> list[tuple]:
        entries = self.job.entries[self.sent_entries :]
        self.sent_entries += len(entries)
        return entries

    def opening(self) -> list[dict[str, Any]]:
        """An echoed prompt, streamed before anything generated (completions with echo)."""
        if self.echo is None:
            return []
        piece = {
            "index": self.job.index,
            "text": self.echo,
            "logprobs": self.logprobs(self.job.prompt_logprobs),
        }
        self.offset += len(self.echo)
        return [piece]

    def delta(self, text: str) -> list[dict[str, Any]]:
        entries = self.fresh_entries()
        pieces: list[dict[str, Any]] = []
        if self.tools is None:
            pieces.append({"index": self.job.index, "text": text, "logprobs": self.logprobs(entries)})
            self.offset += len(text)
            return pieces
        for event in self.tools.feed(text):
            if event[0] == "content":
                pieces.append({"index": self.job.index, "text": event[1]})
            else:
                pieces.append(
                    {"index": self.job.index, "text": "", "tool_calls": [{"index": event[1], **event[2]}]}
                )
        if entries and self.job.logprobs is not None:
            pieces.append({"index": self.job.index, "text": "", "logprobs": self.logprobs(entries)})
        return pieces

    def closing(self, reason: str) -> list[dict[str, Any]]:
        """The last stream pieces: what the tool parser held back, then the finish reason."""
        pieces = []
        if self.tools is not None:
            content, calls = self.tools.close()
            held = self.tools_leftover(content)
            if held:
                pieces.append({"index": self.job.index, "text": held})
            self.calls = calls
        entries = self.fresh_entries()
        if entries and self.job.logprobs is not None:
            pieces.append({"index": self.job.index, "text": "", "logprobs": self.logprobs(entries)})
        pieces.append({"index": self.job.index, "text": "", "finish": self.reason(reason)})
        return pieces

    def tools_leftover(self, content: str | None) -> str:
        return getattr(self.tools, "held", "") or ""

    def reason(self, reason: str) -> str:
        return "tool_calls" if self.calls and reason == "stop" else reason

    def whole(self, reason: str) -> dict[str, Any]:
        job, text = self.job, self.job.text
        if self.tools is not None:
            for _ in self.tools.feed(text):
                pass
            content, self.calls = self.tools.close()
            text = content or ""
        entries = (job.prompt_logprobs if self.echo is not None else []) + job.entries
        choice: dict[str, Any] = {
            "index": job.index,
            "text": (self.echo or "") + text,
            "finish": self.reason(reason),
            "logprobs": self.logprobs(entries),
        }
        if self.calls:
            choice["tool_calls"] = self.calls
        return choice
