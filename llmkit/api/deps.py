"""Dependencies: the workspace, and API keys checked by scope."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from llmkit.errors import BadRequest, Forbidden, Unauthorized
from llmkit.keys import ApiKey
from llmkit.workspace import Workspace


def workspace(request: Request) -> Workspace:
    return request.app.state.ws  # type: ignore[no-any-return]


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it. As the
    dependency `JsonBody`, it lets a handler that blocks be a plain function (run in the thread
    pool) while the body is still read on the event loop."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    except RecursionError:  # the middleware refuses deep bodies first; kept for other callers
        raise BadRequest("Request body nests too deeply", code="too_deep") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    return body


def _key_from(request: Request) -> ApiKey:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized(
            "Missing API key: send it as 'Authorization: Bearer llmkit_...'", code="missing_api_key"
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized("Malformed Authorization header: expected 'Bearer llmkit_...'")
    key = workspace(request).keys.verify(token, write_later=_in_thread_pool)
    if key is None:
        raise Unauthorized("Invalid API key: unknown or revoked")
    request.state.api_key = key
    return key


def _in_thread_pool(work: Callable[[], None]) -> None:
    asyncio.get_running_loop().run_in_executor(None, work)


# The key checks are `async def` so FastAPI runs them on the event loop: verify() is an
# in-memory lookup, and a trip through the thread pool cost more than the rest of the check.
# The occasional `last_used_at` write goes to the thread pool, never waited for here.
async def run_key(request: Request) -> ApiKey:
    """Any valid key: `run` and `admin` keys may execute prompts and list models."""
    return _key_from(request)


async def admin_key(request: Request) -> ApiKey:
    key = _key_from(request)
    if key.scope != "admin":
        raise Forbidden(f"This route needs an admin key; key {key.prefix}… has scope {key.scope!r}")
    return key


Ws = Annotated[Workspace, Depends(workspace)]
JsonBody = Annotated[dict[str, Any], Depends(json_object)]
RunKey = Annotated[ApiKey, Depends(run_key)]
AdminKey = Annotated[ApiKey, Depends(admin_key)]
