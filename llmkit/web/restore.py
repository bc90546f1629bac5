"""Restore an older version of a prompt from its history page: its text committed as a new
version, as the API's set-version route does (llmkit.authoring.restore_version), with the
version served when the page was read as the base, so a change made meanwhile is a conflict
shown on the page and never overwritten."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from llmkit import authoring
from llmkit.api.deps import AdminKey, Ws, form_fields
from llmkit.errors import BadRequest, Conflict
from llmkit.web import views
from llmkit.web.pages import page_router, pages

MAX_NUMBER_DIGITS = 18
router = page_router()


@router.post("/restore/{key:path}")
async def restore_version(request: Request, key: str, ws: Ws, admin: AdminKey) -> Response:
    """Commit version `version` of the prompt again, on top of `base` (the version served when
    the history was read)."""
    fields = await form_fields(request)
    if fields is None:
        raise BadRequest("Restoring posts an HTML form (application/x-www-form-urlencoded)")
    number = fields.get("version", "").strip()
    base = fields.get("base", "").strip()
    if not number.isdigit() or len(number) > MAX_NUMBER_DIGITS or int(number) < 1:
        raise BadRequest(
            f"Invalid version {number[:40]!r}: expected a version number", param="version"
        )
    if not base:
        raise BadRequest("The form has no base version; reload the history", param="base")

    def restore() -> tuple[str, str | None, str | None]:
        prompt = ws.index.get_prompt(key, include_deleted=False)
        before = ws.index.version(prompt.key).sha
        restored = authoring.restore_version(ws, prompt.key, int(number), base=base)
        return prompt.key, before, restored.version.sha if restored.version else None

    try:
        found, before, after = await run_in_threadpool(restore)
    except Conflict as exc:
        prompt = await run_in_threadpool(ws.index.get_prompt, key)
        versions = await run_in_threadpool(ws.index.versions, prompt.key)
        return pages(request).render(
            request,
            "history.html",
            status=409,
            prompt=prompt,
            versions=list(reversed(versions)),
            label=views.version_label,
            problem=f"Version {number} was not restored: {exc.message}. Nothing was"
            " overwritten; the history below is as it is now.",
        )
    done = after if after and after != before else "unchanged"
    query = urlencode({"committed": done, "restored": number})
    return RedirectResponse(f"/prompts/{quote(found)}?{query}", status_code=303)
