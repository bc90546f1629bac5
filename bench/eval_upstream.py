"""A fake OpenAI-compatible upstream in its own process, for the evals benchmark.

    python bench/eval_upstream.py [--kind fast|tests]

It prints one JSON line `{"url": ".../v1", "port": N}` on stdout, then obeys one command per
line on stdin, answering each with one JSON line:

- `stats`: `{"chat": requests, "first": t, "last": t, "cpu": s}` (`first` and `last` are
  `time.monotonic()`, which on Linux is one clock for every process, so the benchmark can set
  them against its own; `cpu` is this process's CPU time so far);
- `reset`: zero the counters and forget the recorded bodies;
- `bodies PATH`: write the raw request bodies received since the last reset, one JSON per line;
- `quit` (or end of stdin): stop.

`fast` is a minimal asyncio HTTP/1.1 server (keep-alive, Content-Length bodies only) that costs
little CPU per request, so on a 2-core machine the upstream takes little from the client being
measured. `tests` runs `tests/fake_upstream.py`'s threaded server instead. Both answer a chat
request with `ok: <last user content>` and word-count usage. 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

MAX_BODIES = 20_000  # bodies kept for `bodies`; a benchmark round sends far fewer
MAX_HEAD_BYTES = 64 * 1024


class Counter:
    """Chat requests seen since the last reset; safe to update from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.chat = 0
        self.first: float | None = None
        self.last: float | None = None
        self.bodies: list[bytes] = []

    def seen(self, body: bytes) -> None:
        now = time.monotonic()
        with self._lock:
            self.chat += 1
            if self.first is None:
                self.first = now
            self.last = now
            if len(self.bodies) < MAX_BODIES:
                self.bodies.append(body)

    def reset(self) -> None:
        with self._lock:
            self.chat, self.first, self.last = 0, None, None
            self.bodies = []

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "chat": self.chat,
                "first": self.first,
                "last": self.last,
                "cpu": time.process_time(),
            }

    def write_bodies(self, path: str) -> dict[str, Any]:
        with self._lock:
            bodies = list(self.bodies)
        with open(path, "wb") as fh:
            fh.writelines(body.replace(b"\n", b" ") + b"\n" for body in bodies)
        return {"bodies": len(bodies)}


def last_user_content(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


def completion_bytes(body: dict[str, Any]) -> bytes:
    answer = f"ok: {last_user_content(body)}"
    prompt_words = sum(
        len(m["content"].split())
        for m in body.get("messages") or []
        if isinstance(m, dict) and isinstance(m.get("content"), str)
    )
    answer_words = len(answer.split())
    return json.dumps(
        {
            "id": f"chatcmpl-fake-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model", "fake")),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_words,
                "completion_tokens": answer_words,
                "total_tokens": prompt_words + answer_words,
            },
        }
    ).encode()


def http_response(status: int, payload: bytes, keep_alive: bool = True) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Status")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + payload


class FastProtocol(asyncio.Protocol):
    """One connection: parse requests as they complete in the buffer, answer each in order."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        # Each pass consumes one whole request; the bound only guards against a parser bug.
        for _ in range(10_000):
            if not self._one_request():
                return

    def _one_request(self) -> bool:
        assert self.transport is not None
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self.transport.write(http_response(400, b'{"error": "head too large"}', False))
                self.transport.close()
            return False
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        method, path = (head[0].split(" ") + ["", ""])[:2]
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip() or 0)
        if len(self.buffer) < end + 4 + length:
            return False
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        self.transport.write(self._answer(method, path, body))
        return True

    def _answer(self, method: str, path: str, body: bytes) -> bytes:
        route = path.rstrip("/")
        if method == "GET" and route == "/v1/models":
            return http_response(
                200, b'{"object": "list", "data": [{"id": "fake", "object": "model"}]}'
            )
        if method != "POST" or route != "/v1/chat/completions":
            return http_response(
                404, b'{"error": {"message": "no such route", "code": "not_found"}}'
            )
        self.counter.seen(body)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return http_response(
                400, b'{"error": {"message": "body is not a JSON object", "code": "invalid_json"}}'
            )
        return http_response(200, completion_bytes(parsed))


def announce(port: int) -> None:
    sys.stdout.write(json.dumps({"url": f"http://127.0.0.1:{port}/v1", "port": port}) + "\n")
    sys.stdout.flush()


def obey(counter: Counter, line: str) -> tuple[dict[str, Any], bool]:
    """Answer one stdin command; the flag says whether to stop."""
    command, _, argument = line.strip().partition(" ")
    if command == "stats":
        return counter.stats(), False
    if command == "reset":
        counter.reset()
        return {"ok": True}, False
    if command == "bodies":
        return counter.write_bodies(argument), False
    if command in ("quit", ""):
        return {"ok": True}, True
    return {"error": f"unknown command {command!r}"}, False


async def serve_fast(counter: Counter) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FastProtocol(counter), "127.0.0.1", 0, backlog=512)
    announce(server.sockets[0].getsockname()[1])
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            answer, stop = obey(counter, line)
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
            if stop:
                return
    finally:
        server.close()


def serve_tests(counter: Counter) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.fake_upstream import FakeUpstream

    fake = FakeUpstream()
    recorded = fake._record

    def record(request: Any) -> Any:
        if request.method == "POST" and request.path.rstrip("/").endswith("/chat/completions"):
            counter.seen(json.dumps(request.body).encode())
        return recorded(request)

    fake._record = record  # type: ignore[method-assign]
    fake.start()
    try:
        announce(int(fake.url.rsplit(":", 1)[1].split("/")[0]))
        while True:
            line = sys.stdin.readline()
            answer, stop = obey(counter, line)
            with fake._lock:
                fake.history.clear()  # the history is not needed here; keep memory flat
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
            if stop:
                return
    finally:
        fake.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("fast", "tests"), default="fast")
    args = parser.parse_args()
    counter = Counter()
    if args.kind == "fast":
        asyncio.run(serve_fast(counter))
    else:
        serve_tests(counter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
