"""What every page shares: the templates, the headers, how an error becomes a page, and the
route class that does it. Each area of the UI (prompts, traces, playground, evals) is a module
with its own `router = page_router()`; `llmkit.web.site` mounts them all."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path as FilePath
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from llmkit import __version__
from llmkit.api.deps import SAFE_METHODS
from llmkit.errors import BadRequest, LlmkitError, Unauthorized
from llmkit.keys import ApiKey
from llmkit.prompt_views import iso_time
from llmkit.sessions import SESSION_COOKIE, csrf_token_for
from llmkit.web import views

HERE = FilePath(__file__).parent
STATIC_URL = "/static"
SIGN_IN_URL = "/sign-in"
MAX_VERSION_SPEC = 256

# Every page: nothing from another host (the browser refuses it), no framing, and never
# cached (a page holds the session's CSRF token, and a created key is shown once).
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


def wants_html(request: Request) -> bool:
    """A browser's navigation or form asks for HTML; a program usually does not."""
    return "text/html" in request.headers.get("accept", "")


class Pages:
    """The templates of one app, and how a page is answered."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(
            llmkit_version=__version__,
            quote=quote,
            urlencode=urlencode,
            when=views.when,
            iso=iso_time,
        )

    def render(
        self, request: Request, name: str, *, status: int = 200, **context: Any
    ) -> HTMLResponse:
        key: ApiKey | None = getattr(request.state, "api_key", None)
        token = request.cookies.get(SESSION_COOKIE)
        signed_in_by_cookie = getattr(request.state, "session", None) is not None
        html = self.env.get_template(name).render(
            request_path=request.url.path,
            key=key,
            csrf_token=csrf_token_for(token) if token and signed_in_by_cookie else "",
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


def pages(request: Request) -> Pages:
    return request.app.state.web_pages  # type: ignore[no-any-return]


def _path_and_query(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def error_page(request: Request, exc: LlmkitError) -> Response:
    """An error on a page, answered to a browser: to sign-in when a GET lacks a session, else
    a page that says what went wrong. A program gets the API's JSON error."""
    if not wants_html(request):
        raise exc
    if isinstance(exc, Unauthorized) and request.method in SAFE_METHODS:
        target = f"{SIGN_IN_URL}?{urlencode({'next': _path_and_query(request)})}"
        return RedirectResponse(target, status_code=303, headers={"cache-control": "no-store"})
    signed_out = isinstance(exc, Unauthorized)
    return pages(request).render(
        request, "error.html", status=exc.status, error=exc, signed_out=signed_out
    )


class PageRoute(APIRoute):
    """A route whose LlmkitErrors, its dependencies' included, become pages for a browser."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except LlmkitError as exc:
                return error_page(request, exc)

        return page_handler


def page_router() -> APIRouter:
    """A router for one area of the UI: its errors become pages, and it stays out of the
    OpenAPI document (the pages are not the API)."""
    return APIRouter(route_class=PageRoute, include_in_schema=False)


def version_spec(spec: str | None, param: str) -> str | None:
    """A version as a person types it (number, sha prefix, branch or tag), or None when empty;
    refuses what no git ref can hold before it reaches git."""
    spec = (spec or "").strip()
    if not spec:
        return None
    if len(spec) > MAX_VERSION_SPEC or any(c < " " or c == "\x7f" for c in spec):
        raise BadRequest(
            f"Invalid version {spec[:60]!r}: expected a version number, sha, branch or tag",
            param=param,
        )
    return spec
