"""Request bodies over the limit get 413, and bodies that take too long to arrive 408, before
anything parses them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmkit.errors import LlmkitError, PayloadTooLarge, RequestTimeout


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
    would otherwise hold its request open without end."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.max_bytes:
            await self._reject(send, self._too_large())
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
                        await self._reject(send, self._too_large())
                        return
                    chunks.append(chunk)
                    more_body = message.get("more_body", False)
        except TimeoutError:
            await self._reject(send, RequestTimeout(
                f"The request body did not arrive within {self.timeout_s:g} s"
                f" ({size} bytes came)"
            ))
            return
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"Request body is larger than the limit of {self.max_bytes} bytes")

    async def _reject(self, send: Send, error: LlmkitError) -> None:
        body = json.dumps(error.to_dict()).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
