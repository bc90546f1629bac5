"""The HTTP side of serving a ref (`llmkit serve --ref`): each request pins one snapshot of REF
and its answer names that commit in `x-llmkit-ref-sha`; API writes, which would be git commits,
are refused with 409 `read_only_ref` (the served content changes only through REF)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmkit.api.deps import admin_key
from llmkit.refserve import REF_HEADER, RefIndex, read_only

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Route paths whose writes commit to git (prompt files, eval case files). Running evals,
# scoring, keys and the run log write to the database only, and stay open.
GIT_WRITE_PREFIXES = ("/v1/ui/prompts", "/v1/ui/prompt-evals")
NOT_GIT_WRITES = ("/v1/ui/prompts/execute",)


class PinSnapshot:
    """Pure ASGI (it must run in the request's own context, so the snapshot it pins is the one
    the handler, its threads and its stream see)."""

    def __init__(self, app: ASGIApp, index: RefIndex) -> None:
        self.app = app
        self.index = index

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.index.snapshot is None:
            await self.app(scope, receive, send)
            return
        with self.index.pinned() as snapshot:
            sha = snapshot.sha.encode()

            async def send_with_sha(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), (REF_HEADER.encode(), sha)]
                await send(message)

            await self.app(scope, receive, send_with_sha)


async def refuse_git_writes(request: Request) -> None:
    """An app-wide dependency in ref mode: a write that would commit is refused, after the
    admin key is checked (an anonymous caller learns nothing about the server)."""
    if request.method in READ_METHODS:
        return
    route: Any = request.scope.get("route")
    path = getattr(route, "path", "")
    if not path.startswith(GIT_WRITE_PREFIXES) or path.startswith(NOT_GIT_WRITES):
        return
    await admin_key(request)
    ws = request.app.state.ws
    raise read_only(ws.ref)
