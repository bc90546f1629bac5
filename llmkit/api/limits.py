"""Request bodies over the size limit get 413, and bodies nested too deeply get 400, before
anything parses them (a JSON parser recurses once per level of nesting)."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmkit.budgets import MAX_JSON_DEPTH, json_too_deep


def _error_body(message: str, code: str) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return json.dumps({"error": error}).encode()


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
    which would turn any error raised from `receive` into a 400. A body whose JSON nests more
    than `max_depth` levels is refused with 400, whichever route it is for."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

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
        body = b"".join(chunks)
        if json_too_deep(body, self.max_depth):
            too_deep = f"Request body nests more than {self.max_depth} levels of arrays and objects"
            await _answer(send, 400, _error_body(too_deep, "too_deep"))
            return
        await self.app(scope, _replay(body, receive), send)

    async def _reject(self, send: Send) -> None:
        message = f"Request body is larger than the limit of {self.max_bytes} bytes"
        await _answer(send, 413, _error_body(message, "payload_too_large"), close=True)


async def _answer(send: Send, status: int, body: bytes, close: bool = False) -> None:
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
