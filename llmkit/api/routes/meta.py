"""Version, health, and the OpenAI-style model list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from llmkit import __version__
from llmkit.api.deps import Ws, run_key

router = APIRouter()
run_router = APIRouter(dependencies=[Depends(run_key)])


@router.get("/v1/")
def version() -> dict[str, str]:
    """The llmkit version."""
    return {"name": "llmkit", "version": __version__}


@router.get("/healthz")
def healthz(ws: Ws) -> dict[str, Any]:
    """Liveness and what the index serves."""
    return {"status": "ok", "head": ws.index.head(), "prompts": len(ws.index.list_prompts())}


@run_router.get("/v1/models")
def list_models(ws: Ws) -> dict[str, Any]:
    """Every served prompt key, as OpenAI's model list."""
    data = []
    for prompt in ws.index.list_prompts():
        commit = prompt.version.commit if prompt.version else None
        data.append(
            {
                "id": prompt.key,
                "object": "model",
                "created": commit.committed_at if commit else 0,
                "owned_by": "llmkit",
            }
        )
    return {"object": "list", "data": data}
