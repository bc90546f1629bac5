"""Request bodies over the limit get 413 before anything parses them."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _too_large_body(max_bytes: int) -> bytes:
    return json.dumps(
        {
            "error": {
                "message": f"Request body is larger than the limit of {max_bytes} bytes",
                "type": "invalid_request_error",
                "param": None,
                "code": "payload_too_large",
            }
        }
    ).encode()


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
    which would turn any error raised from `receive` into a 400."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.max_bytes:
            await self._reject(send)
            return
        chunks: list[bytes] = []
        size = 0
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its request was complete: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(chunk)
            more_body = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _reject(self, send: Send) -> None:
        body = _too_large_body(self.max_bytes)
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
