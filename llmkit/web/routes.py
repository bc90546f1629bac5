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
from urllib.parse import quote, urlencode

from fastapi import Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from llmkit import authoring
from llmkit.api.deps import AdminKey, KeyId, Ws, form_fields, session_store
from llmkit.api.routes.auth import _local_path
from llmkit.db import MAX_SQLITE_INT
from llmkit.errors import (
    BadRequest,
    Conflict,
    LlmkitError,
    PromptFormatError,
)
from llmkit.keys import ApiKey
from llmkit.promptfile import parse, path_for_key
from llmkit.sessions import SESSION_COOKIE
from llmkit.store import Commit
from llmkit.versions import Prompt, Version
from llmkit.web import views
from llmkit.web.pages import SIGN_IN_URL, page_router, pages, version_spec
from llmkit.web.ref_badges import badges_html
from llmkit.workspace import Workspace

MAX_MESSAGE = 2000
SHA_RE = re.compile(r"[0-9a-f]{7,40}")

router = page_router()


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


def _last_change(ws: Workspace, prompt: Prompt) -> Commit | None:
    version = prompt.version
    if version is None:
        return None
    if not version.draft:
        return version.commit
    if prompt.latest_committed:
        return ws.index.version(prompt.key, prompt.latest_committed).commit
    return None


def _listing(ws: Workspace) -> tuple[list[tuple[Prompt, views.PromptRow]], views.Folder]:
    """(prompt, row) for every prompt, and the tree of them all: a function of the index's rows
    (what is served, its last commit), so it is derived once per change, from whichever process
    made it, not read and shaped for 1,000 prompts on every request."""
    pairs = [(p, views.prompt_row(p, _last_change(ws, p))) for p in ws.index.list_prompts()]
    return pairs, views.tree_of([row for _, row in pairs])


@router.get("/")
def prompts_page(
    request: Request, ws: Ws, key: AdminKey, q: str | None = Query(None, max_length=2000)
) -> Response:
    """Every prompt as a tree of folders; `q` keeps those whose key or text contains it."""
    query = views.clean_query(q)
    pairs, tree = ws.index.derived("web prompt list", lambda: _listing(ws))
    if query:
        pairs = [(p, row) for p, row in pairs if views.matches(p, query)]
        tree = views.tree_of([row for _, row in pairs])
    refs = badges_html(request, ws, {p.key: p.version for p, _ in pairs}, moved_only=True)
    return pages(request).render(
        request, "prompts.html", tree=tree, query=query, count=len(pairs), refs=refs
    )


@router.get("/prompts/{key:path}")
def prompt_page(
    request: Request,
    key: str,
    ws: Ws,
    admin: AdminKey,
    version: str | None = Query(None),
    committed: str | None = Query(None),
    restored: int | None = Query(None, ge=1, le=MAX_SQLITE_INT),
) -> Response:
    """One prompt: its sections with template expressions marked, frontmatter and variables."""
    prompt = ws.index.get_prompt(key)
    shown = ws.index.version(prompt.key, version_spec(version, "version"))
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
        restored=restored,
        refs=badges_html(request, ws, {prompt.key: prompt.version}, moved_only=False).get(
            prompt.key, ""
        ),
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
    old_spec, new_spec = version_spec(from_, "from"), version_spec(to, "to")
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


def _keys_page(
    request: Request,
    listing: list[ApiKey],
    *,
    status: int = 200,
    created: ApiKey | None = None,
    clear: str | None = None,
    problem: str | None = None,
    revoked: ApiKey | None = None,
) -> Response:
    """The keys page: every key, and what was just done (a key created and shown this once,
    one revoked) or refused."""
    return pages(request).render(
        request,
        "keys.html",
        status=status,
        keys=listing,
        created=created,
        clear=clear,
        problem=problem,
        revoked=revoked,
    )


@router.get("/keys")
def keys_page(
    request: Request, ws: Ws, admin: AdminKey, revoked: int | None = Query(None, ge=1)
) -> Response:
    """Every key, revoked ones too, and a form to create one."""
    listing = ws.keys.list()
    gone = next((k for k in listing if k.id == revoked), None)
    return _keys_page(request, listing, revoked=gone)


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
        return _keys_page(request, listing, status=400, problem=exc.message)
    listing = await run_in_threadpool(ws.keys.list)
    return _keys_page(request, listing, status=201, created=record, clear=clear)


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: KeyId, ws: Ws, admin: AdminKey) -> Response:
    """Revoke a key; it stops working at once, with the browser sessions signed in with it."""
    ws.keys.revoke(key_id)
    return RedirectResponse(f"/keys?{urlencode({'revoked': key_id})}", status_code=303)
