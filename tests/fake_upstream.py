"""A fake OpenAI-compatible upstream: a real HTTP server on 127.0.0.1 for tests and benchmarks.

It speaks `POST /v1/chat/completions` (JSON, and SSE when `"stream": true`) and `GET /v1/models`,
records every request in `history`, and answers scripted replies queued with `enqueue()`.

With an empty queue it answers from the request:
- `response_format` json_object/json_schema: the last user content if it is a JSON object,
  else `{"ok": "<last user content>"}`;
- `tools` given and the last message a user message `call:NAME {"json": "args"}`: a tool call;
- otherwise `ok: <last user content>`.

Faults (`enqueue(fault=...)`): "hang" (never answers until the client leaves or the server
stops), "malformed" (200 with a body that is not JSON), "drop" (non-stream: close without a
response; stream: two chunks, then close without `[DONE]`), "slow" (stream chunks `delay`
seconds apart; non-stream: answer after `delay`).

Large answers: `enqueue(content, chunk_chars=N)` streams the content in pieces of N characters,
written as fast as the client takes them (with "slow", `slow_after=K` sends the first K chunks at
once and the rest `delay` apart: a burst, then a trickle that is still going when the client is
dropped); `RecordedRequest.bytes_sent` counts the bytes written before the exchange ended.

Usage from a test file (`tests/conftest.py` registers this module's fixture):

    def test_x(fake_upstream):
        fake_upstream.enqueue(content="hi")
        ...  # point a client at fake_upstream.url (ends in /v1)
        assert fake_upstream.history[0].body["model"] == "fake-model"
"""

from __future__ import annotations

import itertools
import json
import re
import select
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

FAULTS = ("hang", "malformed", "drop", "slow")
HANG_LIMIT_S = 120.0


@dataclass
class Reply:
    """One scripted answer."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    usage: dict[str, Any] | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    fault: str | None = None
    delay: float = 0.05
    error: str | None = None
    finish_reason: str | None = None
    chunk_chars: int | None = None
    slow_after: int = 0


@dataclass
class RecordedRequest:
    """What the fake received, and how the exchange ended.

    `outcome` is "answered", "disconnected" (the client went away first), "dropped" (a drop
    fault), "hung" (a hang ended by shutdown) or "" while in progress; `done` is set at the end.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    client_port: int = 0
    outcome: str = ""
    bytes_sent: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self, outcome: str) -> None:
        self.outcome = outcome
        self.done.set()


class ClientGone(Exception):
    """The client closed its connection while the fake was answering."""


class FakeUpstream:
    """The server: `start()`, `enqueue()`, `history`, `reset()`, `stop()`; `url` ends in /v1."""

    def __init__(self) -> None:
        self.history: list[RecordedRequest] = []
        self.models = ["fake-model"]
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> FakeUpstream:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        port = server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is None:
            return
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self.history.clear()

    def enqueue(
        self,
        content: str | None = None,
        *,
        tool_calls: list[dict[str, Any]] | None = None,
        usage: dict[str, Any] | None = None,
        status: int = 200,
        headers: dict[str, str] | None = None,
        fault: str | None = None,
        delay: float = 0.05,
        error: str | None = None,
        finish_reason: str | None = None,
        chunk_chars: int | None = None,
        slow_after: int = 0,
    ) -> None:
        """Queue the answer for the next chat request. `tool_calls` items are
        `{"name": ..., "arguments": {...} or "json"}` or full OpenAI tool call dicts;
        `chunk_chars` streams the content in pieces of that many characters."""
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"Unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")
        reply = Reply(
            content=content,
            tool_calls=tool_calls,
            usage=usage,
            status=status,
            headers=dict(headers or {}),
            fault=fault,
            delay=delay,
            error=error,
            finish_reason=finish_reason,
            chunk_chars=chunk_chars,
            slow_after=slow_after,
        )
        with self._lock:
            self._queue.append(reply)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.history if r.path.endswith("/chat/completions")]

    def _record(self, request: RecordedRequest) -> Reply | None:
        with self._lock:
            self.history.append(request)
            if request.method == "POST" and self._queue:
                return self._queue.popleft()
        return None

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    fake: FakeUpstream

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that closes a kept-alive connection is no error worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def fake(self) -> FakeUpstream:
        return self.server.fake

    def _recorded(self, method: str, body: Any) -> RecordedRequest:
        headers = {name.lower(): value for name, value in self.headers.items()}
        return RecordedRequest(method, self.path, headers, body, self.client_address[1])

    def do_GET(self) -> None:
        record = self._recorded("GET", None)
        self.fake._record(record)
        if self.path.rstrip("/") != "/v1/models":
            self._send_json(404, _error_body(f"No route GET {self.path}", "not_found"))
        else:
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                for m in self.fake.models
            ]
            self._send_json(200, {"object": "list", "data": data})
        record.finish("answered")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = self._recorded("POST", body)
        reply = self.fake._record(record)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_json(404, _error_body(f"No route POST {self.path}", "not_found"))
            record.finish("answered")
            return
        if not isinstance(body, dict):
            self._send_json(400, _error_body("Request body is not a JSON object", "invalid_json"))
            record.finish("answered")
            return
        try:
            record.finish(self._answer_chat(record, body, reply or Reply()))
        except (ClientGone, ConnectionError, OSError):
            self.close_connection = True
            record.finish("disconnected")

    def _answer_chat(self, record: RecordedRequest, body: dict[str, Any], reply: Reply) -> str:
        streaming = bool(body.get("stream"))
        if reply.fault == "hang":
            return self._hang()
        if reply.status >= 400:
            message = reply.error or f"fake upstream error {reply.status}"
            self._send_json(reply.status, _error_body(message, str(reply.status)), reply.headers)
            return "answered"
        if reply.fault == "malformed" and streaming:
            event = b'data: {"id": "chatcmpl-broken", "choices": [\n\ndata: [DONE]\n\n'
            self._send_bytes(200, event, "text/event-stream", reply.headers)
            return "answered"
        if reply.fault == "malformed":
            broken = b'{"id": "chatcmpl-broken", "choices": ['
            self._send_bytes(200, broken, "application/json", reply.headers)
            return "answered"
        if reply.fault == "drop" and not streaming:
            self.close_connection = True
            return "dropped"
        completion = _completion(body, reply)
        if not streaming:
            if reply.fault == "slow":
                self._wait(reply.delay)
            self._send_json(200, completion, reply.headers)
            return "answered"
        return self._stream(record, body, completion, reply)

    def _stream(
        self,
        record: RecordedRequest,
        body: dict[str, Any],
        completion: dict[str, Any],
        reply: Reply,
    ) -> str:
        chunks: Iterator[dict[str, Any]] = _chunks(completion, reply.chunk_chars)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if include_usage:
            usage = _chunk(completion, [], usage=completion["usage"])
            chunks = itertools.chain(chunks, [usage])
        self.send_response(200)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, chunk in enumerate(chunks):
            if reply.fault == "drop" and i == 2:
                self.close_connection = True
                self.wfile.flush()
                return "dropped"
            if reply.fault == "slow" and i > reply.slow_after:
                self._wait(reply.delay)
            self._write_chunk(record, b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self._write_chunk(record, b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        return "answered"

    def _write_chunk(self, record: RecordedRequest, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        record.bytes_sent += len(data)

    def _hang(self) -> str:
        deadline = time.monotonic() + HANG_LIMIT_S
        while time.monotonic() < deadline:
            if self.fake._stopping.wait(0.02):
                self.close_connection = True
                return "hung"
            if self._client_gone():
                raise ClientGone()
        self.close_connection = True
        return "hung"

    def _wait(self, seconds: float) -> None:
        """Sleep, but notice a client that leaves meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.fake._stopping.wait(min(left, 0.01)):
                raise ClientGone()
            if self._client_gone():
                raise ClientGone()

    def _client_gone(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers or {})

    def _send_bytes(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str]
    ) -> None:
        # Status line, headers and body in one write: split writes meet Nagle/delayed-ACK stalls.
        lines = [
            f"HTTP/1.1 {status} {_reason(status)}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(data)}",
        ]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)


def _reason(status: int) -> str:
    return BaseHTTPRequestHandler.responses.get(status, ("Status",))[0]


def _error_body(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "fake_error", "param": None, "code": code}}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _last_user_content(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def _default_answer(body: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]] | None]:
    messages = body.get("messages") or []
    last = _last_user_content(messages)
    wants_json = (body.get("response_format") or {}).get("type") in ("json_object", "json_schema")
    call = re.match(r"call:([\w.-]+)\s*(.*)", last.strip(), re.DOTALL)
    if body.get("tools") and messages and messages[-1].get("role") == "user" and call:
        return None, [{"name": call.group(1), "arguments": call.group(2).strip() or "{}"}]
    if wants_json:
        try:
            parsed = json.loads(last)
        except ValueError:
            parsed = None
        return json.dumps(parsed if isinstance(parsed, dict) else {"ok": last}), None
    return f"ok: {last}", None


def _tool_call(index: int, spec: dict[str, Any]) -> dict[str, Any]:
    if "function" in spec:
        return {
            "id": spec.get("id") or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": dict(spec["function"]),
        }
    args = spec.get("arguments", {})
    return {
        "id": spec.get("id") or f"call_fake_{index}",
        "type": "function",
        "function": {
            "name": spec["name"],
            "arguments": args if isinstance(args, str) else json.dumps(args),
        },
    }


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    if reply.content is None and reply.tool_calls is None:
        content, tool_specs = _default_answer(body)
    else:
        content, tool_specs = reply.content, reply.tool_calls
    tool_calls = [_tool_call(i, spec) for i, spec in enumerate(tool_specs or [])]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    usage = reply.usage or _usage(body, content, tool_calls)
    return {
        "id": f"chatcmpl-fake-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(body.get("model", "fake-model")),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": reply.finish_reason or ("tool_calls" if tool_calls else "stop"),
            }
        ],
        "usage": usage,
    }


def _usage(
    body: dict[str, Any], content: str | None, tool_calls: list[dict[str, Any]]
) -> dict[str, int]:
    prompt_words = sum(len(_text(m.get("content")).split()) for m in body.get("messages") or [])
    answer_words = len((content or "").split()) + sum(
        len(c["function"]["arguments"].split()) for c in tool_calls
    )
    return {
        "prompt_tokens": prompt_words,
        "completion_tokens": answer_words,
        "total_tokens": prompt_words + answer_words,
    }


def _chunk(
    completion: dict[str, Any], choices: list[dict[str, Any]], usage: Any = None
) -> dict[str, Any]:
    return {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
        "choices": choices,
        "usage": usage,
    }


def _chunks(completion: dict[str, Any], chunk_chars: int | None = None) -> Iterator[dict[str, Any]]:
    """The completion as stream chunks: role first, content in pieces (three, or of
    `chunk_chars` characters each), finish_reason last. Made as they are sent, so that a
    large answer is not held twice."""
    choice = completion["choices"][0]
    message = choice["message"]

    def delta_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return _chunk(completion, [{"index": 0, "delta": delta, "finish_reason": finish}])

    yield delta_chunk({"role": "assistant", "content": ""})
    content = message.get("content") or ""
    step = chunk_chars or max(1, len(content) // 3 + 1)
    for i in range(0, len(content), step):
        yield delta_chunk({"content": content[i : i + step]})
    for index, call in enumerate(message.get("tool_calls") or []):
        head = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        yield delta_chunk({"tool_calls": [head]})
        args = call["function"]["arguments"]
        half = len(args) // 2
        for piece in (args[:half], args[half:]):
            if piece:
                part = {"index": index, "function": {"arguments": piece}}
                yield delta_chunk({"tool_calls": [part]})
    yield delta_chunk({}, choice["finish_reason"])


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """A started fake upstream, stopped after the test."""
    fake = FakeUpstream().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    """Two started fake upstreams (a primary and a fallback, say), stopped after the test."""
    a, b = FakeUpstream().start(), FakeUpstream().start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()
