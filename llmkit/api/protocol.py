"""The HTTP protocol `llmkit serve` runs: uvicorn's (httptools), with two deadlines it lacks.

- A client that stops reading: the connection's write buffer stays above its high-water mark.
  After `write_timeout_s` the connection is aborted. The app's own write deadline (see
  api/streaming.py) ends the call wherever the app runs, but it can only return, and the server
  then closes the connection gracefully, which waits for the buffered data to be read: the
  socket and its buffers stayed held by a client that reads nothing, and uvicorn logged an
  error. An abort frees them at once and reaches the app as an ordinary disconnect.
- A client that sends its request head slowly, or never (slowloris): uvicorn waits without end,
  on a new connection and between keep-alive requests (any byte cancels its keep-alive timer).
  The head must now be complete within `read_timeout_s`, else 408 and the connection closes.
  The body has the same deadline, kept by the app (api/limits.py).

Falls back to uvicorn's default protocol when httptools is not installed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from typing import Any

from llmkit.api.streaming import STALLED_EXTENSION
from llmkit.errors import RequestTimeout

log = logging.getLogger("llmkit.api")

REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
)
REQUEST_TIMEOUT_BODY = json.dumps(
    RequestTimeout("The request head did not arrive in time").to_dict(), separators=(",", ":")
).encode()


def http_protocol(write_timeout_s: float, read_timeout_s: float) -> type[asyncio.Protocol] | str:
    """The protocol class to give uvicorn (`http=`), or "auto" without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _stall_timer: asyncio.TimerHandle | None = None
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            for timer in (self._stall_timer, self._head_timer):
                if timer is not None:
                    timer.cancel()
            super().connection_lost(exc)

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._stall_timer is None:
                self._stall_timer = self.loop.call_later(write_timeout_s, self._abort_stalled)

        def resume_writing(self) -> None:
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None
            super().resume_writing()

        def _abort_stalled(self) -> None:
            log.info("aborted a connection that read nothing for %g s", write_timeout_s)
            if self.cycle is not None:
                # Tells the app why its client is gone (it hears only http.disconnect).
                extensions = self.cycle.scope.setdefault("extensions", {})
                extensions[STALLED_EXTENSION] = {"seconds": write_timeout_s}
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                # A reset: otherwise the kernel keeps the unsent data of the closed socket and
                # goes on offering it to a client that does not read.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

        def _await_head(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(read_timeout_s, self._head_overdue)

        def on_headers_complete(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._await_head()

        def _head_overdue(self) -> None:
            self._head_timer = None
            busy = self.cycle is not None and not self.cycle.response_complete
            if busy or self.transport.is_closing():
                return  # a request is being answered (pipelined): its head came in time
            length = b"content-length: %d\r\n\r\n" % len(REQUEST_TIMEOUT_BODY)
            self.transport.write(REQUEST_TIMEOUT_RESPONSE + length + REQUEST_TIMEOUT_BODY)
            self.transport.close()

    return GuardedHttpToolsProtocol
