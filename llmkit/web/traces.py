"""The run log as pages. `/traces` lists calls newest first, filtered by prompt, version, model,
status and time, and paged by the run log's keyset cursor (never an offset: a deep page costs
what the first one does); every filter and page is in the query string, so a view can be shared
as a link. `/traces/{id}` shows one call: the messages it sent, its answer, timings, tokens and
cost. Both read through the same RunLog calls as the API's `/v1/ui/logs`."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request, Response

from llmkit.api.deps import AdminKey, Ws
from llmkit.errors import BadRequest, NotFound
from llmkit.providers.routing import provider_of
from llmkit.runlog import RunLog
from llmkit.runlog_query import LogPage, decode_cursor, encode_cursor
from llmkit.runlog_record import STATUSES
from llmkit.web import traces_views as tv
from llmkit.web.pages import page_router, pages, wants_html

router = page_router()

# A trace link opened as soon as a call answers may arrive before the writer has written its
# row (it batches every ~20 ms): the page waits this long for it before saying it is missing.
FOUND_WAIT_S = 1.0
POLL_S = 0.05
LIMIT_CHOICES = (25, 50, 100, 200)


def _position(row: dict[str, Any]) -> str:
    return encode_cursor(row["created_at"], row["id"])


def _checked_position(value: str, param: str) -> str:
    """A cursor from a page's link, or BadRequest naming the link it came in."""
    try:
        decode_cursor(value)
    except BadRequest:
        raise BadRequest(
            f"This link's page position ({param}={value[:40]!r}) is not one this server gave"
            " out; start again from the newest calls",
            param=param,
        ) from None
    return value


def traces_in_view(
    runlog: RunLog, cursor: str | None, before: str | None, limit: int, filters: dict[str, Any]
) -> tuple[LogPage, str | None]:
    """The page a link names, and the position of the page newer than it (None on the newest
    page). `cursor`: the calls older than a position (the "Older" link); `before`: the calls
    just newer than one (the "Newer" link), which becomes the newest page, whole, once it
    reaches the top. The page's `next_cursor` is the position of the page older than it."""
    if before is not None:
        found = runlog.page_before(before, limit, **filters)
        if found.next_cursor is not None:
            older = _position(found.rows[-1]) if found.rows else before
            return LogPage(found.rows, older), found.next_cursor
        cursor = None
    found = runlog.page_after(cursor, limit, **filters)
    newer = None
    if cursor is not None:
        newer = _position(found.rows[0]) if found.rows else cursor
    return found, newer


@router.get("/traces")
def traces_page(request: Request, ws: Ws, admin: AdminKey) -> Response:
    """The run log, newest first: filtered by prompt, version, model, status and time, and
    paged by cursor."""
    params = request.query_params
    filters = tv.Filters.of(params)
    cursor, before = params.get("cursor") or None, params.get("before") or None
    context: dict[str, Any] = {
        "filters": filters,
        "statuses": STATUSES,
        "limits": LIMIT_CHOICES,
        "rows": [],
        "older": None,
        "newer": None,
        "paged": cursor is not None or before is not None,
        "total": None,
        "problem": None,
        "time_value": tv.time_input_value,
    }
    try:
        if cursor is not None and before is not None:
            raise BadRequest("A link names either older or newer calls, not both", param="before")
        if cursor is not None:
            _checked_position(cursor, "cursor")
        if before is not None:
            _checked_position(before, "before")
        limit = filters.limit()
        wanted = filters.for_runlog()
        ws.runlog.flush()
        found, newer = traces_in_view(ws.runlog, cursor, before, limit, wanted)
        # Without a time range the count is a sum over the rollups, whatever the log's size.
        if wanted["since"] is None and wanted["until"] is None:
            context["total"] = ws.runlog.count(**wanted)
    except BadRequest as exc:
        context["problem"] = tv.problem_text(exc)
        return pages(request).render(request, "traces.html", status=400, **context)
    context.update(
        rows=[tv.trace_row(row) for row in found.rows],
        paged=newer is not None,
        older=filters.query(cursor=found.next_cursor) if found.next_cursor else None,
        newer=filters.query(before=newer) if newer else None,
    )
    return pages(request).render(request, "traces.html", **context)


def found_soon(runlog: RunLog, ident: str, wait_s: float = FOUND_WAIT_S) -> dict[str, Any]:
    """The row `ident` names, waiting up to `wait_s` (on this worker thread, never the event
    loop) for one whose call has its id but whose row is not written yet; NotFound after that.
    A trace id prefix names only rows already written: not waited for."""
    deadline = time.monotonic() + (wait_s if tv.may_be_written_soon(ident) else 0)
    runlog.flush()  # what is queued already, as the API's GET /v1/ui/logs/{id} does
    while True:
        try:
            return runlog.find(ident)
        except NotFound:
            if time.monotonic() >= deadline:
                raise
        time.sleep(POLL_S)
        runlog.flush(timeout=max(deadline - time.monotonic(), POLL_S))


@router.get("/traces/{ident}")
def trace_page(request: Request, ident: str, ws: Ws, admin: AdminKey) -> Response:
    """One call: the messages it sent, its answer, timings, tokens, cost and status."""
    try:
        row = found_soon(ws.runlog, tv.log_id_of(ident))
    except NotFound as exc:
        if not wants_html(request):
            raise
        return pages(request).render(
            request, "traces_missing.html", status=404, ident=ident, message=exc.message
        )
    return pages(request).render(
        request,
        "traces_call.html",
        row=row,
        messages=tv.messages_of(row["request"]),
        answer=tv.answer_of(row["response"]),
        provider=provider_of(row["model"]),
        request_json=tv.pretty(row["request"]),
        response_json=None if row["response"] is None else tv.pretty(row["response"]),
        tv=tv,
    )
