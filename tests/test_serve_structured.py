"""response_format (json_object, json_schema) and tools / tool_choice through the real `openai`
client against a real `smolora serve` on the tiny random model: a random model is the hardest
client of a grammar, since without the mask it emits garbage. Plus ToolStream on its own."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from helpers import start_server

USER = [{"role": "user", "content": "Extract the product and the city: order 3 lamps to Lisbon."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "product": {"type": "string", "maxLength": 12},
        "qty": {"type": "integer", "minimum": 0, "maximum": 99},
        "city": {"type": "string", "enum": ["Lisbon", "Porto"]},
    },
    "required": ["product", "qty", "city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        # short: the tiny model's context is 512 and its tokeniser spends about a token per character
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Lisbon", "Paris"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def client(tiny_run, tmp_path_factory):
    proc, url, _ = start_server(tiny_run, tmp_path_factory, "--max-batch", "4")
    yield openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    proc.terminate()
    proc.wait(timeout=30)


def test_json_schema_answers_always_parse_and_validate(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": SCHEMA}}
    r = client.chat.completions.create(
        model="tiny", messages=USER, response_format=fmt, n=3, temperature=1.0, seed=1, max_tokens=200
    )
    for choice in r.choices:
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
        assert choice.finish_reason == "stop"
    streamed = client.chat.completions.create(
        model="tiny", messages=USER, response_format=fmt, temperature=1.0, seed=1, max_tokens=200, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == r.choices[0].message.content  # same seed, same grammar: the same answer


def test_json_object_is_json(client):
    # A random model may write one endless string (json_object bounds nothing): every answer that
    # ends is a JSON object, and some end.
    stopped = 0
    for seed in range(4):
        r = client.chat.completions.create(
            model="tiny",
            messages=USER,
            response_format={"type": "json_object"},
            temperature=0.7,
            seed=seed,
            max_tokens=200,
        )
        if r.choices[0].finish_reason == "stop":
            stopped += 1
            assert isinstance(json.loads(r.choices[0].message.content), dict)
    assert stopped


def test_bad_schemas_are_400(client):
    for fmt in ({"type": "json_schema"}, {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=USER, response_format=fmt)
        assert e.value.body["param"].startswith("response_format")  # ours, or pydantic's path


def test_a_forced_tool_call_is_parsed_and_streamed(client):
    ask = [{"role": "user", "content": "Weather?"}]
    body = {"model": "tiny", "messages": ask, "tools": [WEATHER], "temperature": 0, "max_tokens": 72}
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = client.chat.completions.create(**body, tool_choice=choice)
        message = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls" and message.content is None
        (call,) = message.tool_calls
        assert call.function.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    chunks = list(client.chat.completions.create(**body, tool_choice="required", stream=True))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert [d.function.name for d in deltas] == ["get_weather"]
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == json.loads(
        call.function.arguments
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]
    # the call and its result sent back: rendered and answered
    follow = ask + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    # without tools again: their description and the call would not fit the tiny model's context
    again = client.chat.completions.create(model="tiny", messages=follow, max_tokens=5)
    assert again.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_bad_tools_are_400(client):
    for tools, choice, param in (
        ([{}], "auto", "tools"),
        ([{"type": "function", "function": {"name": ""}}], "auto", "tools"),
        ([{"type": "function", "function": {"name": "f", "parameters": 3}}], "required", "tools"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=USER, tools=tools, tool_choice=choice)
        assert e.value.body["param"] == param, e.value.body


def test_tool_stream_gives_the_same_calls_at_every_split():
    from smolora.serve.tools import ToolStream

    text = 'Sure. <tool_call>{"name": "get_weather", "arguments": {"city": "Lisbon"}}</tool_call> <tool_ca'
    for cut in range(len(text) + 1):
        stream = ToolStream()
        events = stream.feed(text[:cut]) + stream.feed(text[cut:])
        content, calls = stream.close()
        shown = "".join(e[1] for e in events if e[0] == "content") + stream.held
        assert shown == content == "Sure.  <tool_ca"
        assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Lisbon"}]
    broken = ToolStream()
    broken.feed("<tool_call>not json</tool_call>")
    assert broken.close() == ("<tool_call>not json</tool_call>", [])


def test_template_inputs_plain_chatml_and_tool_aware_templates():
    from helpers import CHATML
    from smolora.serve.tools import template_inputs

    messages = [{"role": "user", "content": "Weather?"}]
    plain, extra = template_inputs(messages, [WEATHER], "auto", CHATML)
    assert extra == {} and plain[0]["role"] == "system" and "get_weather" in plain[0]["content"]
    aware, extra = template_inputs(messages, [WEATHER], "auto", "{% for t in tools %}{{ t }}{% endfor %}")
    assert aware == messages and extra == {"tools": [WEATHER]}
    none, extra = template_inputs(messages, [WEATHER], "none", CHATML)
    assert none == messages and extra == {}
