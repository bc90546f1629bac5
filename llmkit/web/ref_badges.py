"""The badges that say what each branch and tag holds of a prompt (`feature → v7`,
`v1.2 tag → v5`, `feature: differs`), each a link to the diff of that ref against the version
served. Computed from llmkit.ref_versions' marks; plain functions, tested without a browser."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fastapi import Request
from markupsafe import Markup

from llmkit.errors import LlmkitError
from llmkit.ref_versions import RefMark, RefVersions
from llmkit.versions import Version
from llmkit.web.pages import pages
from llmkit.workspace import Workspace

log = logging.getLogger("llmkit.web")
# Drawn badges kept before they are all dropped (drafts of many prompts saved many times).
MAX_DRAWN = 20_000


@dataclass(frozen=True)
class RefBadge:
    mark: RefMark
    # "same": the ref holds the text served; "version": a committed version other than the one
    # served; "differs": a text that is no committed version of the served branch.
    state: str
    text: str
    href: str


def badges(key: str, served: Version | None, marks: list[RefMark]) -> list[RefBadge]:
    """The badges of one prompt, in the order of `marks` (newest ref first)."""
    found = []
    page = f"/diff/{quote(key)}?from="
    for mark in marks:
        if served is not None and mark.blob == served.blob:
            state = "same"
            shown = mark.number and not served.draft
            text = f"{mark.title} → v{mark.number} (served)" if shown else f"{mark.title} (served)"
        elif mark.number is not None:
            state, text = "version", f"{mark.title} → v{mark.number}"
        else:
            state, text = "differs", f"{mark.title}: differs"
        found.append(RefBadge(mark, state, text, page + quote(mark.ref, safe="")))
    return found


def ref_versions(request: Request) -> RefVersions:
    """The app's cache of what the refs hold, made on first use (two requests racing to make
    it make two, and one is kept: a cache, not state)."""
    state = request.app.state
    found = getattr(state, "ref_versions", None)
    if not isinstance(found, RefVersions):
        found = state.ref_versions = RefVersions()
    return found


@dataclass
class _Drawn:
    """The badges' HTML drawn for one answer of RefVersions.marks, by (key, the served blob,
    draft or not, moved refs only): the prompt list draws each once, not at every request."""

    marks: dict[str, list[RefMark]]
    html: dict[tuple[str, str | None, bool, bool], Markup] = field(default_factory=dict)


def badges_html(
    request: Request, ws: Workspace, served: dict[str, Version | None], *, moved_only: bool
) -> dict[str, Markup]:
    """The badges of each prompt in `served` (key -> its served version) as HTML, keys with
    none left out; with `moved_only`, only those of refs that hold something other than what
    is served (the prompt list)."""
    try:
        marks = ref_versions(request).marks(ws.index)
    except LlmkitError as exc:
        # The badges are an aside: a git that cannot list the refs leaves the page without them.
        log.warning("Branches and tags not shown: %s", exc.message)
        return {}
    state = request.app.state
    drawn = getattr(state, "ref_badges_drawn", None)
    if not isinstance(drawn, _Drawn) or drawn.marks is not marks or len(drawn.html) > MAX_DRAWN:
        drawn = state.ref_badges_drawn = _Drawn(marks)
    module: Any = pages(request).env.get_template("ref_badges.html").module
    macro = module.ref_badges
    result = {}
    for key, version in served.items():
        blob, draft = (version.blob, version.draft) if version is not None else (None, False)
        html = drawn.html.get((key, blob, draft, moved_only))
        if html is None:
            found = badges(key, version, marks.get(key, []))
            if moved_only:
                found = [b for b in found if b.state != "same"]
            html = drawn.html[(key, blob, draft, moved_only)] = (
                Markup(macro(found)) if found else Markup("")
            )
        if html:
            result[key] = html
    return result
