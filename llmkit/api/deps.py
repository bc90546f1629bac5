"""Dependencies: the workspace, and the caller, by API key or browser session, checked by scope.

A request is authenticated by its `Authorization: Bearer` key when it has that header, else by
its session cookie (`llmkit.sessions`). A cookie is sent by the browser on its own, so a write
authenticated by one (any method but GET, HEAD and OPTIONS) must also prove it comes from a
page of ours: the session's CSRF token in `X-CSRF-Token` (or the `csrf_token` field of a form),
and an `Origin` (else `Referer`) that is the server's own or one of `LLMKIT_TRUSTED_ORIGINS`.
A bearer key is never sent by a browser on its own, so it needs neither.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import Depends, Path, Request
from fastapi.security import HTTPBearer
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from llmkit.config import Settings, origin_of
from llmkit.db import MAX_SQLITE_INT
from llmkit.errors import BadRequest, Forbidden, Unauthorized, clipped
from llmkit.keys import ApiKey
from llmkit.sessions import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    LoginLimiter,
    SessionStore,
    SignedIn,
    csrf_matches,
)
from llmkit.workspace import Workspace

T = TypeVar("T")


def workspace(request: Request) -> Workspace:
    return request.app.state.ws


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
    detail = f"{where}: {first['msg']} (got {clipped(repr(first.get('input')), 60)})"
    hint = FIELD_HINTS.get(field)
    return BadRequest(f"{hint} ({detail})" if hint else f"Invalid {detail}", param=field)


def bearer_token(request: Request) -> str | None:
    """The key of the request's `Authorization: Bearer` header; None without the header, and a
    401 naming what is wrong with a malformed one."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized("Malformed Authorization header: expected 'Bearer llmkit_...'")
    return token


def _key_from(request: Request) -> ApiKey:
    token = bearer_token(request)
    if token is None:
        raise Unauthorized(
            "Missing API key: send it as 'Authorization: Bearer llmkit_...'"
            " (a browser signs in with POST /v1/ui/auth/login)",
            code="missing_api_key",
        )
    key = workspace(request).keys.verify(token, write_later=_in_thread_pool)
    if key is None:
        raise Unauthorized("Invalid API key: unknown or revoked")
    request.state.api_key = key
    return key


def _in_thread_pool(work: Callable[[], None]) -> None:
    asyncio.get_running_loop().run_in_executor(None, work)


# -- browser sessions ------------------------------------------------------------------------

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 100


def session_store(request: Request) -> SessionStore:
    return request.app.state.sessions  # type: ignore[no-any-return]


def login_limiter(request: Request) -> LoginLimiter:
    return request.app.state.login_limiter  # type: ignore[no-any-return]


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _trusted_proxy(request: Request, address: str | None) -> bool:
    networks = _settings(request).proxy_networks
    if not networks or not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _peer(request: Request) -> str | None:
    return request.client.host if request.client else None


def request_scheme(request: Request) -> str:
    """`https` when the request reached llmkit over TLS, or reached a trusted proxy
    (`LLMKIT_TRUSTED_PROXIES`) over it as that proxy's `X-Forwarded-Proto` says (its last
    value: the one the proxy next to llmkit set); else `http`. Nobody else's
    `X-Forwarded-Proto` is believed."""
    if request.url.scheme == "https":
        return "https"
    if _trusted_proxy(request, _peer(request)):
        forwarded = request.headers.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
        if forwarded in ("http", "https"):
            return forwarded
    return "http"


def client_address(request: Request) -> str:
    """The address of the client: the peer, or behind trusted proxies the last address of
    `X-Forwarded-For` that is not one of them (the earlier ones are whatever the client
    wrote)."""
    peer = _peer(request) or "unknown"
    if not _trusted_proxy(request, peer):
        return peer
    hops = ",".join(request.headers.getlist("x-forwarded-for")).split(",")
    for hop in reversed([h.strip() for h in hops if h.strip()]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a garbled header: count the proxy itself rather than trust a word
        if not _trusted_proxy(request, hop):
            return hop
    return peer


def own_origin(request: Request) -> str:
    return f"{request_scheme(request)}://{request.headers.get('host', '').lower()}"


def check_origin(request: Request, *, required: bool) -> None:
    """A 403 unless the request's `Origin` (else its `Referer`'s origin) is the server's own or
    a trusted one. Without either header: a 403 when `required`, else allowed (a program)."""
    sent = request.headers.get("origin")
    where = "Origin"
    if sent is None and request.headers.get("referer") is not None:
        sent = origin_of(request.headers["referer"]) or request.headers["referer"][:100]
        where = "Referer"
    if sent is None:
        if required:
            raise Forbidden(
                "Cross-site request refused: a signed-in browser's write must carry an Origin"
                " or Referer header",
                code="csrf_origin_missing",
            )
        return
    own = own_origin(request)
    if sent.lower() != own and sent.lower() not in _settings(request).origins:
        raise Forbidden(
            f"Cross-site request refused: {where} {sent[:100]!r} is neither this server's"
            f" ({own}) nor one of LLMKIT_TRUSTED_ORIGINS",
            code="csrf_origin_mismatch",
        )


async def form_fields(request: Request) -> dict[str, str] | None:
    """The fields of an HTML form body (`application/x-www-form-urlencoded`), or None when the
    body is not one. The body is cached by the request, so the route reads it again."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        return None
    raw = await request.body()
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"Form body cannot be read: {exc}") from None
    return dict(pairs)


async def check_csrf(request: Request, token: str) -> None:
    """The double-submit check of a write authenticated by the session cookie `token`: the
    session's CSRF token in the header or the form, then the origin."""
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        fields = await form_fields(request)
        sent = None if fields is None else fields.get(CSRF_FIELD)
    if not sent:
        raise Forbidden(
            f"Missing CSRF token: a signed-in browser's {request.method} must send the session's"
            f" CSRF token in the {CSRF_HEADER} header (or the {CSRF_FIELD} form field); sign-in"
            " and GET /v1/ui/auth/me answer it, and the llmkit_csrf cookie holds it",
            code="csrf_token_missing",
        )
    if not csrf_matches(token, sent):
        raise Forbidden(
            f"Wrong CSRF token: the {CSRF_HEADER} header (or {CSRF_FIELD} field) does not"
            " belong to this session; read it again from GET /v1/ui/auth/me",
            code="csrf_token_invalid",
        )
    check_origin(request, required=True)


async def _session_key(request: Request, token: str) -> ApiKey:
    signed_in: SignedIn = await run_in_threadpool(session_store(request).verify, token)
    if request.method not in SAFE_METHODS:
        await check_csrf(request, token)
    request.state.api_key = signed_in.key
    request.state.session = signed_in.session
    return signed_in.key


class KeyCheck(HTTPBearer):
    """The API key check, as a dependency. Being an HTTPBearer, it declares the bearer scheme in
    the OpenAPI document (Swagger UI's Authorize) on every route that depends on it; the header
    is read by `_key_from`, whose errors say what is wrong with it."""

    def __init__(self, admin: bool) -> None:
        super().__init__(
            bearerFormat="llmkit_...",
            scheme_name="bearer",
            description=(
                "An llmkit API key; /v1/ui/* routes need an admin-scoped one (a browser may"
                " instead sign in with POST /v1/ui/auth/login)"
            ),
            auto_error=False,
        )
        self.admin = admin

    # `async` so FastAPI runs it on the event loop: verify() is an in-memory lookup, and a trip
    # through the thread pool cost more than the rest of the check. The occasional
    # `last_used_at` write goes to the thread pool, never waited for here.
    async def __call__(self, request: Request) -> ApiKey:  # type: ignore[override]
        token = request.cookies.get(SESSION_COOKIE)
        if token and not request.headers.get("authorization"):
            key = await _session_key(request, token)
        else:
            key = _key_from(request)  # a bearer key wins over a cookie sent beside it
        if self.admin and key.scope != "admin":
            raise Forbidden(
                f"This route needs an admin key; key {key.prefix}… has scope {key.scope!r}"
            )
        return key


# Any valid key: `run` and `admin` keys may execute prompts and list models.
run_key = KeyCheck(admin=False)
admin_key = KeyCheck(admin=True)


Ws = Annotated[Workspace, Depends(workspace)]
AdminKey = Annotated[ApiKey, Depends(admin_key)]
SessionsDep = Annotated[SessionStore, Depends(session_store)]
# Ids in a path. SQLite integers are 64-bit; a larger id would fail inside sqlite3 instead of
# reading as unknown.
KeyId = Annotated[int, Path(ge=1, le=MAX_SQLITE_INT, description="The key's id")]
SessionId = Annotated[int, Path(ge=1, le=MAX_SQLITE_INT, description="The session's id")]
