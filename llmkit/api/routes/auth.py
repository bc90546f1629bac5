"""Signing in from a browser: a session cookie in exchange for an admin key, who is signed in,
signing out, and an admin's list of sessions. How sessions and CSRF tokens work is in
`llmkit.sessions` and `llmkit.api.deps`."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from llmkit.api.deps import (
    AdminKey,
    SessionId,
    SessionsDep,
    bearer_token,
    check_origin,
    client_address,
    form_fields,
    login_limiter,
    request_scheme,
    session_store,
    workspace,
)
from llmkit.errors import BadRequest, Unauthorized
from llmkit.keys import ApiKey
from llmkit.sessions import CSRF_COOKIE, SESSION_COOKIE, Session, csrf_token_for

LOGIN_FIELDS = ("key",)

router = APIRouter(prefix="/v1/ui/auth", tags=["sign in"])


class Me(BaseModel):
    """Who is calling: the key, and the session when a browser signed in with it."""

    key_id: int
    key_name: str
    key_prefix: str
    scope: str
    via: str  # "session" or "bearer"
    session_id: int | None
    signed_in_at: str | None
    expires_at: str | None
    absolute_expires_at: str | None
    csrf_token: str | None


class SignedOut(BaseModel):
    signed_out: bool


# A session as the API shows it: the fields of the stored record (never its token), under the
# name of its role (no docstring: it would become the schema's description).
class SessionPublic(Session):
    pass


LOGIN_BODY = {
    "requestBody": {
        "description": (
            "An admin key, as `key` in a JSON object or an HTML form; or no body and the key in"
            " `Authorization: Bearer`. A form may add `next`, the local path to go to."
        ),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"key": {"type": "string", "example": "llmkit_..."}},
                    "additionalProperties": False,
                }
            },
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {"key": {"type": "string"}, "next": {"type": "string"}},
                }
            },
        },
    }
}


def _me(key: ApiKey, session: Session | None, token: str | None) -> dict[str, Any]:
    return {
        "key_id": key.id,
        "key_name": key.name,
        "key_prefix": key.prefix,
        "scope": key.scope,
        "via": "session" if session else "bearer",
        "session_id": session.id if session else None,
        "signed_in_at": session.created_at if session else None,
        "expires_at": session.expires_at if session else None,
        "absolute_expires_at": session.absolute_expires_at if session else None,
        "csrf_token": csrf_token_for(token) if token else None,
    }


def _local_path(value: str | None) -> str:
    """Where a form goes after signing in or out: a path on this server only, never another
    site (`//evil.example` is another site to a browser)."""
    if not value or not value.startswith("/") or value.startswith("//"):
        return "/"
    # Browsers read a backslash as a slash ("/\\evil.example"); no control characters either.
    return value if all(c.isprintable() and c != "\\" for c in value) else "/"


async def _login_fields(request: Request) -> tuple[dict[str, str], bool]:
    """The sign-in fields and whether they came from an HTML form."""
    form = await form_fields(request)
    if form is not None:
        return form, True
    raw = await request.body()
    if not raw.strip():
        return {}, False
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest('The sign-in body must be a JSON object: {"key": "llmkit_..."}')
    unknown = sorted(set(body) - set(LOGIN_FIELDS))
    if unknown:
        raise BadRequest(f"Unknown request field(s): {', '.join(unknown)}", param=unknown[0])
    if "key" in body and not isinstance(body["key"], str):
        raise BadRequest(f"key must be a string, got {type(body['key']).__name__}", param="key")
    return body, False


def _set_cookies(response: Response, request: Request, token: str, max_age: int) -> None:
    secure = request_scheme(request) == "https"
    for name, value, httponly in (
        (SESSION_COOKIE, token, True),
        # Readable by the page's script, which echoes it in X-CSRF-Token: the double submit.
        (CSRF_COOKIE, csrf_token_for(token), False),
    ):
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            secure=secure,
            httponly=httponly,
            samesite="strict",
        )
    response.headers["cache-control"] = "no-store"


def _clear_cookies(response: Response, request: Request) -> None:
    secure = request_scheme(request) == "https"
    for name, httponly in ((SESSION_COOKIE, True), (CSRF_COOKIE, False)):
        response.delete_cookie(name, path="/", secure=secure, httponly=httponly, samesite="strict")
    response.headers["cache-control"] = "no-store"


@router.post(
    "/login",
    response_model=Me,
    openapi_extra=LOGIN_BODY,
    responses={303: {"description": "Signed in from an HTML form: on to `next`"}},
)
async def login(request: Request) -> Response:
    """Sign in with an admin key: sets the session cookie (HttpOnly, SameSite=Strict)."""
    # A page of another site must not sign a browser in (to a session of the attacker's key).
    check_origin(request, required=False)
    fields, from_form = await _login_fields(request)
    clear = fields.get("key") or bearer_token(request)
    if not clear:
        raise Unauthorized(
            "Missing API key: send an admin key as `key` (a JSON or form field), or as"
            " 'Authorization: Bearer llmkit_...'",
            code="missing_api_key",
        )
    client = client_address(request)
    limiter = login_limiter(request)
    limiter.attempt(client)
    key = await run_in_threadpool(workspace(request).keys.verify, clear)
    if key is None:
        raise Unauthorized("Invalid API key: unknown or revoked")
    store = session_store(request)
    signed_in, token = await run_in_threadpool(
        store.create, key, client=client, user_agent=request.headers.get("user-agent")
    )
    limiter.succeeded(client)
    response: Response
    if from_form:
        response = RedirectResponse(_local_path(fields.get("next")), status_code=303)
    else:
        body = _me(key, signed_in.session, token)
        response = JSONResponse(body)
    _set_cookies(response, request, token, int(store.absolute_s))
    return response


@router.get("/me", response_model=Me)
def me(request: Request, response: Response, key: AdminKey) -> dict[str, Any]:
    """Who is signed in: the key, and the session's expiry and CSRF token."""
    response.headers["cache-control"] = "no-store"  # it holds the CSRF token
    session: Session | None = getattr(request.state, "session", None)
    token = request.cookies.get(SESSION_COOKIE) if session else None
    return _me(key, session, token)


@router.post(
    "/logout",
    response_model=SignedOut,
    responses={303: {"description": "Signed out from an HTML form: on to `next`"}},
)
async def logout(request: Request, key: AdminKey) -> Response:
    """Sign out: ends the cookie's session and clears the cookies."""
    token = request.cookies.get(SESSION_COOKIE)
    ended = False
    if token:
        ended = await run_in_threadpool(session_store(request).sign_out, token)
    fields = await form_fields(request)
    response: Response
    if fields is not None:
        response = RedirectResponse(_local_path(fields.get("next")), status_code=303)
    else:
        response = JSONResponse({"signed_out": ended})
    _clear_cookies(response, request)
    return response


@router.get("/sessions", response_model=list[SessionPublic])
def list_sessions(sessions: SessionsDep, key: AdminKey) -> list[dict[str, Any]]:
    """Every live browser session (never its token)."""
    return [asdict(s) for s in sessions.list()]


@router.delete("/sessions/{session_id}", response_model=SessionPublic)
def revoke_session(session_id: SessionId, sessions: SessionsDep, key: AdminKey) -> dict[str, Any]:
    """End a browser session; its next request is a 401."""
    return asdict(sessions.revoke(session_id))
