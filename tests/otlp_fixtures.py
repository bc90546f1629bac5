"""Fixtures for the span export tests: a real OTLP/HTTP receiver on 127.0.0.1 (`collector`),
and the execution app with the OTEL_* variables pointing at it (`traced_api`). Registered by
`tests/conftest.py`.

The collector decodes each `POST /v1/traces` body (JSON, or protobuf read by a wire-format
reader of its own into the same JSON form), keeps every request (path, headers,
body) and the spans of each request it accepted, and answers scripted statuses queued with
`answer(503, ...)` (200 with an empty partialSuccess once the queue is empty). `stall()` makes
it hold every request unanswered until `release()` (or HOLD_LIMIT_S, or the fixture's end).
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.api_fixtures import running_api
from tests.exec_fixtures import FAKE_KEY_ENV, FAKE_KEY_VALUE, ExecApi, build_exec_repo
from tests.fake_upstream import FakeUpstream

HOLD_LIMIT_S = 60.0


@dataclass
class ExportRequest:
    path: str
    headers: dict[str, str]
    body: Any
    status: int

    @property
    def spans(self) -> list[dict[str, Any]]:
        return [
            span
            for resource in self.body["resourceSpans"]
            for scope in resource["scopeSpans"]
            for span in scope["spans"]
        ]


class Collector:
    def __init__(self) -> None:
        self.requests: list[ExportRequest] = []
        self._answers: deque[int] = deque()
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()
        self.held = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.collector = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Collector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def answer(self, *statuses: int) -> None:
        """Answer the next requests with these statuses, in order."""
        with self._lock:
            self._answers.extend(statuses)

    def stall(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    @property
    def spans(self) -> list[dict[str, Any]]:
        """Every span of every accepted request, in the order they arrived."""
        with self._lock:
            accepted = [r for r in self.requests if r.status == 200]
        return [span for request in accepted for span in request.spans]

    def _record(self, request: ExportRequest) -> int:
        with self._lock:
            request.status = self._answers.popleft() if self._answers else 200
            self.requests.append(request)
            return request.status

    def _hold(self) -> None:
        with self._lock:
            self.held += 1
        self._released.wait(HOLD_LIMIT_S)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        collector: Collector = self.server.collector  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        if not collector._released.is_set():
            collector._hold()
        headers = {k.lower(): v for k, v in self.headers.items()}
        content_type = headers.get("content-type")
        if content_type == "application/json":
            body = json.loads(raw)
        elif content_type == "application/x-protobuf":
            body = decode_export_request(raw)
        else:
            body = raw
        status = collector._record(ExportRequest(self.path, headers, body, 0))
        answer = b"{}" if status == 200 else b'{"code": 14, "message": "unavailable"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


# -- protobuf, read back into the OTLP/JSON form ----------------------------------------------


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field of a message, in order."""
    out: list[tuple[int, int, Any]] = []
    i = 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.append((number, wire, varint()))
        elif wire == 1:
            out.append((number, wire, data[i : i + 8]))
            i += 8
        elif wire == 2:
            size = varint()
            out.append((number, wire, data[i : i + size]))
            i += size
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return out


def _any_value(data: bytes) -> dict[str, Any]:
    [(number, _, value)] = _fields(data)
    if number == 1:
        return {"stringValue": value.decode()}
    if number == 2:
        return {"boolValue": bool(value)}
    if number == 3:
        return {"intValue": str(value - (1 << 64) if value >= 1 << 63 else value)}
    if number == 4:
        return {"doubleValue": struct.unpack("<d", value)[0]}
    assert number == 5, number
    return {"arrayValue": {"values": [_any_value(v) for _, _, v in _fields(value)]}}


def _key_value(data: bytes) -> dict[str, Any]:
    fields = {n: v for n, _, v in _fields(data)}
    return {"key": fields[1].decode(), "value": _any_value(fields[2])}


SPAN_FIELDS = {1: "traceId", 2: "spanId", 3: "traceState", 4: "parentSpanId", 5: "name"}


def _span(data: bytes) -> dict[str, Any]:
    span: dict[str, Any] = {"attributes": []}
    for number, _, value in _fields(data):
        if number in (1, 2, 4):
            span[SPAN_FIELDS[number]] = value.hex()
        elif number in (3, 5):
            span[SPAN_FIELDS[number]] = value.decode()
        elif number == 6:
            span["kind"] = value
        elif number in (7, 8):
            nanos = str(struct.unpack("<Q", value)[0])
            span["startTimeUnixNano" if number == 7 else "endTimeUnixNano"] = nanos
        elif number == 9:
            span["attributes"].append(_key_value(value))
        elif number == 15:
            fields = {n: v for n, _, v in _fields(value)}
            span["status"] = {"message": fields.get(2, b"").decode(), "code": fields.get(3, 0)}
    return span


def decode_export_request(data: bytes) -> dict[str, Any]:
    """An ExportTraceServiceRequest in protobuf, as its OTLP/JSON form."""
    resource_spans = []
    for _, _, rs in _fields(data):
        entry: dict[str, Any] = {"resource": {"attributes": []}, "scopeSpans": []}
        for number, _, value in _fields(rs):
            if number == 1:
                attrs = [_key_value(v) for n, _, v in _fields(value) if n == 1]
                entry["resource"]["attributes"] = attrs
            elif number == 2:
                scope: dict[str, Any] = {"scope": {}, "spans": []}
                for n, _, v in _fields(value):
                    if n == 1:
                        names = {k: x.decode() for k, _, x in _fields(v)}
                        scope["scope"] = {"name": names.get(1), "version": names.get(2)}
                    elif n == 2:
                        scope["spans"].append(_span(v))
                entry["scopeSpans"].append(scope)
        resource_spans.append(entry)
    return {"resourceSpans": resource_spans}


@pytest.fixture
def collector() -> Iterator[Collector]:
    """A real OTLP/HTTP JSON receiver on 127.0.0.1, stopped (and released) at the end."""
    running = Collector().start()
    try:
        yield running
    finally:
        running.stop()


OtelEnv = Callable[..., None]
MakeTracedApi = Callable[..., ExecApi]


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> OtelEnv:
    """set(**variables): these OTEL_* variables set (None unsets one), and none of the shell's
    own, so a developer's collector settings never reach a test. Undone after the test."""

    def set_variables(**variables: str | None) -> None:
        for name in list(os.environ):
            if name.startswith("OTEL_"):
                monkeypatch.delenv(name)
        for name, value in variables.items():
            if value is not None:
                monkeypatch.setenv(name, value)

    return set_variables


@pytest.fixture
def traced_api(
    tmp_path: Path,
    fake: FakeUpstream,
    collector: Collector,
    otel_env: OtelEnv,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[MakeTracedApi]:
    """make(**variables) -> the execution app (prompts on the fake upstream and on `echo`),
    started with OTEL_EXPORTER_OTLP_ENDPOINT at the collector and a 20 ms schedule delay,
    plus `variables` (None unsets one), and no other OTEL_* variable."""
    managers: list[Any] = []

    def make(**variables: str | None) -> ExecApi:
        defaults: dict[str, str | None] = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "20",
        }
        otel_env(**{**defaults, **variables})
        monkeypatch.setenv(FAKE_KEY_ENV, FAKE_KEY_VALUE)
        repo = tmp_path / f"repo{len(managers)}"
        shas = build_exec_repo(repo, fake.url)
        manager = running_api(repo)
        env = manager.__enter__()
        managers.append(manager)
        return ExecApi(env, fake, shas)

    yield make
    for manager in reversed(managers):
        manager.__exit__(None, None, None)
