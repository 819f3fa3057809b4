"""The Models view's server side: the model store's own functions, made JSON-ready.

Listing, verifying and removing call `smolora.model.entries` and `.verify` (the functions behind
`smolora models list/verify/rm`); pulling runs `smolora models pull NAME` as a subprocess,
since converting or downloading can take a minute.

Run as:
    for m in list_models():
        print(m["name"], m["status"], m["disk"])
"""

from __future__ import annotations

from typing import Any

from smolora.model import entries, store
from smolora.model.verify import verify_models
from smolora.ui.jobs import cli_argv


def list_models() -> list[dict[str, Any]]:
    rows = []
    for e in entries.list_models():
        rows.append(
            {
                "name": e["name"],
                "kind": e.get("kind", "?"),
                "source": e.get("source"),
                "revision": e.get("revision"),
                "size": e["disk"],
                "created": (e.get("created") or "").replace("T", " "),
                "status": e["status"],
                "files": len(e.get("files", {})),
            }
        )
    present = {e["name"] for e in rows}
    for alias, (package, filename) in store.BUNDLED.items():
        if alias not in present:
            rows.append(
                {
                    "name": alias,
                    "kind": "bundled",
                    "source": f"bundled:{package}/{filename}",
                    "size": 0,
                    "created": None,
                    "status": "not pulled yet",
                    "files": 0,
                }
            )
    return rows


def loadable_names() -> list[str]:
    """Names `resolve_model` accepts offline: bundled aliases and every complete store entry."""
    return list(
        dict.fromkeys([*store.BUNDLED, *(e["name"] for e in entries.list_models() if e["status"] == "ok")])
    )


def verify(name: str) -> dict[str, Any]:
    result = verify_models([name])[0]
    return {
        "name": result["name"],
        "ok": not result["bad"] and not result["extra"],  # as `smolora models verify`: unlisted files fail
        "checked": result["checked"],
        "bad_files": result["bad"],
        "extra_files": result["extra"],
    }


def remove(name: str) -> dict[str, Any]:
    path, freed = entries.remove_model(name)
    return {"removed": path.name, "freed": freed}


def pull_argv(name: str) -> list[str]:
    return cli_argv("models", "pull", name)
