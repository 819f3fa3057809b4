"""The page itself and what its header shows: `/` (index.html) and `GET /api/info`.

Run as:
    app.include_router(router)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from smolora.ui.state import UI

STATIC = Path(__file__).parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


@router.get("/api/info")
def info(ui: UI) -> dict[str, Any]:
    import smolora

    return {
        "version": smolora.__version__,
        "workspace": str(ui.workspace),
        "offline": os.environ.get("HF_HUB_OFFLINE") == "1",
    }
