"""Prompts over git: every read comes from the index, every write is one commit.

`{prompt_id}` is an integer id or a key; keys may contain `/`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated, Any, overload

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from starlette.applications import Starlette

from llmkit import authoring
from llmkit.api.deps import Ws, admin_key
from llmkit.api.schemas import CommitInfo, PromptWrite
from llmkit.errors import BadRequest, Conflict, NotFound, PromptFormatError, Unprocessable
from llmkit.history import history_rows
from llmkit.models import effective_settings, model_for_id
from llmkit.prompt_views import iso_time, prompt_fields, version_fields
from llmkit.promptfile import (
    Message,
    PromptFile,
    parse,
    path_for_key,
    section_text,
    validate_key,
    validate_meta,
)
from llmkit.versions import Prompt, Version
from llmkit.workspace import Workspace

router = APIRouter(prefix="/v1/ui/prompts", dependencies=[Depends(admin_key)], tags=["prompts"])

MAX_VERSION_SPEC = 256
# The prompt list answers this many prompts when no page is asked for (LLMKit's UI asks for
# none): the headers say how many there are and where the next page is.
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
MAX_LIST_PAGE = 10**9
MAX_PREFIX = 1024

STRUCTURED = (
    "system",
    "user",
    "messages",
    "model",
    "max_tokens",
    "temperature",
    "json_mode",
    "prompt_type",
    "is_chat",
    "description",
    "frontmatter",
)


def _base(if_match: str | None, body: CommitInfo | None) -> str | None:
    if if_match and if_match.strip() != "*":  # `If-Match: *` asks only that the prompt exists
        return if_match.strip().removeprefix("W/").strip('"')
    return body.base_version if body else None


@overload
def _version_spec(spec: str, param: str) -> str: ...
@overload
def _version_spec(spec: str | None, param: str) -> str | None: ...
def _version_spec(spec: str | None, param: str) -> str | None:
    """A version as callers give it (number, sha prefix, branch or tag); refuses what no git
    ref can hold, before it reaches git."""
    if spec is not None and (
        len(spec) > MAX_VERSION_SPEC or any(c < " " or c == "\x7f" for c in spec)
    ):
        shown = repr(spec) if len(spec) <= 60 else f"{spec[:60]!r}... ({len(spec)} characters)"
        raise BadRequest(
            f"Invalid version {shown}: expected a version number, sha, branch or tag", param=param
        )
    return spec


def _routable_key(app: Starlette, key: str) -> str:
    """Refuse a new key that another route would answer: `a/diff` reads as the diff of `a`,
    and route modules installed later may add words of their own (`a/stats`)."""
    url = f"{router.prefix}/{key}"
    for method, own in (("GET", get_prompt), ("PUT", update_prompt), ("DELETE", delete_prompt)):
        if _endpoint_for(app, method, url) is not own:
            raise BadRequest(
                f"Invalid prompt key {key!r}: {method} {url} would reach another route;"
                " choose a key whose last segments are not a route's (such as /versions or /diff)",
                param="key",
                code="invalid_key",
            )
    return key


def _endpoint_for(app: Starlette, method: str, path: str) -> Callable[..., Any] | None:
    """The endpoint the app's router would pick for `method path`: the first route that matches."""
    routes: Any = app.routes
    try:
        from fastapi.routing import iter_route_contexts  # routers kept as a tree (newer FastAPI)
    except ImportError:
        pass
    else:
        routes = iter_route_contexts(routes)
    for route in routes:
        pattern = getattr(route, "path_regex", None)
        if (
            pattern is not None
            and pattern.match(path)
            and method in (getattr(route, "methods", None) or ())
        ):
            return getattr(route, "endpoint", None)
    return None


def _previous(ws: Workspace, prompt: Prompt) -> Version | None:
    """The version before the one served, which the `*_version_diff` fields compare with."""
    version = prompt.version
    if version is None or not version.number or version.number < 2:
        return None
    return ws.index.version(prompt.key, version.number - 1)


def _detail(ws: Workspace, ident: str | int) -> dict[str, Any]:
    prompt = ws.index.get_prompt(ident)
    if prompt.version is None:
        raise NotFound(
            f"Prompt {prompt.key!r} has been deleted; its history is still readable at"
            f" /v1/ui/prompts/{prompt.id}/versions",
            param="prompt_id",
        )
    return prompt_fields(prompt, _previous(ws, prompt), ws.models)


def _pick_model(ws: Workspace, body: PromptWrite) -> None:
    """Turn LLMKit's `model_id` into the model name written in the file (`model`); an id that
    names no model, or that contradicts a `model` also given, is refused naming both."""
    if body.model_id is None:
        return
    name = model_for_id(ws.models, ws.index.models_in_use(), body.model_id)
    if name is None:
        raise Unprocessable(
            f"model_id {body.model_id} names no model: GET /v1/ui/models lists the ids of the"
            " aliases of llmkit.yaml and of the models prompts use",
            param="model_id",
        )
    if body.model is not None and body.model != name:
        raise Unprocessable(
            f"model {body.model!r} and model_id {body.model_id} (model {name!r}) disagree;"
            " give one of them",
            param="model_id",
        )
    body.model = name


def _keep_model_defaults(ws: Workspace, body: PromptWrite, current: PromptFile | None) -> None:
    """LLMKit's UI sends back every field it showed. A max_tokens or temperature the file leaves
    to the model is shown as the number the call runs with; sent back unchanged (for the same
    model), it stays unset rather than being written into the file."""
    if current is None or body.content is not None:
        return
    model = body.model if body.model is not None else current.model
    if model != current.model:
        return
    if "model" not in current.meta:
        body.model = None  # the model the file leaves to `default` stays left to it
    temperature, max_tokens = effective_settings(ws.models, model)
    if "max_tokens" not in current.meta and body.max_tokens == max_tokens:
        body.max_tokens = None
    if "temperature" not in current.meta and body.temperature == temperature:
        body.temperature = None


def build_prompt(body: PromptWrite, key: str, current: PromptFile | None) -> PromptFile:
    """The prompt file a write asks for: its `content`, or its fields merged onto `current`."""
    given = {name for name in STRUCTURED if getattr(body, name) is not None}
    if body.content is not None:
        if given:
            raise BadRequest(
                f"Give either content or structured fields, not both (got content and "
                f"{', '.join(sorted(given))})"
            )
        try:
            return parse(body.content, path_for_key(key))
        except PromptFormatError as exc:
            raise BadRequest(exc.message, param="content") from None
    meta = dict(current.meta) if current else {}
    messages = list(current.messages) if current else []
    for name, value in (body.frontmatter or {}).items():
        if value is None:
            meta.pop(name, None)
        else:
            meta[name] = value
    for field, meta_key in (
        ("model", "model"),
        ("max_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("json_mode", "json_mode"),
        ("is_chat", "chat"),
        ("description", "description"),
    ):
        value = getattr(body, field)
        if value is not None:
            meta[meta_key] = value
    if body.messages is not None:
        if body.system is not None or body.user is not None:
            raise BadRequest("Give either messages or system/user, not both", param="messages")
        messages = [Message(m.role, section_text(m.content)) for m in body.messages]
    else:
        messages = _replace_sections(messages, body.system, body.user)
    prompt = PromptFile(meta=meta, messages=messages)
    if body.prompt_type is not None:
        meta.pop("type", None)
        if PromptFile(meta=meta, messages=messages).prompt_type != body.prompt_type:
            meta["type"] = body.prompt_type
    try:
        validate_meta(meta)
    except PromptFormatError as exc:
        raise BadRequest(exc.detail, param=exc.param) from None
    if not prompt.messages:
        raise BadRequest("A prompt needs at least a system or a user message", param="system")
    return prompt


def _replace_sections(
    messages: list[Message], system: str | None, user: str | None
) -> list[Message]:
    result = list(messages)
    if system is not None:
        index = next((i for i, m in enumerate(result) if m.role == "system"), None)
        if index is None:
            if system.strip():
                result.insert(0, Message("system", section_text(system)))
        elif system.strip():
            result[index] = Message("system", section_text(system))
        else:
            del result[index]
    if user is not None:
        ends_with_user = bool(result) and result[-1].role == "user"
        if user.strip():
            if ends_with_user:
                result[-1] = Message("user", section_text(user))
            else:
                result.append(Message("user", section_text(user)))
        elif ends_with_user:
            result.pop()
    return result


@router.get("")
def list_prompts(
    ws: Ws,
    request: Request,
    response: Response,
    page: Annotated[int | None, Query(ge=1, le=MAX_LIST_PAGE, description="1-based page")] = None,
    limit: Annotated[
        int | None, Query(ge=1, le=MAX_LIST_LIMIT, description="prompts a page")
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=100, description="the x-next-cursor of the page before")
    ] = None,
    prefix: Annotated[
        str | None, Query(max_length=MAX_PREFIX, description="only keys that start with this")
    ] = None,
) -> list[dict[str, Any]]:
    """Served prompts by id, a page at a time (LLMKit's bare array; without `page`, `limit` or
    `cursor`, the first DEFAULT_LIST_LIMIT), with diffs of its system and user text against the
    version before. `x-total-count` says how many match, and `x-next-cursor` and a `Link`
    header name the next page when there is one."""
    if page is not None and cursor is not None:
        raise BadRequest("Give page or cursor, not both", param="cursor")
    if prefix is not None and any(c < " " or c == "\x7f" for c in prefix):
        raise BadRequest(f"prefix holds a control character: {prefix!r}", param="prefix")
    size = limit or DEFAULT_LIST_LIMIT
    after = _prompt_cursor(cursor) if cursor is not None else None
    offset = (page - 1) * size if page is not None else 0
    prompts = ws.index.page_prompts(prefix=prefix, after=after, offset=offset, limit=size + 1)
    shown = prompts[:size]
    response.headers["x-total-count"] = str(ws.index.count_prompts(prefix))
    if len(prompts) > size:
        following = base64.urlsafe_b64encode(f"prompt:{shown[-1].id}".encode()).decode()
        query = dict(request.query_params)
        query.update(cursor=following, limit=str(size))
        query.pop("page", None)
        url = request.url.replace_query_params(**query)
        response.headers["x-next-cursor"] = following
        response.headers["link"] = f'<{url}>; rel="next"'
    return [prompt_fields(p, _previous(ws, p), ws.models) for p in shown]


def _prompt_cursor(cursor: str) -> int:
    """The prompt id a cursor of list_prompts names, or a 400 naming `cursor`."""
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
    except (ValueError, UnicodeError):
        text = ""
    kind, _, number = text.partition(":")
    if kind != "prompt" or not number.isdigit() or len(number) > 18:
        raise BadRequest(f"cursor is not a cursor this server gave out: {cursor!r}", param="cursor")
    return int(number)


@router.post("", status_code=201)
def create_prompt(body: PromptWrite, ws: Ws, request: Request) -> dict[str, Any]:
    """Create a prompt: writes prompts/<key>.md and commits it."""
    if not body.key:
        raise BadRequest("key is required", param="key")
    key = _routable_key(request.app, validate_key(body.key))
    _pick_model(ws, body)
    prompt = build_prompt(body, key, None)
    authoring.save_prompt(
        ws,
        key,
        prompt,
        create=True,
        message=body.message,
        author_name=body.author_name,
        author_email=body.author_email,
    )
    return _detail(ws, key)


@router.get("/{prompt_id:path}/versions")
def list_versions(prompt_id: str, ws: Ws) -> list[dict[str, Any]]:
    """History: every version with author, date, message and diff against the one before."""
    return history_rows(ws.index, prompt_id)


@router.get("/{prompt_id:path}/versions/{version}")
def get_version(prompt_id: str, version: str, ws: Ws) -> dict[str, Any]:
    """One version by number, sha prefix, branch or tag, with its file content."""
    v = ws.index.version(prompt_id, _version_spec(version, "version"))
    prompt = ws.index.get_prompt(prompt_id)
    commit = v.commit
    return {
        "id": prompt.id,
        "key": prompt.key,
        "path": prompt.path,
        **version_fields(v),
        "number": v.number,
        "author": commit.author_name if commit else None,
        "date": iso_time(commit.authored_at) if commit else None,
        "message": commit.message if commit else None,
        "content": v.content,
    }


@router.get("/{prompt_id:path}/diff")
def diff(
    prompt_id: str,
    ws: Ws,
    from_: str = Query(..., alias="from", description="Old version: number, sha or ref"),
    to: str | None = Query(None, description="New version; default what is served"),
) -> dict[str, Any]:
    """Unified diff of the prompt file between two versions."""
    old, new = _version_spec(from_, "from"), _version_spec(to, "to")
    return {"from": from_, "to": to, "diff": ws.index.diff(prompt_id, old, new)}


@router.put("/{prompt_id:path}/set-version/{version}")
def set_version(
    prompt_id: str,
    version: str,
    ws: Ws,
    body: CommitInfo | None = None,
    if_match: str | None = Header(None),
) -> dict[str, Any]:
    """Make version n current again, by committing its content as a new version."""
    prompt = ws.index.get_prompt(prompt_id)
    authoring.restore_version(
        ws,
        prompt.key,
        _version_spec(version, "version"),
        base=_base(if_match, body),
        message=body.message if body else None,
        author_name=body.author_name if body else None,
        author_email=body.author_email if body else None,
    )
    return _detail(ws, prompt.key)


@router.get("/{prompt_id:path}")
def get_prompt(prompt_id: str, ws: Ws) -> dict[str, Any]:
    """One prompt as served, with diffs of its system and user text against the version before."""
    return _detail(ws, prompt_id)


@router.put("/{prompt_id:path}")
def update_prompt(
    prompt_id: str, body: PromptWrite, ws: Ws, if_match: str | None = Header(None)
) -> dict[str, Any]:
    """Update a prompt as a new commit. Fields not given keep their values."""
    prompt = ws.index.get_prompt(prompt_id, include_deleted=False)
    if body.key is not None and body.key != prompt.key:
        raise BadRequest(
            f"Renaming is not supported: key {body.key!r} differs from {prompt.key!r}", param="key"
        )
    if prompt.version is not None and prompt.version.draft:
        # Refused before the draft is parsed: a half-edited file must not turn this into a 400.
        raise Conflict(
            f"{prompt.path} has uncommitted changes in the working tree; commit or discard"
            " them before writing through the API"
        )
    current = (
        prompt.version.prompt() if prompt.version is not None and body.content is None else None
    )
    _pick_model(ws, body)
    _keep_model_defaults(ws, body, current)
    new = build_prompt(body, prompt.key, current)
    authoring.save_prompt(
        ws,
        prompt.key,
        new,
        base=_base(if_match, body),
        message=body.message,
        author_name=body.author_name,
        author_email=body.author_email,
    )
    return _detail(ws, prompt.key)


@router.delete("/{prompt_id:path}")
def delete_prompt(
    prompt_id: str, ws: Ws, body: CommitInfo | None = None, if_match: str | None = Header(None)
) -> dict[str, Any]:
    """Delete a prompt as a commit; its history stays readable."""
    prompt = ws.index.get_prompt(prompt_id, include_deleted=False)
    sha = authoring.delete_prompt(
        ws,
        prompt.key,
        base=_base(if_match, body),
        message=body.message if body else None,
        author_name=body.author_name if body else None,
        author_email=body.author_email if body else None,
    )
    return {"id": prompt.id, "key": prompt.key, "deleted": True, "sha": sha}
