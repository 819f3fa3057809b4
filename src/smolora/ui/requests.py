"""The JSON bodies the UI's API accepts (validated by FastAPI: a bad one is a 422 naming the field).

Run as:
    ChatRequest(model="runs/quickstart", messages=[{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Overrides(BaseModel):
    overrides: list[str] = Field(default_factory=list, description="`--set` strings: section.key=value")


class StartRequest(Overrides):
    resume: bool = False


class InspectRequest(Overrides):
    path: str
    examples: int = Field(3, ge=0, le=20)


class ChatRequest(BaseModel):
    model: str
    messages: list[dict[str, str]]
    max_new_tokens: int = Field(128, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    system_prompt: str | None = None


class ExportRequest(BaseModel):
    run: str
    format: str = Field("merge", pattern="^(merge|gguf|ollama)$")
    quant: str = Field("f16", pattern="^(f32|f16|q8_0)$")
    out: str | None = None


class ModelName(BaseModel):
    name: str = Field(min_length=1, max_length=300)
