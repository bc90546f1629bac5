"""Answering a client that may go away: a watch on its connection, and the SSE response.

A client may disconnect, or stop reading, while its call is running. Either way the upstream
call has to end at once: it holds a place in the upstream pool and the answer being buffered for
nobody. Starlette's StreamingResponse saw neither in time. It sends without a deadline, so a
client that stops reading blocks it on the server's back-pressure for good; and it learns of a
disconnect through a task-group cancellation that is only delivered while the sending task
waits, which it need not do while upstream data is buffered (the server's `send` returns at once
for a closed connection), so the rest of the answer was read, sent nowhere, and logged `ok`.

Here a watch task reads `receive` for `http.disconnect`, and a timer checks that no `send` has
waited longer than the write timeout. Either cancels the request's task at once, with the reason
as the cancellation's message, wherever it waits: on the upstream (before the first chunk, or
between chunks) or on the client. Nothing is queued for a client: one event is in the server's
hands at a time, on top of the server's bounded transport buffer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from llmkit.errors import ClientGone, LlmkitError

log = logging.getLogger("llmkit.api")

DONE = b"data: [DONE]\n\n"
# Set in the ASGI scope's extensions by llmkit serve's protocol when it aborts a connection that
# read nothing for {"seconds": n} (see api/protocol.py).
STALLED_EXTENSION = "llmkit.stalled"


def stalled(seconds: float) -> str:
    return f"the client read nothing for {seconds:g} s"


def json_bytes(data: Any) -> bytes:
    """Compact UTF-8 JSON. A lone surrogate from an upstream (valid in JSON as `\\ud800`, with no
    UTF-8 encoding) is sent escaped, as it came, instead of failing the answer."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(data, separators=(",", ":")).encode()


class JsonAnswer(Response):
    """A JSON response that any upstream answer can be rendered into (see `json_bytes`)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


def sse(data: Any) -> bytes:
    return b"data: " + json_bytes(data) + b"\n\n"


class ClientWatch:
    """Watches one request's client for the task that serves it: a disconnect, or (once
    `watch_writes` is called) a `send` that waits longer than `write_timeout_s`, cancels that
    task with a ClientGone as the cancellation's message (the executor logs it). `close()` must
    follow the last watched await at once, before any other await, so that a cancellation
    always lands inside the watched code."""

    def __init__(self, scope: Scope, receive: Receive, write_timeout_s: float) -> None:
        self.write_timeout_s = write_timeout_s
        self.gone: ClientGone | None = None
        self._scope = scope
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._closed = False
        self._sending_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._listener = self._loop.create_task(self._listen(receive))

    async def _listen(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                aborted = (self._scope.get("extensions") or {}).get(STALLED_EXTENSION)
                self._gone(stalled(aborted["seconds"]) if aborted else "the client disconnected")
                return

    def _gone(self, reason: str) -> None:
        if self._closed or self.gone is not None or self._task is None:
            return
        self.gone = ClientGone(reason)
        self._task.cancel(self.gone)

    def follow(self, task: asyncio.Task[Any] | None) -> None:
        """Cancel `task` from now on (the response may run in another task than the route)."""
        self._task = task

    def owns(self, exc: asyncio.CancelledError) -> bool:
        """Whether this watch caused `exc` (and nothing cancelled the task after it); if so the
        cancellation is taken back, and the caller ends the request quietly."""
        if self.gone is None or exc.args[:1] != (self.gone,):
            return False
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()
        return True

    def watch_writes(self) -> None:
        if self._timer is None and not self._closed:
            self._timer = self._loop.call_later(self.write_timeout_s, self._check_writes)

    async def send(self, send: Send, message: Message) -> None:
        """`send`, timed: the write timer drops a client on whom a send waits too long."""
        self._sending_since = self._loop.time()
        await send(message)
        self._sending_since = None

    def _check_writes(self) -> None:
        # One timer per stream, moved on as sends complete, instead of one per send.
        if self._closed:
            return
        now = self._loop.time()
        since = self._sending_since
        if since is not None and now - since >= self.write_timeout_s:
            self._gone(stalled(self.write_timeout_s))
            return
        start = since if since is not None else now
        self._timer = self._loop.call_at(start + self.write_timeout_s, self._check_writes)

    def close(self) -> None:
        self._closed = True
        self._listener.cancel()
        if self._timer is not None:
            self._timer.cancel()


class EventStream(Response):
    """The SSE answer of a chunk stream: each chunk as one `data:` event, then `[DONE]`, or
    an error event when the stream fails after it started. A client that leaves or stops
    reading ends it: the chunk iterator gets ClientGone thrown in (or is cancelled where it
    waits), which closes the upstream call and logs it `cancelled`; the response is left
    incomplete, so the server closes the connection."""

    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: AsyncIterator[dict[str, Any]],
        first: dict[str, Any] | None,
        watch: ClientWatch,
        headers: Mapping[str, str],
    ) -> None:
        # Not Response.__init__: it would render a body and declare its length.
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self.chunks = chunks
        self.first = first
        self.watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self.watch
        watch.follow(asyncio.current_task())
        watch.watch_writes()
        try:
            await self._events(send)
        except asyncio.CancelledError as exc:
            if not watch.owns(exc):
                raise
            assert watch.gone is not None
            log.info("stream ended early: %s", watch.gone.message)
            await _throw_into(self.chunks, watch.gone)
        finally:
            watch.close()
            await _close(self.chunks)

    async def _events(self, send: Send) -> None:
        watch = self.watch
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await watch.send(send, start)
        try:
            if self.first is not None:
                await watch.send(send, _body(sse(self.first)))
            async for chunk in self.chunks:
                await watch.send(send, _body(sse(chunk)))
            tail = DONE
        except LlmkitError as exc:
            tail = sse(exc.to_dict())
        await watch.send(send, _body(tail, more=False))
        watch.close()


def _body(data: bytes, more: bool = True) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def _throw_into(chunks: AsyncIterator[dict[str, Any]], gone: ClientGone) -> None:
    """End the chunk stream with the reason, if it is still waiting for its consumer."""
    athrow = getattr(chunks, "athrow", None)
    if athrow is None:
        return
    try:
        await athrow(gone)
    except (ClientGone, StopAsyncIteration):
        pass


async def _close(chunks: AsyncIterator[dict[str, Any]]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()
