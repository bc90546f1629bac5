"""The run log over HTTP and per-version figures."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query

from llmkit.api.deps import Ws, admin_key
from llmkit.errors import LlmkitError
from llmkit.models import model_id

router = APIRouter(prefix="/v1/ui", dependencies=[Depends(admin_key)], tags=["logs"])

# Bounds that keep the row offset, (page - 1) * page_size, within SQLite's integers; a larger
# page_size is capped by the run log.
MAX_PAGE = 10**9
MAX_PAGE_SIZE_ASKED = 10**6
Page = Annotated[int, Query(ge=1, le=MAX_PAGE, description="1-based page number")]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE_ASKED, description="rows per page")]


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


def _filters(
    prompt: str | None,
    version: str | None,
    status: str | None,
    since: str | None,
    until: str | None,
) -> dict[str, Any]:
    return {"prompt": prompt, "version": version, "status": status, "since": since, "until": until}


@router.get("/logs")
def list_logs(
    ws: Ws,
    page: Page = 1,
    page_size: PageSize = 50,
    prompt: str | None = None,
    version: str | None = None,
    status: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> list[dict[str, Any]]:
    """Provider calls, newest first, filtered by prompt, version, status and time."""
    ws.runlog.flush()
    rows = ws.runlog.list(
        page=page, page_size=page_size, **_filters(prompt, version, status, since, until)
    )
    return ui_entries(ws, rows)


@router.get("/logs/count")
def count_logs(
    ws: Ws,
    prompt: str | None = None,
    version: str | None = None,
    status: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> dict[str, int]:
    """How many provider calls match the filters."""
    ws.runlog.flush()
    return {"count": ws.runlog.count(**_filters(prompt, version, status, since, until))}


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
