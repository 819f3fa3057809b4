"""What the server accepts: the request bodies (validated by pydantic; failures become 400s), the
errors each route documents, and the OpenAPI schema narrowed to the models really loaded.

Every optional field is nullable: OpenAI's API (and clients built on it) send null for "the
default", so None is resolved to the default where the value is used, never refused.

Run as:
    req = ChatRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}]})
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from smolora.serve.batching import Served

MAX_TOKENS_CEILING = 32768  # schema bound; the model's context is checked per request
MAX_PROMPTS = 64  # prompts in one /v1/completions list; each is a row of the shared queue
MAX_N = 16  # choices per prompt
MAX_STOPS, MAX_STOP_CHARS = 4, 256  # stop strings are matched after every token of every row
MAX_TOP_LOGPROBS = 20  # as vLLM (OpenAI: 20 for chat, 5 for completions)
MAX_TOOLS = 128  # as OpenAI

Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Prompt = Annotated[str, Field(min_length=1)]  # an empty prompt gives the model nothing to continue
TokenIds = Annotated[
    list[Annotated[int, Field(ge=0)]], Field(min_length=1)
]  # checked against the vocab later


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool | None = None


class BaseRequest(BaseModel):
    # Clients send fields we do not use (user, seed, presence_penalty, ...): accept, ignore.
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CEILING)
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default 1; below 1e-5 greedy.")
    top_p: float | None = Field(None, ge=0.0, le=1.0, description="Default 1.")
    n: int | None = Field(None, ge=1, le=MAX_N, description="Choices per prompt (default 1; 1 to stream).")
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOPS)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = Field(None, description="vLLM extension: decode through end-of-sequence.")
    seed: int | None = Field(None, ge=-(2**63), lt=2**63, description="Same seed, same sampled text.")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"] = Field(description="Only text content parts are supported.")
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=256)
    arguments: str = Field("", max_length=1 << 20)


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = Field(None, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)] | None = None  # an assistant's calls
    tool_call_id: str | None = Field(None, max_length=256)  # a tool's answer names the call it answers
    name: str | None = Field(None, max_length=256)


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str | None = Field(None, max_length=256)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class ChatRequest(BaseRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CEILING)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


def prompt_kind(value: Any) -> str:
    """Which of the four prompt shapes a value is meant to be, judged by its first item, so an
    error names the part that is wrong (`prompt.1`), not one complaint per shape."""
    if isinstance(value, list) and value:
        first = value[0]
        if isinstance(first, int) and not isinstance(first, bool):
            return "list[int]"
        return "list[list[int]]" if isinstance(first, list) else "list[str]"
    return "list[str]" if isinstance(value, list) else "str"


def prompts_type(most: int) -> Any:
    """Text, a list of texts, token ids or a list of token-id lists, at most `most` in a list:
    what /v1/completions takes as `prompt` and /v1/embeddings as `input`."""
    return Annotated[
        Annotated[Prompt, Tag("str")]
        | Annotated[list[Prompt], Field(min_length=1, max_length=most), Tag("list[str]")]
        | Annotated[TokenIds, Tag("list[int]")]
        | Annotated[list[TokenIds], Field(min_length=1, max_length=most), Tag("list[list[int]]")],
        Discriminator(prompt_kind),
    ]


CompletionPrompts = prompts_type(MAX_PROMPTS)


class CompletionRequest(BaseRequest):
    prompt: CompletionPrompts = Field(
        description="Text, a list of texts, token ids, or a list of token-id lists."
    )
    max_tokens: int | None = Field(
        None, ge=0, le=MAX_TOKENS_CEILING, description="Default 16, as OpenAI's; 0 only with echo."
    )
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: int | None = Field(None, ge=1, le=1)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# Documented per route, so the OpenAPI schema says what a client (or a fuzzer) may get back.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in [
        (400, "bad request: the message names the field"),
        (401, "missing or wrong API key"),
        (404, "unknown model or route"),
        (413, "request body over --max-body-kb"),
        (429, "rate limit, queue full or this client's share of the queue used (see Retry-After)"),
        (504, "over --request-timeout"),
    ]
}
READ_ERRORS = {status: ERRORS[status] for status in (401, 404, 429)}


def narrow_schema(schema: dict[str, Any], served: Served) -> dict[str, Any]:
    """FastAPI's OpenAPI schema, narrowed to this server: its model names and its max_tokens cap,
    so clients (and fuzzers) see what it really accepts instead of any string and 32768."""
    names = {"enum": list(served.names)}
    most = max(1, min(served.max_tokens_cap, served.context - 1))
    for body in ("ChatRequest", "CompletionRequest"):
        fields = schema["components"]["schemas"][body]["properties"]
        fields["model"]["anyOf"] = [names, {"type": "null"}]
        for key in ("max_tokens", "max_completion_tokens"):
            for option in fields.get(key, {}).get("anyOf", []):
                if option.get("type") == "integer":
                    option["maximum"] = most
    for parameter in schema["paths"]["/v1/models/{name}"]["get"]["parameters"]:
        parameter["schema"] = {**parameter["schema"], **names}
    return schema
