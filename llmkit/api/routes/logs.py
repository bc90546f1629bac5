"""The run log over HTTP and per-version figures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response

from llmkit.api.deps import Ws, admin_key
from llmkit.errors import BadRequest, LlmkitError
from llmkit.models import model_id
from llmkit.runlog_query import LogFilters
from llmkit.runlog_record import canonical_time

router = APIRouter(prefix="/v1/ui", dependencies=[Depends(admin_key)], tags=["logs"])

# Bounds that keep the row offset, (page - 1) * page_size, within SQLite's integers; a larger
# page_size is capped by the run log.
MAX_PAGE = 10**9
MAX_PAGE_SIZE_ASKED = 10**6
DEFAULT_PAGE_SIZE = 50
PageSize = Annotated[int | None, Query(ge=1, le=MAX_PAGE_SIZE_ASKED, description="rows per page")]


def install(app: FastAPI) -> None:
    app.include_router(router)


def ui_entries(ws: Ws, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Log rows with LLMKit's `prompt_id` (the prompt's index id, null for a prompt that is
    gone) and `model_id` (the id GET /v1/ui/models gives the model as the prompt names it)
    beside the rest of what the run log gives."""
    prompt_ids: dict[str, int | None] = {}
    for row in rows:
        key = row["prompt_key"]
        if key not in prompt_ids:
            try:
                prompt_ids[key] = ws.index.get_prompt(key).id
            except LlmkitError:
                prompt_ids[key] = None
        row["prompt_id"] = prompt_ids[key]
        row["model_id"] = model_id(row["model_name"])
    return rows


Limit = Annotated[
    int | None, Query(ge=1, le=MAX_PAGE_SIZE_ASKED, description="rows per page (as page_size)")
]
Cursor = Annotated[
    str | None,
    Query(max_length=200, description="the x-next-cursor of the page before (keyset paging)"),
]
From = Annotated[str | None, Query(alias="from", description="ISO-8601 time, inclusive")]
To = Annotated[str | None, Query(alias="to", description="ISO-8601 time, exclusive")]


def _one_of(first: tuple[str, Any], second: tuple[str, Any]) -> Any:
    """The value of whichever of two alias parameters was given; both is a 400."""
    if first[1] is not None and second[1] is not None and first[1] != second[1]:
        raise BadRequest(
            f"Give {first[0]} or {second[0]}, not both (they are one parameter)", param=second[0]
        )
    return first[1] if first[1] is not None else second[1]


def _filter_query(
    prompt: str | None = None,
    version: str | None = None,
    status: str | None = None,
    model: str | None = None,
    since: str | None = None,
    until: str | None = None,
    from_: From = None,
    to: To = None,
) -> Callable[[], LogFilters]:
    """The filter parameters of every logs route, checked when the route asks: after its own
    checks, so that a request wrong twice is told of what the route reads first."""

    def checked() -> LogFilters:
        # `from`/`to` are checked under their own names, so that an error names what was sent.
        start = canonical_time(from_, "from") if from_ is not None else None
        end = canonical_time(to, "to") if to is not None else None
        return {
            "prompt": prompt,
            "version": version,
            "status": status,
            "model": model,
            "since": _one_of(("since", since), ("from", start)),
            "until": _one_of(("until", until), ("to", end)),
        }

    return checked


FilterQuery = Annotated[Callable[[], LogFilters], Depends(_filter_query)]


def _link_next(request: Request, response: Response, cursor: str | None) -> None:
    """The next page's cursor, in a header and as a `Link` to it, beside LLMKit's bare array."""
    if cursor is None:
        return
    response.headers["x-next-cursor"] = cursor
    query = dict(request.query_params)
    query["cursor"] = cursor
    query.pop("page", None)
    url = request.url.replace_query_params(**query)
    response.headers["link"] = f'<{url}>; rel="next"'


@router.get("/logs")
def list_logs(
    ws: Ws,
    request: Request,
    response: Response,
    filter_query: FilterQuery,
    page: Annotated[int | None, Query(ge=1, le=MAX_PAGE, description="1-based page number")] = None,
    page_size: PageSize = None,
    limit: Limit = None,
    cursor: Cursor = None,
) -> list[dict[str, Any]]:
    """Provider calls, newest first, filtered by prompt, version, status, model and time.
    Pages by `cursor` (the `x-next-cursor` header of the page before, also sent as a `Link`),
    or by `page` number as LLMKit's UI does."""
    if page is not None and cursor is not None:
        raise BadRequest("Give page or cursor, not both", param="cursor")
    size = _one_of(("page_size", page_size), ("limit", limit)) or DEFAULT_PAGE_SIZE
    filters = filter_query()
    ws.runlog.flush()
    if page is not None:
        found = ws.runlog.numbered_page(page=page, page_size=size, **filters)
    else:
        found = ws.runlog.page_after(cursor, limit=size, **filters)
    _link_next(request, response, found.next_cursor)
    return ui_entries(ws, found.rows)


@router.get("/logs/count")
def count_logs(ws: Ws, filter_query: FilterQuery) -> dict[str, int]:
    """How many provider calls match the filters."""
    ws.runlog.flush()
    return {"count": ws.runlog.count(**filter_query())}


@router.get("/logs/{log_id}")
def get_log(log_id: str, ws: Ws) -> dict[str, Any]:
    """One provider call by integer id (as in a completion's id, `chatcmpl-<id>`), by trace id,
    or by a unique prefix of its trace id (6 characters or more). Digits alone are an id first,
    and a trace id prefix only when no call has that id."""
    ws.runlog.flush()
    return ui_entries(ws, [ws.runlog.find(log_id)])[0]


@router.get("/prompts/{prompt_id:path}/stats")
def prompt_stats(prompt_id: str, ws: Ws) -> dict[str, Any]:
    """Per version: call count, error rate, latency p50/p95, tokens and cost."""
    prompt = ws.index.get_prompt(prompt_id)
    ws.runlog.flush()
    return {"id": prompt.id, "key": prompt.key, "versions": ws.runlog.stats(prompt.key)}
