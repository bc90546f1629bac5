"""The push webhook: `POST /v1/ui/hooks/git` asks a server that follows a remote
(`llmkit serve --ref REF --remote NAME`) to fetch REF now instead of at its next interval.

It is authenticated by GitHub's `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with the
secret in `LLMKIT_WEBHOOK_SECRET`, compared in constant time), not by an API key: a git host
holds no llmkit key. Refused: 404 `hook_disabled` when the server follows no remote or no secret
is set, 401 `missing_signature` without the header, 403 `bad_signature` when it does not match.
A valid push only asks for a fetch: requests coalesce, and fetches are rate-bounded
(`refserve.Follower`), so a flood of hooks cannot start a flood of fetches.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llmkit.errors import Forbidden, NotFound, Unauthorized

WEBHOOK_SECRET_ENV = "LLMKIT_WEBHOOK_SECRET"
SIGNATURE_HEADER = "x-hub-signature-256"
EVENT_HEADER = "x-github-event"

router = APIRouter(tags=["hooks"])


def webhook_secret() -> bytes | None:
    """The shared secret, read when the app is built (rotating it is a restart)."""
    secret = os.environ.get(WEBHOOK_SECRET_ENV, "")
    return secret.encode("utf-8") if secret else None


def signature(secret: bytes, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for `body`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@router.post("/v1/ui/hooks/git", status_code=202, response_model=None)
async def git_hook(request: Request) -> dict[str, Any] | JSONResponse:
    """A push webhook (X-Hub-Signature-256, no API key): fetch the served ref from its remote."""
    follower = getattr(request.app.state, "follower", None)
    if follower is None or follower.target.remote is None:
        raise NotFound(
            "No git hook here: this server follows no remote"
            " (llmkit serve --ref REF --remote NAME)",
            code="hook_disabled",
        )
    secret: bytes | None = request.app.state.webhook_secret
    if secret is None:
        raise NotFound(
            f"No git hook here: {WEBHOOK_SECRET_ENV} is not set on the server", code="hook_disabled"
        )
    body = await request.body()
    given = request.headers.get(SIGNATURE_HEADER)
    if not given:
        raise Unauthorized(
            "Missing X-Hub-Signature-256: sign the body with the webhook secret",
            code="missing_signature",
        )
    expected = signature(secret, body).encode()
    if not hmac.compare_digest(expected, given.strip().encode("utf-8", "replace")):
        raise Forbidden(
            "X-Hub-Signature-256 does not match the body and the webhook secret",
            code="bad_signature",
        )
    event = request.headers.get(EVENT_HEADER, "push")
    if event == "ping":
        return JSONResponse({"status": "pong"})
    if event != "push":
        return JSONResponse({"fetch": "ignored", "reason": f"event {event!r} is not a push"})
    pushed = _pushed_ref(request.headers.get("content-type", ""), body)
    followed = follower.store.remote_ref
    if pushed is not None and pushed != followed:
        return JSONResponse(
            {"fetch": "ignored", "reason": f"a push to {pushed}; this server follows {followed}"}
        )
    follower.request_fetch()
    return {"fetch": "queued", "ref": followed}


def _pushed_ref(content_type: str, body: bytes) -> str | None:
    """The `ref` of a push payload (JSON, or GitHub's form encoding with `payload=`); None when
    it names none, and the fetch goes ahead."""
    try:
        if content_type.startswith("application/x-www-form-urlencoded"):
            payload = json.loads(parse_qs(body.decode("utf-8")).get("payload", ["{}"])[0])
        else:
            payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    ref = payload.get("ref") if isinstance(payload, dict) else None
    return ref if isinstance(ref, str) else None
