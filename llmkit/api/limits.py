"""Request bodies are checked before anything parses them: over the size limit is a 413, a body
that takes too long to arrive a 408, and JSON nested too deeply a 400 (a JSON parser recurses
once per level of nesting)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmkit.budgets import MAX_JSON_DEPTH, json_too_deep
from llmkit.errors import BadRequest, LlmkitError, PayloadTooLarge, RequestTimeout


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then defers to the server (so the
    app still hears about a client that disconnects)."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class BodySizeLimit:
    """Pure ASGI middleware: refuses a declared Content-Length over the limit at once, and reads
    every other body (chunked, or without a length) up to the limit before the app runs. A body
    that outgrows the limit while it streams is refused here, not inside FastAPI's body parsing,
    which would turn any error raised from `receive` into a 400. A body that does not arrive
    whole within `timeout_s` is refused too: a client sending it a byte at a time (or never)
    would otherwise hold its request open without end. A body whose JSON nests more than
    `max_depth` levels is refused with 400, whichever route it is for."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout_s: float = 30.0,
        max_depth: int = MAX_JSON_DEPTH,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.max_bytes:
            await _reject(send, self._too_large(), close=True)
            return
        chunks: list[bytes] = []
        size = 0
        more_body = True
        try:
            async with asyncio.timeout(self.timeout_s):
                while more_body:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return  # the client left before its request was complete: nobody to answer
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await _reject(send, self._too_large(), close=True)
                        return
                    chunks.append(chunk)
                    more_body = message.get("more_body", False)
        except TimeoutError:
            late = RequestTimeout(
                f"The request body did not arrive within {self.timeout_s:g} s ({size} bytes came)"
            )
            await _reject(send, late, close=True)
            return
        body = b"".join(chunks)
        if json_too_deep(body, self.max_depth):
            too_deep = BadRequest(
                f"Request body nests more than {self.max_depth} levels of arrays and objects",
                code="too_deep",
            )
            await _reject(send, too_deep)
            return
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"Request body is larger than the limit of {self.max_bytes} bytes")


async def _reject(send: Send, error: LlmkitError, close: bool = False) -> None:
    """Answer `error` in the one error shape; `close` when the rest of the body is unread."""
    body = json.dumps(error.to_dict()).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
