"""Dependencies: the workspace, and API keys checked by scope."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from pydantic import TypeAdapter, ValidationError

from llmkit.errors import BadRequest, Forbidden, Unauthorized
from llmkit.keys import ApiKey
from llmkit.workspace import Workspace

T = TypeVar("T")


def workspace(request: Request) -> Workspace:
    return request.app.state.ws


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


# What a field is, for the message of a body that gets it wrong.
FIELD_HINTS = {
    "model": "model must be a prompt key, optionally pinned as key@version",
    "messages": "messages must be a list of {role, content} objects",
    "variables": "variables must be a JSON object",
    "response_format": "response_format must be an object with a type",
    "stream_options": "stream_options must be an object",
}


def parse_body(raw: bytes, adapter: TypeAdapter[T]) -> T:
    """`raw` validated by `adapter` straight from the JSON bytes, or a 400 that names what is
    wrong: a field that is not allowed (all of them, by name), a field of the wrong type, or a
    body that is not a JSON object at all."""
    try:
        return adapter.validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    if not _lone_surrogate(errors):
        raise _bad_body(errors)
    # pydantic's parser refuses a \uD800-\uDFFF escape without its pair, which JSON's grammar
    # allows and json.loads reads: such a call is served (its run-log row sanitized), as ever.
    try:
        return adapter.validate_python(json.loads(raw))
    except ValidationError as exc:
        raise _bad_body(exc.errors(include_url=False)) from None
    except ValueError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None


def body_reader(adapter: TypeAdapter[T]) -> Callable[[Request], Awaitable[T]]:
    """A dependency that reads the body through `adapter` as `parse_body` does (a 400 naming a
    bad field), on the event loop, so that a handler that blocks can be a plain function."""

    async def read(request: Request) -> T:
        return parse_body(await request.body(), adapter)

    return read


def documented_body(name: str) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that reads its body itself (see `parse_body`): the
    schema is one of the app's components (`docs.SELF_READ_BODIES`)."""
    schema = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _lone_surrogate(errors: list[Any]) -> bool:
    # How pydantic's parser names an escape of half a surrogate pair.
    reason = str((errors[0].get("ctx") or {}).get("error", "")) if errors else ""
    return errors[0]["type"] == "json_invalid" and "hex escape" in reason


def _bad_body(errors: list[Any]) -> BadRequest:
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        return BadRequest(f"Unknown request field(s): {', '.join(unknown)}", param=unknown[0])
    first = errors[0]
    if first["type"] == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", first["msg"])
        return BadRequest(f"Request body is not valid JSON: {reason}")
    loc = first["loc"]
    if not loc:
        return BadRequest("The request body must be a JSON object")
    field = str(loc[0])
    where = ".".join(str(part) for part in loc if isinstance(part, int) or part.isidentifier())
    detail = f"{where}: {first['msg']} (got {_shown(first.get('input'))})"
    hint = FIELD_HINTS.get(field)
    return BadRequest(f"{hint} ({detail})" if hint else f"Invalid {detail}", param=field)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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


class KeyCheck(HTTPBearer):
    """The API key check, as a dependency. Being an HTTPBearer, it declares the bearer scheme in
    the OpenAPI document (Swagger UI's Authorize) on every route that depends on it; the header
    is read by `_key_from`, whose errors say what is wrong with it."""

    def __init__(self, admin: bool) -> None:
        super().__init__(
            bearerFormat="llmkit_...",
            scheme_name="bearer",
            description="An llmkit API key; /v1/ui/* routes need an admin-scoped one",
            auto_error=False,
        )
        self.admin = admin

    # `async` so FastAPI runs it on the event loop: verify() is an in-memory lookup, and a trip
    # through the thread pool cost more than the rest of the check. The occasional
    # `last_used_at` write goes to the thread pool, never waited for here.
    async def __call__(self, request: Request) -> ApiKey:  # type: ignore[override]
        key = _key_from(request)
        if self.admin and key.scope != "admin":
            raise Forbidden(
                f"This route needs an admin key; key {key.prefix}… has scope {key.scope!r}"
            )
        return key


# Any valid key: `run` and `admin` keys may execute prompts and list models.
run_key = KeyCheck(admin=False)
admin_key = KeyCheck(admin=True)


Ws = Annotated[Workspace, Depends(workspace)]
JsonBody = Annotated[dict[str, Any], Depends(json_object)]
