"""Version, health, the OpenAI-style model list, and the models LLMKit's UI picks from."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from llmkit import __version__
from llmkit.api.deps import Ws, admin_key, run_key
from llmkit.models import ui_models

router = APIRouter()
run_router = APIRouter(dependencies=[Depends(run_key)])


@router.get("/v1/")
def version() -> dict[str, str]:
    """The llmkit version."""
    return {"name": "llmkit", "version": __version__}


@router.get("/healthz", response_model=None)
def healthz(request: Request, ws: Ws, strict: bool = False) -> dict[str, Any] | JSONResponse:
    """Liveness, what the index serves, and the run-log writer's health. `status` is
    "degraded" while the writer is down or failing to write, or (serving --ref) while REF is
    gone or cannot be fetched or loaded; the answer is 200 all the same (the server still
    answers calls, and a restart would drop the rows it holds), or 503 with `?strict=true`, for
    monitors that read only the status code. `otlp` is the span export's health, which never
    makes the server degraded: spans are optional."""
    runlog = ws.runlog.health()
    body = {
        "status": runlog["status"],
        "head": ws.index.head(),
        "prompts": len(ws.index.list_prompts()),
        "runlog": runlog,
        "otlp": request.app.state.otlp_health(),
    }
    follower = request.app.state.follower
    if follower is not None:
        body["ref"] = follower.status()
        if not follower.healthy():
            body["status"] = "degraded"
    if strict and body["status"] != "ok":
        return JSONResponse(body, status_code=503)
    return body


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


@router.get("/v1/ui/models", dependencies=[Depends(admin_key)], tags=["models"])
def list_ui_models(ws: Ws) -> list[dict[str, Any]]:
    """LLMKit's models: every alias of llmkit.yaml and every other model prompts use, with
    integer ids that depend on the name alone, provider, key status and the prompts using it."""
    return ui_models(ws.models, ws.index.models_in_use())
