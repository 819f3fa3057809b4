"""The Chat view's API: the models one can talk to, and an answer streamed as server-sent events.

Run as:
    app.include_router(router)    # POST /api/chat {"model": "runs/a", "messages": [...]}
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from smolora.errors import SmoLoRAError
from smolora.redact import mask_text
from smolora.ui import chat, models, runs
from smolora.ui.requests import ChatRequest
from smolora.ui.state import UI, runs_dirs
from smolora.ui.workspace import model_ref, relative

router = APIRouter()


@router.get("/api/chat/models")
def chat_models(ui: UI) -> dict[str, Any]:
    tuned, bases = [], []
    for d in runs_dirs(ui):
        for r in runs.list_runs(d, set()):
            if r["has_adapter"]:
                tuned.append({"value": relative(ui.workspace, Path(r["path"])), "base": r["base_model"]})
                bases.append(r["base_model"])
    bases += models.loadable_names()
    return {"runs": tuned, "bases": list(dict.fromkeys(b for b in bases if b)), "loaded": chat.loaded()}


@router.post("/api/chat")
async def chat_stream(req: ChatRequest, ui: UI) -> StreamingResponse:
    key = model_ref(ui.workspace, req.model)
    cancel = threading.Event()

    async def events():
        yield _sse({"status": "loading" if key not in chat.loaded() else "generating"})
        pieces = chat.stream_answer(
            key, req.messages, req.max_new_tokens, req.temperature, req.system_prompt, cancel
        )
        try:
            warned = False
            async for piece in iterate_in_threadpool(pieces):
                if not warned and (warning := chat.lineage_warning(key)):
                    warned = True  # the model is loaded by now: say so before its answer
                    yield _sse({"warning": mask_text(warning)})
                if piece:
                    yield _sse({"text": piece})
            yield _sse({"done": True})
        except SmoLoRAError as e:
            yield _sse({"error": mask_text(str(e))})
        except Exception as e:  # a stream cannot change its status code any more; say what broke
            yield _sse({"error": mask_text(f"{type(e).__name__}: {e}")})
        finally:
            # The browser went away (Starlette cancels this generator on disconnect) or the
            # answer is done: either way generation stops and the model lock is released.
            cancel.set()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
