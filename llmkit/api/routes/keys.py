"""API keys (admin only). A key is shown once, when it is created."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Query

from llmkit.api.deps import KeyId, Ws, admin_key
from llmkit.api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic

router = APIRouter(
    prefix="/v1/ui/settings/api-keys", dependencies=[Depends(admin_key)], tags=["api keys"]
)


@router.get("", response_model=list[ApiKeyPublic])
def list_keys(
    ws: Ws,
    include_revoked: bool = Query(False, description="Also the revoked (deleted) keys"),
) -> list[dict]:
    """The keys that work, without the keys themselves; revoked ones too with
    `?include_revoked=true`."""
    return [asdict(key) for key in ws.keys.list(include_revoked=include_revoked)]


@router.post("", response_model=ApiKeyCreated, status_code=201)
def create_key(body: ApiKeyCreate, ws: Ws) -> dict:
    """Create a key; the response is the only time it is shown."""
    record, clear = ws.keys.create(body.name, body.scope)
    return {**asdict(record), "key": clear}


@router.delete("/{key_id}", response_model=ApiKeyPublic)
def revoke_key(key_id: KeyId, ws: Ws) -> dict:
    """Delete a key as LLMKit's UI does: it stops working at once and leaves the list; its row
    is kept, revoked (`?include_revoked=true` shows it), so the run log still names it."""
    return asdict(ws.keys.revoke(key_id))
