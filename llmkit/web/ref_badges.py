"""The badges that say what each branch and tag holds of a prompt (`feature → v7`,
`v1.2 tag → v5`, `feature: differs`), each a link to the diff of that ref against the version
served. Computed from llmkit.ref_versions' marks; plain functions, tested without a browser."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from fastapi import Request

from llmkit.errors import LlmkitError
from llmkit.ref_versions import RefMark, RefVersions
from llmkit.versions import Version
from llmkit.workspace import Workspace

log = logging.getLogger("llmkit.web")


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
    for mark in marks:
        name = mark.name if mark.kind == "branch" else f"{mark.name} {mark.kind}"
        if served is not None and mark.blob == served.blob:
            state = "same"
            text = f"{name} → v{mark.number}" if mark.number and not served.draft else name
            text += " (served)"
        elif mark.number is not None:
            state, text = "version", f"{name} → v{mark.number}"
        else:
            state, text = "differs", f"{name}: differs"
        href = f"/diff/{quote(key)}?{urlencode({'from': mark.ref})}"
        found.append(RefBadge(mark, state, text, href))
    return found


def ref_versions(request: Request) -> RefVersions:
    """The app's cache of what the refs hold, made on first use (two requests racing to make
    it make two, and one is kept: a cache, not state)."""
    state = request.app.state
    found = getattr(state, "ref_versions", None)
    if not isinstance(found, RefVersions):
        found = state.ref_versions = RefVersions()
    return found


def badges_by_key(
    request: Request, ws: Workspace, served: dict[str, Version | None], *, moved_only: bool
) -> dict[str, list[RefBadge]]:
    """The badges of each prompt in `served` (key -> its served version); with `moved_only`,
    only those of refs that hold something other than what is served (the prompt list)."""
    try:
        marks = ref_versions(request).marks(ws.index)
    except LlmkitError as exc:
        # The badges are an aside: a git that cannot list the refs leaves the page without them.
        log.warning("Branches and tags not shown: %s", exc.message)
        return {}
    result = {}
    for key, version in served.items():
        found = badges(key, version, marks.get(key, []))
        if moved_only:
            found = [b for b in found if b.state != "same"]
        if found:
            result[key] = found
    return result
