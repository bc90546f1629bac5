"""The web UI's pages: routes -> the core (Index, authoring, KeyStore) -> a template.

Who may see a page is decided by the API's own `admin_key` dependency: a session cookie (and,
for a form that changes something, its CSRF token and our origin) or an admin bearer key.
An error on a page is answered as a page when the client asked for HTML (a browser's
navigation or form), and as the API's JSON error otherwise, so a program that reaches a page
without a key gets the same 401 as anywhere else. A browser that is not signed in is sent to
`/sign-in`, which comes back to the page it wanted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, FastAPI, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from llmkit import __version__, authoring
from llmkit.api.deps import SAFE_METHODS, AdminKey, Ws, form_fields, session_store
from llmkit.api.routes.auth import _local_path
from llmkit.errors import (
    BadRequest,
    Conflict,
    LlmkitError,
    PromptFormatError,
    Unauthorized,
)
from llmkit.keys import ApiKey
from llmkit.prompt_views import iso_time
from llmkit.promptfile import parse, path_for_key
from llmkit.sessions import SESSION_COOKIE, csrf_token_for
from llmkit.versions import Version
from llmkit.web import views
from llmkit.workspace import Workspace

HERE = FilePath(__file__).parent
STATIC_URL = "/static"
SIGN_IN_URL = "/sign-in"
MAX_VERSION_SPEC = 256
MAX_MESSAGE = 2000
SHA_RE = re.compile(r"[0-9a-f]{7,40}")
KeyId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The key's id")]

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
        self.env.globals.update(version=__version__, quote=quote, when=views.when, iso=iso_time)

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


router = APIRouter(route_class=PageRoute, include_in_schema=False)


def _version_spec(spec: str | None, param: str) -> str | None:
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


# -- signing in ------------------------------------------------------------------------------


@router.get(SIGN_IN_URL)
def sign_in(request: Request, next: str | None = Query(None, max_length=2000)) -> Response:
    """The sign-in form; it posts to the API's sign-in route, which comes back to `next`."""
    target = _local_path(next)
    if target.startswith(SIGN_IN_URL):
        target = "/"
    ended = None
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        try:
            session_store(request).verify(token)
        except LlmkitError as exc:
            ended = exc.message
        else:
            return RedirectResponse(target, status_code=303)
    return pages(request).render(request, "sign_in.html", next=target, ended=ended)


# -- prompts ---------------------------------------------------------------------------------


def _last_change(ws: Workspace, prompt: Any) -> Any:
    version = prompt.version
    if version is None:
        return None
    if not version.draft:
        return version.commit
    if prompt.latest_committed:
        return ws.index.version(prompt.key, prompt.latest_committed).commit
    return None


@router.get("/")
def prompts_page(
    request: Request, ws: Ws, key: AdminKey, q: str | None = Query(None, max_length=2000)
) -> Response:
    """Every prompt as a tree of folders; `q` keeps those whose key or text contains it."""
    query = views.clean_query(q)
    found = [p for p in ws.index.list_prompts() if not query or views.matches(p, query)]
    rows = [views.prompt_row(p, _last_change(ws, p)) for p in found]
    return pages(request).render(
        request, "prompts.html", tree=views.tree_of(rows), query=query, count=len(rows)
    )


@router.get("/prompts/{key:path}")
def prompt_page(
    request: Request,
    key: str,
    ws: Ws,
    admin: AdminKey,
    version: str | None = Query(None),
    committed: str | None = Query(None),
) -> Response:
    """One prompt: its sections with template expressions marked, frontmatter and variables."""
    prompt = ws.index.get_prompt(key)
    shown = ws.index.version(prompt.key, _version_spec(version, "version"))
    parsed = error = None
    variables: list[str] = []
    variable_error = None
    try:
        parsed = shown.prompt()
        variables, variable_error = views.variables_in(parsed)
    except PromptFormatError as exc:
        error = exc.message
    return pages(request).render(
        request,
        "prompt.html",
        prompt=prompt,
        shown=shown,
        label=views.version_label(shown),
        served=version is None,
        parsed=parsed,
        error=error,
        sections=[(m.role, views.marked(m.content)) for m in parsed.messages] if parsed else [],
        frontmatter=views.frontmatter_rows(parsed.meta) if parsed else [],
        variables=variables,
        variable_error=variable_error,
        committed=committed if committed and SHA_RE.fullmatch(committed) else None,
        unchanged=committed == "unchanged",
    )


@router.get("/history/{key:path}")
def history_page(request: Request, key: str, ws: Ws, admin: AdminKey) -> Response:
    """Every version, newest first, and the forms that compare two of them."""
    prompt = ws.index.get_prompt(key)
    versions = list(reversed(ws.index.versions(prompt.key)))
    return pages(request).render(
        request,
        "history.html",
        prompt=prompt,
        versions=versions,
        label=views.version_label,
    )


@router.get("/diff/{key:path}")
def diff_page(
    request: Request,
    key: str,
    ws: Ws,
    admin: AdminKey,
    from_: str | None = Query(None, alias="from"),
    to: str | None = Query(None),
) -> Response:
    """Two versions side by side: numbers, shas, branches or tags; `to` defaults to the
    version served."""
    prompt = ws.index.get_prompt(key)
    versions = list(reversed(ws.index.versions(prompt.key)))
    old_spec, new_spec = _version_spec(from_, "from"), _version_spec(to, "to")
    new = ws.index.version(prompt.key, new_spec)
    if old_spec is None and new.number is not None and new.number > 1:
        old_spec = str(new.number - 1)
    old = ws.index.version(prompt.key, old_spec) if old_spec is not None else None
    rows = views.side_by_side(old.content or "", new.content or "") if old else []
    return pages(request).render(
        request,
        "diff.html",
        prompt=prompt,
        versions=versions,
        old=old,
        new=new,
        old_spec=old_spec or "",
        new_spec=new_spec or "",
        rows=rows,
        identical=old is not None and old.content == new.content,
        label=views.version_label,
    )


# -- editing ---------------------------------------------------------------------------------


def _editable(ws: Workspace, key: str) -> Version:
    """The served, committed version of a prompt that may be edited; a draft (uncommitted
    changes in the working tree) is refused, as the API refuses it."""
    prompt = ws.index.get_prompt(key, include_deleted=False)
    version = ws.index.version(prompt.key)
    if version.draft:
        raise Conflict(
            f"{prompt.path} has uncommitted changes in the working tree; commit or discard"
            " them before editing it here"
        )
    return version


@router.get("/edit/{key:path}")
def edit_page(request: Request, key: str, ws: Ws, admin: AdminKey) -> Response:
    """The prompt file in a text box, with the version it was read at."""
    version = _editable(ws, key)
    return pages(request).render(
        request,
        "edit.html",
        prompt_key=version.key,
        content=version.content or "",
        base=version.sha or "",
        message="",
        author_name="",
        author_email="",
        problem=None,
        conflict=None,
        label=views.version_label(version),
    )


@router.post("/edit/{key:path}")
async def commit_edit(request: Request, key: str, ws: Ws, admin: AdminKey) -> Response:
    """Commit the edited file, unless the prompt moved on since the editor was opened: then
    the conflict is shown, with the text as typed, and nothing is written."""
    fields = await form_fields(request)
    if fields is None:
        raise BadRequest("The editor posts an HTML form (application/x-www-form-urlencoded)")
    content = fields.get("content", "").replace("\r\n", "\n")
    base = fields.get("base", "").strip()
    message = fields.get("message", "").strip()[:MAX_MESSAGE]
    author_name = fields.get("author_name", "").strip() or None
    author_email = fields.get("author_email", "").strip() or None
    form = dict(
        prompt_key=key,
        content=content,
        base=base,
        message=message,
        author_name=author_name or "",
        author_email=author_email or "",
        conflict=None,
    )
    if not base:
        raise BadRequest("The editor's form has no base version; open the editor again")

    def save() -> tuple[str | None, str | None]:
        before = ws.index.version(key).sha
        try:
            parsed = parse(content, path_for_key(key))
        except PromptFormatError as exc:
            raise BadRequest(exc.message, param="content") from None
        prompt = authoring.save_prompt(
            ws,
            key,
            parsed,
            base=base,
            message=message or None,
            author_name=author_name,
            author_email=author_email,
        )
        after = prompt.version.sha if prompt.version else None
        return before, after

    try:
        before, after = await run_in_threadpool(save)
    except Conflict as exc:
        current = await run_in_threadpool(ws.index.version, key)
        conflict = {
            "message": exc.message,
            "current": current,
            "rows": views.side_by_side(current.content or "", content),
        }
        return pages(request).render(
            request,
            "edit.html",
            status=409,
            problem=None,
            label=views.version_label(current),
            **{**form, "conflict": conflict},
        )
    except BadRequest as exc:
        return pages(request).render(
            request, "edit.html", status=400, problem=exc.message, label=base[:12], **form
        )
    done = after if after and after != before else "unchanged"
    return RedirectResponse(
        f"/prompts/{quote(key)}?{urlencode({'committed': done})}", status_code=303
    )


# -- API keys --------------------------------------------------------------------------------


@router.get("/keys")
def keys_page(
    request: Request, ws: Ws, admin: AdminKey, revoked: int | None = Query(None, ge=1)
) -> Response:
    """Every key, revoked ones too, and a form to create one."""
    listing = ws.keys.list()
    gone = next((k for k in listing if k.id == revoked), None)
    return pages(request).render(
        request, "keys.html", keys=listing, created=None, clear=None, problem=None, revoked=gone
    )


@router.post("/keys")
async def create_key(request: Request, ws: Ws, admin: AdminKey) -> Response:
    """Create a key and show it, this once."""
    fields = await form_fields(request) or {}
    name = fields.get("name", "")
    scope = fields.get("scope", "run")
    try:
        record, clear = await run_in_threadpool(ws.keys.create, name, scope)
    except BadRequest as exc:
        listing = await run_in_threadpool(ws.keys.list)
        return pages(request).render(
            request,
            "keys.html",
            status=400,
            keys=listing,
            created=None,
            clear=None,
            problem=exc.message,
            revoked=None,
        )
    listing = await run_in_threadpool(ws.keys.list)
    return pages(request).render(
        request,
        "keys.html",
        status=201,
        keys=listing,
        created=record,
        clear=clear,
        problem=None,
        revoked=None,
    )


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: KeyId, ws: Ws, admin: AdminKey) -> Response:
    """Revoke a key; it stops working at once, with the browser sessions signed in with it."""
    ws.keys.revoke(key_id)
    return RedirectResponse(f"/keys?{urlencode({'revoked': key_id})}", status_code=303)


def install(app: FastAPI) -> None:
    """The pages at `/` and their stylesheet and script under `/static/`."""
    app.state.web_pages = Pages()
    app.mount(STATIC_URL, StaticFiles(directory=HERE / "static"), name="web-static")
    app.include_router(router)
