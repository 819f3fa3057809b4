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


# In process: grammar.Constraint under a sampling loop of the tiny random model, no server.


def sample(model, tokenizer, make, seed: int, vocab: int, max_tokens: int = 120) -> tuple[str, str]:
    """Sample like the engine does (mask, draw, accept, stop at end-of-turn or when the grammar is
    done), checking every step: tokens past the tokenizer are never allowed, and end-of-turn is
    allowed only where the text so far is already a whole answer."""
    import torch

    from smolora.generate import end_token_ids

    ends, row, out = end_token_ids(tokenizer), make(), []
    ids = tokenizer.apply_chat_template(USER, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(ids, add_special_tokens=False)["input_ids"]
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for _ in range(max_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            assert logits.shape[0] == vocab
            logits = row.mask(logits)
            assert torch.isinf(logits[len(tokenizer) :]).all()
            if torch.isfinite(logits[ends]).any():
                json.loads(tokenizer.decode(out))
            token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
            row.accept(token)
            if token in ends:
                return tokenizer.decode(out), "eos"
            out.append(token)
            ids.append(token)
            if row.done():
                return tokenizer.decode(out), "done"
    return tokenizer.decode(out), "length"


@pytest.fixture(scope="module")
def wide_model(tiny_tokenizer):
    """The tiny random model with 20 logits more than the tokenizer has tokens (as real models pad)."""
    from helpers import make_tiny_model

    return make_tiny_model(len(tiny_tokenizer) + 20).eval()


def test_sampled_json_schema_answers_validate_in_process(tiny_tokenizer, wide_model):
    from smolora.serve.grammar import constraint_factory

    vocab = len(tiny_tokenizer) + 20
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": SCHEMA, "strict": True}}
    make = constraint_factory(tiny_tokenizer, vocab, fmt)
    for seed in range(12):
        text, how = sample(wide_model, tiny_tokenizer, make, seed, vocab)
        assert how in ("done", "eos"), text
        jsonschema.validate(json.loads(text), SCHEMA)


def test_end_of_turn_is_allowed_exactly_where_the_grammar_may_end(tiny_tokenizer):
    import torch

    from smolora.serve.grammar import constraint_factory

    vocab = len(tiny_tokenizer) + 20
    fmt = {"type": "json_schema", "json_schema": {"schema": {"type": "integer"}}}
    row = constraint_factory(tiny_tokenizer, vocab, fmt)()
    eos = tiny_tokenizer.eos_token_id
    allowed = []
    for token in tiny_tokenizer("42", add_special_tokens=False)["input_ids"]:
        allowed.append(bool(torch.isfinite(row.mask(torch.zeros(vocab))[eos])))
        row.accept(token)
    allowed.append(bool(torch.isfinite(row.mask(torch.zeros(vocab))[eos])))
    assert allowed == [False, True, True] and not row.done()  # "42" may go on ("420") or end
    row.accept(eos)
    assert row.done()


def test_forced_tool_call_in_process_parses_into_one_call(tiny_tokenizer, wide_model):
    from smolora.serve.grammar import constraint_factory
    from smolora.serve.tools import ToolStream, tool_schema

    vocab = len(tiny_tokenizer) + 20
    make = constraint_factory(
        tiny_tokenizer, vocab, {"type": "json_object"}, tool_schema([WEATHER], "required")
    )
    for seed in range(3):
        row = make()
        text, how = sample(wide_model, tiny_tokenizer, lambda row=row: row, seed, vocab, max_tokens=80)
        assert how == "done" and text.startswith("<tool_call>") and text.endswith("</tool_call>")
        stream = ToolStream()
        stream.feed(text)
        content, (call,) = stream.close()
        assert content is None and call["function"]["name"] == "get_weather"
        jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])


def test_grammar_factory_none_cache_and_one_line_errors(tiny_tokenizer):
    from smolora.serve import grammar
    from smolora.serve.openai import APIError
    from smolora.serve.tools import tool_schema

    vocab = len(tiny_tokenizer)
    assert grammar.constraint_factory(tiny_tokenizer, vocab, None) is None
    assert grammar.constraint_factory(tiny_tokenizer, vocab, {"type": "text"}) is None
    fmt = {"type": "json_schema", "json_schema": {"schema": SCHEMA}}
    grammar.constraint_factory(tiny_tokenizer, vocab, fmt)
    compiled = list(grammar._matchers.values())
    grammar.constraint_factory(tiny_tokenizer, vocab, fmt)
    assert list(grammar._matchers.values()) == compiled  # compiled once per distinct schema
    bad_pattern = {"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}}
    for schema in ({"type": "strin"}, {"$ref": "#/nowhere"}, bad_pattern):
        with pytest.raises(APIError) as e:
            grammar.constraint_factory(
                tiny_tokenizer, vocab, {"type": "json_schema", "json_schema": {"schema": schema}}
            )
        assert e.value.status == 400 and e.value.param == "response_format" and "\n" not in e.value.message
    broken = [{"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}]
    with pytest.raises(APIError) as e:
        grammar.constraint_factory(tiny_tokenizer, vocab, None, tool_schema(broken, "required"))
    assert e.value.param == "tools"


def test_tool_schema_choices():
    from smolora.serve.tools import tool_schema

    other = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    assert tool_schema([WEATHER], "auto") is None and tool_schema([WEATHER], "none") is None
    assert tool_schema([WEATHER], None) is None
    one = tool_schema([WEATHER, other], {"type": "function", "function": {"name": "add"}})
    assert one["properties"]["name"] == {"const": "add"}
    both = tool_schema([WEATHER, other], "required")
    assert [s["properties"]["name"]["const"] for s in both["anyOf"]] == ["get_weather", "add"]


def test_tool_stream_char_by_char_gives_openai_deltas():
    from smolora.serve.tools import ToolStream

    text = (
        'a<b <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": {}}</tool_call>'
    )
    stream = ToolStream()
    events = [e for ch in text for e in stream.feed(ch)]
    content, calls = stream.close()
    assert content == "a<b " == "".join(e[1] for e in events if e[0] == "content")
    deltas = [e for e in events if e[0] == "tool_call"]
    assert [(e[1], e[2]["function"]["name"]) for e in deltas] == [(0, "get_weather"), (1, "add")]
    assert [e[2] for e in deltas] == calls
    for call in calls:
        assert call["id"].startswith("call_") and call["type"] == "function"
        assert isinstance(json.loads(call["function"]["arguments"]), dict)


def test_template_inputs_render_past_calls_and_tool_answers(tiny_tokenizer):
    from helpers import CHATML
    from smolora.serve.tools import template_inputs

    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    ]
    messages, extra = template_inputs(history, [WEATHER], "auto", CHATML)
    text = tiny_tokenizer.apply_chat_template(messages, chat_template=CHATML, tokenize=False, **extra)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n") and "<tools>" in text  # one system turn
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in text
    assert '<tool_response>\n{"temperature": 21}\n</tool_response>' in text
    # a template that knows tools gets them, and the calls with their arguments as an object
    aware = (
        "{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}"
        "{% for c in m.tool_calls or [] %}{{ c.function.name }}{{ c.function.arguments | tojson }}"
        "{% endfor %}{{ m.content }}|{% endfor %}"
    )
    messages, extra = template_inputs(history, [WEATHER], "auto", aware)
    text = tiny_tokenizer.apply_chat_template(messages, chat_template=aware, tokenize=False, **extra)
    assert text == '[get_weather]Be brief.|Weather?|get_weather{"city": "Paris"}|{"temperature": 21}|'


@pytest.mark.slow
def test_real_smollm2_tokenizer_walks_a_valid_answer(use_real_home):
    """The bundled SmolLM2 tokenizer (49152 tokens): the canonical answer's own tokens are each
    allowed, end-of-turn (<|im_end|>) only at its end; and a forced call's text too."""
    import torch
    from transformers import AutoTokenizer

    from smolora.model.store import resolve_model
    from smolora.serve.grammar import constraint_factory
    from smolora.serve.tools import tool_schema

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    vocab, end = 49152, tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers = (
        (
            {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
            None,
            '{"product": "oak lamp", "qty": 12, "city": "Lisbon"}',
        ),
        ({"type": "json_object"}, None, '{"a": [1, {"b": null}], "c": "d"}'),
        (
            None,
            tool_schema([WEATHER], "required"),
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        ),
    )
    for fmt, forced, answer in answers:
        row = constraint_factory(tokenizer, vocab, fmt, forced)()
        for token in tokenizer(answer, add_special_tokens=False)["input_ids"]:
            logits = row.mask(torch.zeros(vocab))
            assert torch.isfinite(logits[token]) and torch.isinf(logits[end]), (
                answer,
                tokenizer.decode([token]),
            )
            row.accept(token)
        assert row.done() or torch.isfinite(row.mask(torch.zeros(vocab))[end])
