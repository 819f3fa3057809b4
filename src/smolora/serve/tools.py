"""Tool calling: the tools offered to the model, its calls parsed back into OpenAI's `tool_calls`.

A chat template that knows tools (it mentions `tools`) gets them as the `tools` variable, the way
transformers passes them. Plain ChatML templates (SmolLM2's) get a system block in the Hermes
format instead: the functions as JSON, and the reply format `<tool_call>{"name": ...,
"arguments": {...}}</tool_call>`; earlier assistant calls are written back in that format and
`tool` messages become `<tool_response>` blocks. `tool_choice: "required"` or a named function
forces a call with a grammar (grammar.py, from `tool_schema`); "auto" lets the model choose.

Run as:
    messages, extra = template_inputs(messages, tools, "auto", template)
    stream = ToolStream(tools); events = stream.feed(delta); content, calls = stream.close()
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from smolora.serve.openai import APIError

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def functions(tools: list[dict] | None) -> list[dict]:
    """The tools' function specs, each checked: {"type": "function", "function": {"name", ...}}."""
    specs = []
    for i, tool in enumerate(tools or []):
        spec = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(spec, dict)
        ):
            raise APIError(
                400, f'tools.{i}: expected {{"type": "function", "function": {{"name": ...}}}}', "tools"
            )
        name, params = spec.get("name"), spec.get("parameters", {"type": "object"})
        if not isinstance(name, str) or not name or len(name) > 64:
            raise APIError(400, f"tools.{i}.function.name: a name of 1-64 characters is required", "tools")
        if not isinstance(params, dict):
            raise APIError(400, f"tools.{i}.function.parameters: a JSON schema object is required", "tools")
        specs.append({"name": name, "description": spec.get("description") or "", "parameters": params})
    return specs


def tool_schema(tools: list[dict] | None, tool_choice: Any) -> dict | None:
    """The JSON schema a forced call must match ("required" or a named function), else None."""
    specs = functions(tools)
    if tool_choice in (None, "auto", "none"):
        return None
    if tool_choice != "required":
        name = (tool_choice.get("function") or {}).get("name") if isinstance(tool_choice, dict) else None
        specs = [s for s in specs if s["name"] == name]
        if not specs:
            raise APIError(400, f"tool_choice: no tool named {name!r} among the tools sent", "tool_choice")
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": s["name"]}, "arguments": s["parameters"]},
            "required": ["name", "arguments"],
        }
        for s in specs
    ]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def system_block(specs: list[dict]) -> str:
    listed = "\n".join(json.dumps({"type": "function", "function": s}) for s in specs)
    return (
        "You may call one or more functions to assist with the user query. The functions:\n"
        f"<tools>\n{listed}\n</tools>\n"
        "For each call, reply with a JSON object of the function name and its arguments:\n"
        f'{OPEN}{{"name": <function-name>, "arguments": <args-json-object>}}{CLOSE}'
    )


def call_text(call: dict) -> str:
    function = call.get("function", {})
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except json.JSONDecodeError:
        arguments = function.get("arguments")
    return f"{OPEN}{json.dumps({'name': function.get('name'), 'arguments': arguments})}{CLOSE}"


def native_calls(message: dict) -> dict:
    """An assistant's calls with `arguments` as an object, as transformers' templates expect (many
    write `arguments | tojson`, which would quote OpenAI's JSON string a second time)."""
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        function = dict(call.get("function", {}))
        try:
            function["arguments"] = json.loads(function.get("arguments") or "{}")
        except (json.JSONDecodeError, TypeError):
            pass  # not JSON (or already an object): the template gets it as sent
        calls.append({**call, "function": function})
    return {**message, "content": message.get("content") or "", "tool_calls": calls}


def template_inputs(
    messages: list[dict], tools: list[dict] | None, tool_choice: Any, template: str | None
) -> tuple[list[dict], dict]:
    """Messages (and extra template variables) that show the model its tools and past calls."""
    specs = functions(tools) if tool_choice != "none" else []
    if template and "tools" in template:  # the template renders tools and tool calls itself
        return [native_calls(m) for m in messages], ({"tools": tools} if specs else {})
    out = []
    for m in messages:
        if m.get("tool_calls"):
            text = "\n".join([m["content"]] * bool(m["content"]) + [call_text(c) for c in m["tool_calls"]])
            out.append({"role": m["role"], "content": text})
        elif m["role"] == "tool":
            out.append({"role": "tool", "content": f"<tool_response>\n{m['content']}\n</tool_response>"})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if specs:
        block = system_block(specs)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out, {}


class ToolStream:
    """Streamed text split into content and tool calls; `<tool_call>` blocks never leak as content."""

    def __init__(self, tools: list[dict] | None = None):
        self.buffer = ""  # text not yet decided: inside a call, or maybe the start of one
        self.inside = False
        self.content = ""  # all content so far (emitted or not)
        self.calls: list[dict] = []
        self.held = ""

    def feed(self, delta: str) -> list[tuple]:
        self.buffer += delta
        events: list[tuple] = []
        while True:
            if self.inside:
                end = self.buffer.find(CLOSE)
                if end < 0:
                    return events
                events += self.finish_call(self.buffer[:end])
                self.buffer, self.inside = self.buffer[end + len(CLOSE) :], False
                continue
            start = self.buffer.find(OPEN)
            if start >= 0:
                events += self.text(self.buffer[:start])
                self.buffer, self.inside = self.buffer[start + len(OPEN) :], True
                continue
            keep = next((k for k in range(len(OPEN) - 1, 0, -1) if self.buffer.endswith(OPEN[:k])), 0)
            events += self.text(self.buffer[: len(self.buffer) - keep])
            self.buffer = self.buffer[len(self.buffer) - keep :]
            return events

    def text(self, text: str) -> list[tuple]:
        if not text:
            return []
        self.content += text
        return [("content", text)]

    def finish_call(self, body: str) -> list[tuple]:
        try:
            call = json.loads(body)
            name, arguments = call["name"], call.get("arguments", {})
            if not isinstance(name, str):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):  # not a call after all: it is text
            return self.text(f"{OPEN}{body}{CLOSE}")
        done = {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }
        self.calls.append(done)
        return [("tool_call", len(self.calls) - 1, done)]

    def close(self) -> tuple[str | None, list[dict]]:
        """The whole content and every call; `held` is the tail no event carried yet."""
        rest = (OPEN if self.inside else "") + self.buffer
        self.buffer, self.inside = "", False
        self.held = rest
        self.content += rest
        return (self.content or None), self.calls
