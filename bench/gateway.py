"""Benchmark of the OpenAI-compatible gateway: `llmkit serve` between a client and an upstream.

Run by hand, never by the test suite:

    python bench/gateway.py                    # 5 interleaved rounds, a profile, results
    python bench/gateway.py --rounds 3 --no-profile
    python bench/gateway.py --serve-launcher X.py   # `python X.py serve ...` as the gateway
    python bench/gateway.py --cpu-only --baseline-launcher OLD.py   # CPU/request only, c=1 and
                                               # c=32, this build beside another in each round

Processes, all on 127.0.0.1 and each on its own:
- a fake OpenAI-compatible upstream (raw asyncio: one fixed completion, one fixed SSE stream);
- `python -m llmkit serve --no-watch` (one uvicorn worker, run log on) over a temporary prompt
  repository whose `fast` alias points at the fake;
- a load generator: keep-alive sockets, responses parsed with httptools;
- two reference proxies without llmkit or FastAPI, a bare ASGI app on uvicorn forwarding with
  httpx ("floor") or with aiohttp ("floor-aiohttp"), to show what the stack itself costs.

The machine is shared and noisy: each figure is the median over rounds, and in each round the
direct-to-upstream baseline, the gateway and the floors are measured one after the other, in an
order rotated every round, with the same client. CPU is read from /proc (schedstat per thread,
utime + stime as a check). Results go to bench/results/gateway.json, and the gateway's cProfile
under load to bench/results/gateway_profile.txt. Exit status 1 when a target is missed.

The subcommands `fake`, `load`, `floor` and `profiled-serve` are the other processes; `run`
(the default) drives them.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import pstats
import select
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"
GIT_IDENTITY = ("-c", "user.name=Bench", "-c", "user.email=bench@example.com")
PROMPT_KEY = "bench"
ANSWER_MARKER = b"Hello"  # in every answer of the fake, streamed or not
READY_TIMEOUT_S = 15.0
POLL_S = 0.005
JOB_TIMEOUT_S = 60.0
LITELLM_PROXY_RPS = (107.0, 135.0)  # the LiteLLM proxy on this machine, same request shape

# Targets: at most these, except throughput (at least).
CPU_TARGET_MS = 1.5
ADDED_P50_TARGET_MS = 1.5
ADDED_FIRST_CHUNK_TARGET_MS = 2.0
THROUGHPUT_TARGET_RPS = 4 * LITELLM_PROXY_RPS[1]
START_TARGET_S = 1.5
RSS_TARGET_MIB = 120.0

KINDS = ("c1", "c1-stream", "cN")  # latency, first streamed chunk, throughput


# -- the fake upstream ----------------------------------------------------------------------

USAGE = {"prompt_tokens": 21, "completion_tokens": 6, "total_tokens": 27}


def completion_body() -> bytes:
    message = {"role": "assistant", "content": "Hello from the fake upstream."}
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "fake",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": USAGE,
        }
    ).encode()


def _sse_chunk(delta: dict[str, Any] | None, finish: str | None = None) -> bytes:
    data: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "fake",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if delta is None:
        data["usage"] = USAGE
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def stream_events() -> list[bytes]:
    events = [_sse_chunk({"role": "assistant", "content": "Hello"})]
    events += [_sse_chunk({"content": w}) for w in (" from", " the", " fake", " upstream", ".")]
    events += [_sse_chunk({}, finish="stop"), _sse_chunk(None), b"data: [DONE]\n\n"]
    return events


def _with_length(body: bytes, content_type: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _chunked(events: list[bytes], content_type: bytes) -> bytes:
    # One HTTP chunk per SSE event, as streaming servers send them.
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: "
        + content_type
        + b"\r\ntransfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
        + chunks
        + b"0\r\n\r\n"
    )


COMPLETION_RESPONSE = _with_length(completion_body(), b"application/json")
STREAM_RESPONSE = _chunked(stream_events(), b"text/event-stream")
HEALTH_RESPONSE = _with_length(b'{"status":"ok"}', b"application/json")


def content_length(head: bytes) -> int:
    """Content-Length of a lower-cased request head; 0 when absent."""
    at = head.find(b"content-length:")
    if at < 0:
        return 0
    end = head.find(b"\r\n", at)
    return int(head[at + len(b"content-length:") : end if end >= 0 else len(head)])


class FakeUpstream(asyncio.Protocol):
    """One keep-alive connection, answered from each request's method and body alone."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end]).lower()
            total = end + 4 + content_length(head)
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            if head.startswith(b"get"):
                self.transport.write(HEALTH_RESPONSE)
            elif b'"stream": true' in body or b'"stream":true' in body:
                self.transport.write(STREAM_RESPONSE)
            else:
                self.transport.write(COMPLETION_RESPONSE)


async def serve_fake(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeUpstream, HOST, port, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def fake_main(args: argparse.Namespace) -> int:
    use_uvloop()
    asyncio.run(serve_fake(args.port))
    return 0


# -- the load generator ---------------------------------------------------------------------


class ClientConnection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client connection with one request in flight at a time."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.first_body_at = 0.0
        self.body = bytearray()
        self.lost: Exception | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("connection closed")
        self._fail(self.lost)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # a malformed answer ends this connection's work
            self._fail(exc)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.first_body_at:
            self.first_body_at = time.perf_counter()
        self.body += body

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def request(self, raw: bytes) -> float:
        """Send one request and wait for the whole answer; returns when it was sent."""
        if self.lost is not None:
            raise self.lost
        self.waiter = asyncio.get_running_loop().create_future()
        self.status = 0
        self.first_body_at = 0.0
        self.body.clear()
        sent = time.perf_counter()
        self.transport.write(raw)
        await self.waiter
        return sent


@dataclass
class LoadResult:
    ok: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    first_byte_ms: list[float] = field(default_factory=list)
    first_error: str | None = None


async def run_job(job: dict[str, Any]) -> LoadResult:
    """`requests` requests (or until `duration_s`) over `concurrency` connections; every
    connection is aborted at `timeout_s`."""
    loop = asyncio.get_running_loop()
    raw = job["raw"].encode("latin-1")
    record = bool(job["record"])
    result = LoadResult()
    connections: list[ClientConnection] = []
    for _ in range(job["concurrency"]):
        opening = loop.create_connection(ClientConnection, HOST, job["port"])
        connections.append((await asyncio.wait_for(opening, 5))[1])
    left = [int(job["requests"])]
    deadline = time.perf_counter() + float(job["duration_s"] or JOB_TIMEOUT_S)

    def abort() -> None:
        for conn in connections:
            conn.transport.abort()

    async def drive(conn: ClientConnection) -> None:
        while left[0] > 0 and time.perf_counter() < deadline:
            left[0] -= 1
            try:
                sent = await conn.request(raw)
            except Exception as exc:
                result.errors += 1
                result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
                return
            done = time.perf_counter()
            if conn.status != 200 or ANSWER_MARKER not in conn.body:
                result.errors += 1
                shown = f"HTTP {conn.status}: {conn.body[:300]!r}"
                result.first_error = result.first_error or shown
                continue
            result.ok += 1
            if record:
                result.latencies_ms.append((done - sent) * 1000)
                result.first_byte_ms.append((conn.first_body_at - sent) * 1000)

    watchdog = loop.call_later(float(job["timeout_s"]), abort)
    cpu_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(drive(conn) for conn in connections))
    result.elapsed_s = time.perf_counter() - started
    result.client_cpu_s = time.process_time() - cpu_before
    watchdog.cancel()
    for conn in connections:
        conn.transport.close()
    return result


def load_main(args: argparse.Namespace) -> int:
    """Jobs as JSON lines on stdin, results as JSON lines on stdout, until stdin closes."""
    use_uvloop()
    loop = asyncio.new_event_loop()
    for line in sys.stdin:
        try:
            result = loop.run_until_complete(run_job(json.loads(line)))
        except Exception as exc:
            result = LoadResult(errors=1, first_error=f"{type(exc).__name__}: {exc}")
        sys.stdout.write(json.dumps(asdict(result)) + "\n")
        sys.stdout.flush()
    loop.close()
    return 0


# -- the floors: a bare proxy on the same server, with either HTTP client ---------------------


class HttpxForwarder:
    def __init__(self, url: str) -> None:
        import httpx

        limits = httpx.Limits(
            max_connections=512, max_keepalive_connections=128, keepalive_expiry=30
        )
        self.client = httpx.AsyncClient(limits=limits, timeout=JOB_TIMEOUT_S)
        self.url = url

    async def complete(self, payload: bytes, headers: dict[str, str]) -> bytes:
        response = await self.client.post(self.url, content=payload, headers=headers)
        return response.content

    async def lines(self, payload: bytes, headers: dict[str, str]) -> AsyncIterator[bytes]:
        request = self.client.stream("POST", self.url, content=payload, headers=headers)
        async with request as response:
            async for line in response.aiter_lines():
                yield line.encode()

    async def close(self) -> None:
        await self.client.aclose()


class AiohttpForwarder:
    def __init__(self, url: str) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=30)
        self.client = aiohttp.ClientSession(connector=connector)
        self.url = url

    async def complete(self, payload: bytes, headers: dict[str, str]) -> bytes:
        async with self.client.post(self.url, data=payload, headers=headers) as response:
            return await response.read()

    async def lines(self, payload: bytes, headers: dict[str, str]) -> AsyncIterator[bytes]:
        async with self.client.post(self.url, data=payload, headers=headers) as response:
            async for line in response.content:
                yield line.rstrip(b"\r\n")

    async def close(self) -> None:
        await self.client.close()


FORWARDERS = {"httpx": HttpxForwarder, "aiohttp": AiohttpForwarder}
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def floor_app(upstream: str, client: str) -> Callable[..., Any]:
    """An ASGI proxy doing what the gateway does on the wire and nothing else: parse the
    body, set the model, forward, parse the answer, set the model back, answer."""
    url = upstream.rstrip("/") + "/chat/completions"
    headers = {"content-type": "application/json", "authorization": "Bearer x"}
    state: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["path"] == "/healthz":
            await send_json(send, b'{"status":"ok"}')
            return
        request = json.loads(await read_body(receive))
        model, request["model"] = request.get("model"), "fake"
        forwarder = state["forwarder"]
        payload = json.dumps(request).encode()
        if not request.get("stream"):
            answer = json.loads(await forwarder.complete(payload, headers))
            answer["model"] = model
            await send_json(send, json.dumps(answer).encode())
            return
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
        await send(start)
        async for line in forwarder.lines(payload, headers):
            if line.startswith(b"data:"):
                event = {"type": "http.response.body", "body": line + b"\n\n", "more_body": True}
                await send(event)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["forwarder"] = FORWARDERS[client](url)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await state["forwarder"].close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    return app


async def read_body(receive: Receive) -> bytes:
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def send_json(send: Send, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def floor_main(args: argparse.Namespace) -> int:
    import uvicorn

    app = floor_app(args.upstream, args.client)
    uvicorn.run(app, host=HOST, port=args.port, log_level="warning", access_log=False)
    return 0


# -- the gateway under cProfile ---------------------------------------------------------------


def profiled_serve_main(args: argparse.Namespace) -> int:
    """`llmkit serve` with a profiler that SIGUSR1 starts and SIGUSR2 stops and dumps (to the
    next --out path), so that a window holds the load alone."""
    import cProfile

    sys.path.insert(0, str(PROJECT_ROOT))
    from llmkit.cli import main

    outputs = iter(args.out)
    profiler = {"current": cProfile.Profile()}

    def start(signum: int, frame: object) -> None:
        profiler["current"] = cProfile.Profile()
        profiler["current"].enable()

    def stop(signum: int, frame: object) -> None:
        profiler["current"].disable()
        profiler["current"].dump_stats(next(outputs))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    argv = [
        "serve",
        "--repo",
        args.repo,
        "--port",
        str(args.port),
        "--no-watch",
        "--log-level",
        "warning",
    ]
    try:
        main(argv, standalone_mode=False)
    except SystemExit:
        pass
    modules = {"litellm_imported": "litellm" in sys.modules}
    Path(args.modules_out).write_text(json.dumps(modules), encoding="utf-8")
    return 0


# -- processes and /proc ----------------------------------------------------------------------


def die_with_parent() -> None:
    # Children end with this process even when it is killed outright.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class Processes:
    """Every child process, each ended on exit, also on failure."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[Any]] = []

    def spawn(self, argv: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[Any]:
        # prctl(PR_SET_PDEATHSIG) must run in the child; the bench starts its children first.
        proc = subprocess.Popen(argv, env=env, preexec_fn=die_with_parent, **kwargs)  # noqa: PLW1509
        self.children.append(proc)
        return proc

    def end(self, proc: subprocess.Popen[Any], signum: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if proc in self.children:
            self.children.remove(proc)

    def end_all(self) -> None:
        for proc in reversed(list(self.children)):
            self.end(proc)


@dataclass(frozen=True)
class CpuReading:
    """A process's CPU time two ways: utime + stime in clock ticks (every thread, living or
    gone, but 10 ms coarse), and each living thread's run time in ns (schedstat)."""

    pid: int
    ticks_s: float
    threads_ns: dict[int, int]
    thread_names: dict[int, str]
    waited_ns: int  # time the living threads spent runnable but waiting for a CPU

    def since(self, before: CpuReading) -> float:
        """CPU seconds between two readings: the fine figure, unless threads that ended in
        between took more than the coarse figure's rounding can hide."""
        fine = sum(ns - before.threads_ns.get(t, 0) for t, ns in self.threads_ns.items()) / 1e9
        coarse = self.ticks_s - before.ticks_s
        tick = 1 / os.sysconf("SC_CLK_TCK")
        return coarse if coarse > fine * 1.05 + 2 * tick else fine

    def by_thread(self, before: CpuReading) -> dict[str, float]:
        """CPU seconds between two readings per thread name; the main thread is "event loop"."""
        found: dict[str, float] = {}
        for tid, ns in self.threads_ns.items():
            name = "event loop" if tid == self.pid else self.thread_names.get(tid, "?")
            found[name] = found.get(name, 0.0) + (ns - before.threads_ns.get(tid, 0)) / 1e9
        return found


def cpu_reading(pid: int) -> CpuReading:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    ticks_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    threads: dict[int, int] = {}
    names: dict[int, str] = {}
    waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            run_ns, wait_ns = (task / "schedstat").read_text().split()[:2]
            names[int(task.name)] = (task / "comm").read_text().strip()
        except (OSError, ValueError):
            continue  # the thread ended while being read
        threads[int(task.name)] = int(run_ns)
        waited += int(wait_ns)
    return CpuReading(pid, ticks_s, threads, names, waited)


def memory_mib(pid: int) -> dict[str, float]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) / 1024
    return found


def litellm_mapped(pid: int) -> list[str]:
    """Mapped files of litellm (its native bridge) or of what importing it loads."""
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        path = parts[-1] if len(parts) >= 6 else ""
        if "/litellm/" in path or "/tiktoken/" in path or "/tokenizers/" in path:
            paths.add(path)
    return sorted(paths)


def http_status(port: int, path: str) -> int:
    with socket.create_connection((HOST, port), timeout=1.0) as sock:
        request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def wait_ready(proc: subprocess.Popen[Any], port: int, started: float) -> float:
    """Seconds from `started` until GET /healthz answers 200."""
    while time.perf_counter() - started < READY_TIMEOUT_S:
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}: {stderr}")
        try:
            if http_status(port, "/healthz") == 200:
                return time.perf_counter() - started
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(POLL_S)
    raise RuntimeError(f"server on port {port} not ready after {READY_TIMEOUT_S:g} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class LoadClient:
    """The load generator process, given one job at a time."""

    def __init__(self, procs: Processes, env: dict[str, str]) -> None:
        argv = [sys.executable, __file__, "load"]
        self.proc = procs.spawn(argv, env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, job: dict[str, Any]) -> LoadResult:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], float(job["timeout_s"]) + 15)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"the load generator did not answer (exit {self.proc.poll()})")
        return LoadResult(**json.loads(line))


# -- subjects and samples ---------------------------------------------------------------------


@dataclass
class Subject:
    name: str
    port: int
    pid: int
    nonstream: bytes
    stream: bytes


def raw_request(port: int, body: dict[str, Any], token: str) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def direct_body(stream: bool) -> dict[str, Any]:
    """What the gateway sends upstream for the bench prompt, so both paths carry the same."""
    messages = [
        {"role": "system", "content": "You are a concise assistant for engineers."},
        {"role": "user", "content": "Say hello."},
    ]
    body: dict[str, Any] = {"model": "fake", "messages": messages, "temperature": 0.2}
    return {**body, "stream": True} if stream else body


def gateway_body(stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": PROMPT_KEY,
        "variables": {"audience": "engineers"},
        "messages": [{"role": "user", "content": "Say hello."}],
    }
    return {**body, "stream": True} if stream else body


def subject_for(name: str, port: int, pid: int, gateway_key: str | None) -> Subject:
    if gateway_key is None:
        return Subject(
            name,
            port,
            pid,
            raw_request(port, direct_body(False), "x"),
            raw_request(port, direct_body(True), "x"),
        )
    return Subject(
        name,
        port,
        pid,
        raw_request(port, gateway_body(False), gateway_key),
        raw_request(port, gateway_body(True), gateway_key),
    )


@dataclass
class Sample:
    """One job against one subject. For the direct subject, the server is the fake."""

    subject: str
    kind: str
    requests: int
    elapsed_s: float
    server_cpu_s: float
    fake_cpu_s: float
    client_cpu_s: float
    p50_ms: float | None
    first_chunk_p50_ms: float | None
    server_threads_s: dict[str, float] = field(default_factory=dict)
    server_waited_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def cpu_ms(self) -> float:
        """Server CPU per request."""
        return self.server_cpu_s / self.requests * 1000 if self.requests else 0.0

    @property
    def busy(self) -> float:
        """Server CPU seconds per wall second (1.0 = one core)."""
        return self.server_cpu_s / self.elapsed_s if self.elapsed_s else 0.0


class Bench:
    def __init__(self, client: LoadClient, fake_pid: int) -> None:
        self.client = client
        self.fake_pid = fake_pid

    def measure(
        self,
        subject: Subject,
        kind: str,
        *,
        stream: bool,
        concurrency: int,
        requests: int,
        duration_s: float | None = None,
    ) -> Sample:
        record = concurrency == 1
        job = {
            "port": subject.port,
            "raw": (subject.stream if stream else subject.nonstream).decode("latin-1"),
            "concurrency": concurrency,
            "requests": requests,
            "duration_s": duration_s,
            "timeout_s": (duration_s or 0) + JOB_TIMEOUT_S,
            "record": record,
        }
        server_before = cpu_reading(subject.pid)
        fake_before = cpu_reading(self.fake_pid)
        result = self.client.run(job)
        server_after = cpu_reading(subject.pid)
        fake_cpu = cpu_reading(self.fake_pid).since(fake_before)
        if result.errors:
            raise RuntimeError(
                f"{subject.name} {kind}: {result.errors} failed requests;"
                f" first: {result.first_error}"
            )
        return Sample(
            subject=subject.name,
            kind=kind,
            requests=result.ok,
            elapsed_s=result.elapsed_s,
            server_cpu_s=server_after.since(server_before),
            fake_cpu_s=fake_cpu,
            client_cpu_s=result.client_cpu_s,
            p50_ms=statistics.median(result.latencies_ms) if record else None,
            first_chunk_p50_ms=statistics.median(result.first_byte_ms) if record else None,
            server_threads_s=server_after.by_thread(server_before),
            server_waited_s=(server_after.waited_ns - server_before.waited_ns) / 1e9,
        )


def rotated(items: list[Subject], round_index: int) -> list[Subject]:
    shift = round_index % len(items)
    return items[shift:] + items[:shift]


Metric = Callable[[Sample], float | None]


def values_of(samples: list[Sample], subject: str, kind: str, metric: Metric) -> list[float]:
    found = (metric(s) for s in samples if s.subject == subject and s.kind == kind)
    return [v for v in found if v is not None]


def median_of(samples: list[Sample], subject: str, kind: str, metric: Metric) -> float:
    return statistics.median(values_of(samples, subject, kind, metric))


def paired_delta(samples: list[Sample], subject: str, kind: str, metric: Metric) -> float:
    """Median over rounds of (subject - direct), each pair measured in the same round."""
    mine = values_of(samples, subject, kind, metric)
    direct = values_of(samples, "direct", kind, metric)
    return statistics.median(a - b for a, b in zip(mine, direct))


def cpu_ms(s: Sample) -> float:
    return s.cpu_ms


def p50_ms(s: Sample) -> float | None:
    return s.p50_ms


def first_chunk_ms(s: Sample) -> float | None:
    return s.first_chunk_p50_ms


def rps(s: Sample) -> float:
    return s.rps


def busy(s: Sample) -> float:
    return s.busy


def client_busy(s: Sample) -> float:
    return s.client_cpu_s / s.elapsed_s if s.elapsed_s else 0.0


def waited(s: Sample) -> float:
    """The share of wall time the server's threads spent ready to run but without a CPU."""
    return s.server_waited_s / s.elapsed_s if s.elapsed_s else 0.0


# -- set-up -----------------------------------------------------------------------------------

BENCH_PROMPT = """\
---
model: fast
description: Gateway benchmark prompt.
temperature: 0.2
chat: true
---
<!-- role:system -->
You are a concise assistant for {{ audience }}.
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = (str(PROJECT_ROOT), env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["FAKE_KEY"] = "x"
    for name in ("LLMKIT_REPO", "LLMKIT_DATA_DIR", "LLMKIT_HOST", "LLMKIT_PORT"):
        env.pop(name, None)
    return env


def run_checked(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def make_repository(root: Path, fake_port: int, env: dict[str, str]) -> tuple[Path, str]:
    """A prompt repository with the bench prompt committed, and a run-scope key for it."""
    repo = root / "repo"
    llmkit = [sys.executable, "-m", "llmkit"]
    run_checked([*llmkit, "init", str(repo)], env)
    (repo / "llmkit.yaml").write_text(
        "models:\n  default:\n    model: echo\n  fast:\n    model: openai/fake\n"
        f"    api_base: http://{HOST}:{fake_port}/v1\n    api_key_env: FAKE_KEY\n",
        encoding="utf-8",
    )
    (repo / "prompts" / f"{PROMPT_KEY}.md").write_text(BENCH_PROMPT, encoding="utf-8")
    run_checked(["git", "add", "-A"], env, cwd=repo)
    run_checked(["git", *GIT_IDENTITY, "commit", "-q", "-m", "Add the bench prompt"], env, cwd=repo)
    key = run_checked([*llmkit, "keys", "create", "bench", "--repo", str(repo)], env)
    return repo, key.strip().splitlines()[-1]


def start_fake(procs: Processes, env: dict[str, str]) -> tuple[subprocess.Popen[Any], int]:
    proc = procs.spawn([sys.executable, __file__, "fake"], env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT_S)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("PORT "):
        raise RuntimeError(f"the fake upstream did not start: {line!r}")
    return proc, int(line.split()[1])


def gateway_argv(repo: Path, port: int, launcher: Path | None) -> list[str]:
    """`python -m llmkit serve ...`, or `python LAUNCHER serve ...` to compare another build."""
    program = [str(launcher)] if launcher else ["-m", "llmkit"]
    return [
        sys.executable,
        *program,
        "serve",
        "--repo",
        str(repo),
        "--port",
        str(port),
        "--no-watch",
        "--log-level",
        "warning",
    ]


def floor_argv(fake_port: int, port: int, client: str) -> list[str]:
    return [
        sys.executable,
        __file__,
        "floor",
        "--port",
        str(port),
        "--client",
        client,
        "--upstream",
        f"http://{HOST}:{fake_port}/v1",
    ]


@dataclass
class Start:
    name: str
    ready_s: float
    idle_rss_mib: float
    litellm_files: list[str]


def start_server(
    procs: Processes, name: str, argv: list[str], port: int, env: dict[str, str]
) -> tuple[subprocess.Popen[Any], Start]:
    started = time.perf_counter()
    proc = procs.spawn(argv, env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ready = wait_ready(proc, port, started)
    time.sleep(0.5)  # idle: let start-up settle before reading memory
    return proc, Start(name, ready, memory_mib(proc.pid)["VmRSS"], litellm_mapped(proc.pid))


def run_log_rows(repo: Path) -> int:
    uri = f"file:{repo / '.llmkit' / 'llmkit.db'}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM run_log").fetchone()[0])
    finally:
        conn.close()


# -- the profile ------------------------------------------------------------------------------

PACKAGE_GROUPS = (
    ("llmkit", "/llmkit/"),
    ("fastapi", "/fastapi/"),
    ("starlette", "/starlette/"),
    ("uvicorn", "/uvicorn/"),
    ("httpx", "/httpx/"),
    ("httpcore", "/httpcore/"),
    ("anyio", "/anyio/"),
    ("h11", "/h11/"),
    ("pydantic", "/pydantic"),
    ("asyncio", "/asyncio/"),
    ("json", "/json/"),
    ("sqlite3", "/sqlite3/"),
    ("logging", "/logging/"),
    ("stdlib (other)", "/lib/python3"),
)


def package_of(filename: str) -> str:
    if filename == "~":
        return "C functions (sockets, poll, locks, json, ...)"
    return next((group for group, marker in PACKAGE_GROUPS if marker in filename), "other")


def where(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    if filename == "~":
        return function
    at = filename.rfind("/llmkit/")
    short = filename[at + 1 :] if at >= 0 else "/".join(filename.split("/")[-2:])
    return f"{short}:{line} {function}"


def profile_report(
    path: Path, requests: int, title: str, top: int = 25
) -> tuple[str, dict[str, Any]]:
    """Own time by package, llmkit's functions by cumulative time, and every function by own
    time, all per request. cProfile counts each resumption of a coroutine as a call."""
    entries = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values())
    groups: dict[str, float] = {}
    for key, (_, _, tt, _, _) in entries.items():
        groups[package_of(key[0])] = groups.get(package_of(key[0]), 0.0) + tt
    per = 1e6 / requests
    own = [(k, v) for k, v in entries.items() if "/llmkit/" in k[0]]
    own.sort(key=lambda kv: -kv[1][3])
    lines = [
        (
            f"== {title}: {requests} requests,"
            f" {total * per:.0f} us/request of profiled event-loop time"
        ),
        "   (cProfile inflates it 2-3x: compare shares, not absolute figures)",
        "",
        "Own time by package:",
    ]
    for group, tt in sorted(groups.items(), key=lambda item: -item[1]):
        lines.append(f"  {group:<46} {tt * per:8.1f} us/req  {tt / total:6.1%}")
    lines += ["", f"llmkit functions by cumulative time (top {top}):"]
    for key, (_, nc, tt, ct, _) in own[:top]:
        lines.append(
            f"  {ct * per:8.1f} cum {tt * per:7.1f} own us/req"
            f" {nc / requests:6.1f} calls/req  {where(key)}"
        )
    lines += ["", f"All functions by own time (top {top}):"]
    for key, (_, nc, tt, ct, _) in sorted(entries.items(), key=lambda kv: -kv[1][2])[:top]:
        lines.append(
            f"  {tt * per:8.1f} own {ct * per:8.1f} cum us/req"
            f" {nc / requests:6.1f} calls/req  {where(key)}"
        )
    summary = {
        "title": title,
        "requests": requests,
        "profiled_us_per_request": total * per,
        "packages_us_per_request": {g: tt * per for g, tt in groups.items()},
        "llmkit_by_cumulative": [
            {
                "where": where(k),
                "cum_us": v[3] * per,
                "own_us": v[2] * per,
                "calls": v[1] / requests,
            }
            for k, v in own[:top]
        ],
    }
    return "\n".join(lines), summary


@dataclass
class Profile:
    text: str = ""
    summaries: list[dict[str, Any]] = field(default_factory=list)
    litellm_imported: bool | None = None


def run_profile(
    procs: Processes,
    env: dict[str, str],
    repo: Path,
    key: str,
    bench: Bench,
    work: Path,
    requests: int,
    concurrency: int,
) -> Profile:
    port = free_port()
    dumps = [work / "profile_nonstream.prof", work / "profile_stream.prof"]
    modules_out = work / "profile_modules.json"
    argv = [
        sys.executable,
        __file__,
        "profiled-serve",
        "--repo",
        str(repo),
        "--port",
        str(port),
        "--modules-out",
        str(modules_out),
        "--out",
        *map(str, dumps),
    ]
    started = time.perf_counter()
    proc = procs.spawn(argv, env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    profile = Profile()
    reports = []
    try:
        wait_ready(proc, port, started)
        subject = subject_for("profiled", port, proc.pid, key)
        for dump, stream in zip(dumps, (False, True)):
            bench.measure(subject, "warm-up", stream=stream, concurrency=8, requests=300)
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(0.2)
            sample = bench.measure(
                subject, "profile", stream=stream, concurrency=concurrency, requests=requests
            )
            os.kill(proc.pid, signal.SIGUSR2)
            deadline = time.perf_counter() + 30
            while not dump.exists() and time.perf_counter() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # the dump is written by then
            title = f"{'stream' if stream else 'non-stream'}, c={concurrency}"
            text, summary = profile_report(dump, sample.requests, title)
            reports.append(text)
            profile.summaries.append(summary)
    finally:
        procs.end(proc, signal.SIGINT)
    profile.text = "\n\n".join(reports)
    if modules_out.exists():
        profile.litellm_imported = json.loads(modules_out.read_text())["litellm_imported"]
    return profile


# -- llmkit's own steps, timed in this process ------------------------------------------------


def step_timings(repo: Path, key: str, loops: int = 2000) -> dict[str, float]:
    """Microseconds per call of llmkit's per-request steps, without a profiler. Each step is
    guarded: one that no longer exists costs its line, not the run."""
    sys.path.insert(0, str(PROJECT_ROOT))
    os.environ.setdefault("FAKE_KEY", "x")
    from llmkit import providers
    from llmkit.execute import Executor
    from llmkit.providers import openai_wire
    from llmkit.providers.routing import resolve_target
    from llmkit.runlog_record import RunRecord, new_trace_id, to_row
    from llmkit.workspace import Workspace

    timings: dict[str, float] = {}

    def timed(name: str, step: Callable[[], Any]) -> None:
        try:
            step()
            started = time.perf_counter()
            for _ in range(loops):
                step()
            timings[name] = (time.perf_counter() - started) / loops * 1e6
        except Exception as exc:
            timings[name] = float("nan")
            print(f"  step {name}: {type(exc).__name__}: {exc}", file=sys.stderr)

    ws = Workspace.open(str(repo), watch=False)
    try:
        ws.index.sync()
        executor = Executor(ws, ws.models, ws.runlog)
        body = gateway_body(False)
        ex = executor.prepare(body)
        answer = json.loads(completion_body())
        usage = providers.usage_of(answer)
        target = resolve_target(ex.call, ex.call.model, inherit=True)
        record = RunRecord(
            trace_id=ex.trace_id,
            prompt_key=ex.key,
            version_number=ex.version.number,
            version_sha=ex.version.sha,
            model=ex.call.model,
            request={"messages": ex.call.messages, "params": ex.call.params},
            response=answer,
            http_status=200,
            input_tokens=21,
            output_tokens=6,
            latency_ms=1.0,
            source="api",
        )
        timed("keys.verify (cached)", lambda: ws.keys.verify(key))
        timed("json.loads(request body)", lambda: json.loads(json.dumps(body)))
        timed("Executor.prepare", lambda: executor.prepare(body))
        timed("  index.version (served)", lambda: ws.index.version(PROMPT_KEY, None))
        timed("  models.resolve(alias)", lambda: ws.models.resolve("fast"))
        timed("  PromptFile.prompt_type", lambda: ex.prompt.prompt_type)
        timed("  runlog.new_trace_id", new_trace_id)
        timed("routing.resolve_target", lambda: resolve_target(ex.call, target.model, inherit=True))
        timed(
            "openai_wire._payload", lambda: openai_wire._payload(target, ex.call, streaming=False)
        )
        timed("json.loads(upstream answer)", lambda: json.loads(completion_body()))
        timed("providers.cost_of", lambda: providers.cost_of(ex.call.model, usage))
        timed("runlog_record.to_row", lambda: to_row(record, ws.runlog.field_max_bytes))
        ws.runlog.start()
        timed(
            "RunLog.log, writer running",
            lambda: ws.runlog.log(replace(record, trace_id=new_trace_id())),
        )
        ws.runlog.flush()
        timed("Execution.headers", ex.headers)
        timed("json.dumps(answer)", lambda: json.dumps(answer).encode())
    finally:
        ws.close()
    return timings


# -- the report -------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: float | None
    baseline: float | None
    delta: str
    target: str
    passed: bool | None
    unit: str = ""
    note: str = ""


def shown(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} {unit}" if unit == "req/s" else f"{value:.2f} {unit}".strip()


def print_columns(table: list[tuple[str, ...]]) -> None:
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for index, line in enumerate(table):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def print_rows(rows: list[Row]) -> None:
    verdict = {None: "-", True: "PASS", False: "FAIL"}
    table = [("figure", "value", "baseline", "delta/ratio", "target", "pass")]
    table += [
        (
            r.figure,
            shown(r.value, r.unit),
            shown(r.baseline, r.unit),
            r.delta,
            r.target,
            verdict[r.passed],
        )
        for r in rows
    ]
    print_columns(table)
    for r in rows:
        if r.note:
            print(f"  * {r.figure}: {r.note}")


def print_subjects(samples: list[Sample], names: list[str], concurrency: int) -> None:
    """Every subject side by side, medians over rounds; `added` is paired with direct."""
    table = [
        (
            "subject",
            "cpu/req c=1",
            f"cpu/req c={concurrency}",
            "cpu/req stream",
            "p50 c=1",
            "added",
            "1st chunk",
            "added",
            f"req/s c={concurrency}",
            "busy",
            "no CPU",
            "client",
        )
    ]
    for name in names:

        def med(kind: str, metric: Metric, name: str = name) -> float:
            return median_of(samples, name, kind, metric)

        def added(kind: str, metric: Metric, name: str = name) -> str:
            return "-" if name == "direct" else f"+{paired_delta(samples, name, kind, metric):.3f}"

        table.append(
            (
                name,
                f"{med('c1', cpu_ms):.3f} ms",
                f"{med('cN', cpu_ms):.3f} ms",
                f"{med('c1-stream', cpu_ms):.3f} ms",
                f"{med('c1', p50_ms):.3f} ms",
                added("c1", p50_ms),
                f"{med('c1-stream', first_chunk_ms):.3f} ms",
                added("c1-stream", first_chunk_ms),
                f"{med('cN', rps):.0f}",
                f"{med('cN', busy):.0%}",
                f"{med('cN', waited):.0%}",
                f"{med('cN', client_busy):.0%}",
            )
        )
    print_columns(table)
    print(
        f"  direct: the fake upstream's CPU. At c={concurrency}: busy = the server's CPU seconds"
        " per wall second (100% = one core); no CPU = time its threads were ready to run but"
        " waited for a core (other load on the machine); client = the load generator's CPU."
    )


def print_threads(samples: list[Sample], subject: str) -> None:
    print(
        f"{subject} CPU by thread, ms/request (threads named 'python' are the run-log writer "
        "and the AnyIO threadpool that runs sync FastAPI dependencies):"
    )
    for kind in KINDS:
        mine = [s for s in samples if s.subject == subject and s.kind == kind and s.requests]
        names = sorted({name for s in mine for name in s.server_threads_s})
        parts = []
        for name in names:
            share = statistics.median(s.server_threads_s.get(name, 0.0) / s.requests for s in mine)
            parts.append(f"{name} {share * 1000:.3f}")
        print(f"  {kind:<10} " + ", ".join(parts))


def build_rows(
    samples: list[Sample],
    starts: list[Start],
    after: dict[str, float],
    floor_after: dict[str, float],
    mapped_after: list[str],
    profile: Profile,
    rows_logged: int,
    gateway_requests: int,
) -> list[Row]:
    def med(subject: str, kind: str, metric: Metric) -> float:
        return median_of(samples, subject, kind, metric)

    def per_round(kind: str, metric: Metric, digits: int = 2) -> str:
        values = values_of(samples, "gateway", kind, metric)
        return "rounds " + ", ".join(f"{v:.{digits}f}" for v in values)

    rows: list[Row] = []
    for kind, label, targeted in (
        ("c1", "c=1", True),
        ("cN", "c=N", True),
        ("c1-stream", "c=1, stream", False),
    ):
        value, baseline = med("gateway", kind, cpu_ms), med("direct", kind, cpu_ms)
        rows.append(
            Row(
                f"1. gateway CPU/request ({label})",
                value,
                baseline,
                f"x{value / baseline:.0f} of the fake" if baseline else "-",
                f"<= {CPU_TARGET_MS} ms" if targeted else "-",
                value <= CPU_TARGET_MS if targeted else None,
                "ms",
                per_round(kind, cpu_ms) + "; baseline: the fake's CPU/request, hit directly",
            )
        )
    added = paired_delta(samples, "gateway", "c1", p50_ms)
    rows.append(
        Row(
            "2. p50 latency c=1",
            med("gateway", "c1", p50_ms),
            med("direct", "c1", p50_ms),
            f"+{added:.2f} ms",
            f"added <= {ADDED_P50_TARGET_MS} ms",
            added <= ADDED_P50_TARGET_MS,
            "ms",
            per_round("c1", p50_ms),
        )
    )
    added = paired_delta(samples, "gateway", "c1-stream", first_chunk_ms)
    rows.append(
        Row(
            "2. first streamed chunk p50 c=1",
            med("gateway", "c1-stream", first_chunk_ms),
            med("direct", "c1-stream", first_chunk_ms),
            f"+{added:.2f} ms",
            f"added <= {ADDED_FIRST_CHUNK_TARGET_MS} ms",
            added <= ADDED_FIRST_CHUNK_TARGET_MS,
            "ms",
            per_round("c1-stream", first_chunk_ms),
        )
    )
    throughput = med("gateway", "cN", rps)
    low, high = throughput / LITELLM_PROXY_RPS[1], throughput / LITELLM_PROXY_RPS[0]
    rows.append(
        Row(
            "3. throughput c=N",
            throughput,
            med("direct", "cN", rps),
            f"x{low:.1f}-{high:.1f} of LiteLLM",
            f">= {THROUGHPUT_TARGET_RPS:.0f} req/s",
            throughput >= THROUGHPUT_TARGET_RPS,
            "req/s",
            per_round("cN", rps, 0) + "; baseline: direct to the fake with the same client",
        )
    )
    gateway_starts = [s for s in starts if s.name == "gateway"]
    floor_starts = [s for s in starts if s.name == "floor"]
    ready = statistics.median(s.ready_s for s in gateway_starts)
    floor_ready = statistics.median(s.ready_s for s in floor_starts)
    rows.append(
        Row(
            "4. start to ready",
            ready,
            floor_ready,
            f"+{ready - floor_ready:.2f} s",
            f"<= {START_TARGET_S} s",
            ready <= START_TARGET_S,
            "s",
            "runs "
            + ", ".join(f"{s.ready_s:.2f}" for s in gateway_starts)
            + " (the first creates the database); baseline: the httpx floor proxy",
        )
    )
    idle = statistics.median(s.idle_rss_mib for s in gateway_starts)
    floor_idle = statistics.median(s.idle_rss_mib for s in floor_starts)
    rows.append(
        Row(
            "4. RSS idle after start",
            idle,
            floor_idle,
            f"+{idle - floor_idle:.1f} MiB",
            f"<= {RSS_TARGET_MIB:.0f} MiB",
            idle <= RSS_TARGET_MIB,
            "MiB",
        )
    )
    rows.append(
        Row(
            "4. RSS after load",
            after["VmRSS"],
            floor_after["VmRSS"],
            f"+{after['VmRSS'] - floor_after['VmRSS']:.1f} MiB",
            f"<= {RSS_TARGET_MIB:.0f} MiB",
            after["VmRSS"] <= RSS_TARGET_MIB,
            "MiB",
            f"peak (VmHWM) {after['VmHWM']:.1f} MiB",
        )
    )
    mapped = sorted({p for s in gateway_starts for p in s.litellm_files} | set(mapped_after))
    loaded = bool(mapped) or bool(profile.litellm_imported)
    modules = {True: "litellm present", False: "no litellm", None: "not checked"}
    rows.append(
        Row(
            "4. litellm loaded in the gateway",
            None,
            None,
            "yes" if loaded else "no",
            "no",
            not loaded,
            note=f"/proc/<pid>/maps: {mapped or 'no litellm, tiktoken or tokenizers file'}; "
            f"sys.modules of the profiled server at exit: {modules[profile.litellm_imported]}",
        )
    )
    rows.append(
        Row(
            "run log rows = gateway requests",
            float(rows_logged),
            float(gateway_requests),
            f"{rows_logged - gateway_requests:+.0f}",
            "equal",
            rows_logged == gateway_requests,
        )
    )
    return rows


# -- the run ----------------------------------------------------------------------------------


@contextmanager
def ended_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run through its clean-up, like Ctrl-C."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_main(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="llmkit-gateway-bench-"))
    try:
        with ended_by_signals():
            return (run_cpu_only if args.cpu_only else run)(args, procs, work)
    finally:
        procs.end_all()
        if args.keep:
            print(f"kept {work}")
        else:
            subprocess.run(["rm", "-rf", str(work)], check=False)


Running = dict[str, tuple[subprocess.Popen[Any], int]]


def measure_starts(
    args: argparse.Namespace, procs: Processes, env: dict[str, str], repo: Path, fake_port: int
) -> tuple[list[Start], Running]:
    """Figure 4: start to ready and idle memory, the gateway and the floor alternating. The
    last server of each kind stays up for the load."""
    starts: list[Start] = []
    kept: Running = {}
    for index in range(args.start_rounds):
        for name in ("gateway", "floor") if index % 2 == 0 else ("floor", "gateway"):
            port = free_port()
            argv = (
                gateway_argv(repo, port, args.serve_launcher)
                if name == "gateway"
                else floor_argv(fake_port, port, "httpx")
            )
            proc, start = start_server(procs, name, argv, port, env)
            starts.append(start)
            print(
                f"  start {name}: {start.ready_s:.2f} s to ready,"
                f" {start.idle_rss_mib:.1f} MiB idle",
                flush=True,
            )
            if index == args.start_rounds - 1:
                kept[name] = (proc, port)
            else:
                procs.end(proc)
    return starts, kept


def run(args: argparse.Namespace, procs: Processes, work: Path) -> int:
    env = child_env()
    fake, fake_port = start_fake(procs, env)
    repo, key = make_repository(work, fake_port, env)
    print(f"fake upstream on port {fake_port}, repository {repo}", flush=True)

    starts, kept = measure_starts(args, procs, env, repo, fake_port)
    gateway, gateway_port = kept["gateway"]
    floor, floor_port = kept["floor"]
    subjects = [
        subject_for("direct", fake_port, fake.pid, None),
        subject_for("gateway", gateway_port, gateway.pid, key),
        subject_for("floor", floor_port, floor.pid, None),
    ]
    if not args.no_aiohttp_floor:
        port = free_port()
        argv = floor_argv(fake_port, port, "aiohttp")
        proc, _ = start_server(procs, "floor-aiohttp", argv, port, env)
        subjects.append(subject_for("floor-aiohttp", port, proc.pid, None))

    bench = Bench(LoadClient(procs, env), fake.pid)
    gateway_requests = 0
    for subject in subjects:
        for stream in (False, True):
            sample = bench.measure(
                subject, "warm-up", stream=stream, concurrency=4, requests=args.warmup
            )
            gateway_requests += sample.requests if subject.name == "gateway" else 0

    samples: list[Sample] = []
    jobs = (  # kind, stream, concurrency, requests, seconds
        ("c1", False, 1, args.latency_requests, None),
        ("c1-stream", True, 1, args.stream_requests, None),
        ("cN", False, args.concurrency, args.throughput_cap, args.throughput_s),
    )
    for index in range(args.rounds):
        for subject in rotated(subjects, index):
            for kind, stream, concurrency, requests, seconds in jobs:
                sample = bench.measure(
                    subject,
                    kind,
                    stream=stream,
                    concurrency=concurrency,
                    requests=requests,
                    duration_s=seconds,
                )
                samples.append(sample)
                gateway_requests += sample.requests if subject.name == "gateway" else 0
        print(f"  round {index + 1}:", flush=True)
        for subject in subjects:
            latest = samples[-len(jobs) * len(subjects) :]
            mine = {s.kind: s for s in latest if s.subject == subject.name}
            print(
                f"    {subject.name:<14} p50 {mine['c1'].p50_ms:.3f} ms, first chunk "
                f"{mine['c1-stream'].first_chunk_p50_ms:.3f} ms, {mine['cN'].rps:.0f} req/s "
                f"at c={args.concurrency}, {mine['c1'].cpu_ms:.3f} ms CPU/req",
                flush=True,
            )

    time.sleep(1.0)  # the run log writes in batches
    rows_logged = run_log_rows(repo)
    after, mapped_after = memory_mib(gateway.pid), litellm_mapped(gateway.pid)
    floor_after = memory_mib(floor.pid)

    profile = Profile()
    if not args.no_profile:
        print("profiling the gateway under load ...", flush=True)
        profile = run_profile(
            procs, env, repo, key, bench, work, args.profile_requests, args.profile_concurrency
        )
    try:
        steps = step_timings(repo, key)
    except Exception as exc:  # llmkit moved on; the figures above still stand
        print(f"step timings failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        steps = {}

    rows = build_rows(
        samples, starts, after, floor_after, mapped_after, profile, rows_logged, gateway_requests
    )
    print(f"\nc=N is c={args.concurrency}\n")
    print_rows(rows)
    print("\nAll subjects (medians over rounds):")
    print_subjects(samples, [s.name for s in subjects], args.concurrency)
    proxied = [s for s in samples if s.kind == "cN" and s.subject != "direct"]
    fake_busy = max(s.fake_cpu_s / s.elapsed_s for s in proxied)
    print(f"  the fake upstream used at most {fake_busy:.0%} of a core behind a proxy")
    print()
    print_threads(samples, "gateway")
    print("\nllmkit steps in-process (us per call, no profiler):")
    for name, us in steps.items():
        print(f"  {us:8.1f}  {name}")
    if profile.text:
        (args.out / "gateway_profile.txt").write_text(profile.text + "\n", encoding="utf-8")
        print("\n" + profile.text)
    results = {
        "rows": [asdict(r) for r in rows],
        "samples": [asdict(s) | {"rps": s.rps, "cpu_ms": s.cpu_ms} for s in samples],
        "starts": [asdict(s) for s in starts],
        "memory_after_load_mib": after,
        "floor_memory_after_load_mib": floor_after,
        "run_log_rows": rows_logged,
        "gateway_requests": gateway_requests,
        "steps_us": steps,
        "profile": profile.summaries,
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    (args.out / "gateway.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"\nresults in {args.out / 'gateway.json'}")
    return 0 if all(r.passed is not False for r in rows) else 1


def run_cpu_only(args: argparse.Namespace, procs: Processes, work: Path) -> int:
    """Figure 1 alone: server CPU per request at c=1 and c=N, for the gateway and, with
    --baseline-launcher, another build of it, measured in the same rounds in rotated order."""
    env = child_env()
    fake, fake_port = start_fake(procs, env)
    repo, key = make_repository(work, fake_port, env)
    subjects = [subject_for("direct", fake_port, fake.pid, None)]
    launchers = [("gateway", args.serve_launcher)]
    if args.baseline_launcher:
        launchers.append(("baseline", args.baseline_launcher))
    for name, launcher in launchers:
        port = free_port()
        proc, _ = start_server(procs, name, gateway_argv(repo, port, launcher), port, env)
        subjects.append(subject_for(name, port, proc.pid, key))
    bench = Bench(LoadClient(procs, env), fake.pid)
    for subject in subjects:
        bench.measure(subject, "warm-up", stream=False, concurrency=4, requests=args.warmup)
    samples: list[Sample] = []
    for index in range(args.rounds):
        for subject in rotated(subjects, index):
            samples.append(
                bench.measure(
                    subject, "c1", stream=False, concurrency=1, requests=args.latency_requests
                )
            )
            samples.append(
                bench.measure(
                    subject,
                    "cN",
                    stream=False,
                    concurrency=args.concurrency,
                    requests=args.throughput_cap,
                    duration_s=args.throughput_s,
                )
            )
        print(f"  round {index + 1} done", flush=True)
    table = [
        (
            "subject",
            "cpu/req c=1",
            f"cpu/req c={args.concurrency}",
            "rounds c=1",
            f"rounds c={args.concurrency}",
        )
    ]
    for subject in subjects:

        def rounds(kind: str, subject: Any = subject) -> str:
            return ", ".join(f"{v:.3f}" for v in values_of(samples, subject.name, kind, cpu_ms))

        table.append(
            (
                subject.name,
                f"{median_of(samples, subject.name, 'c1', cpu_ms):.3f} ms",
                f"{median_of(samples, subject.name, 'cN', cpu_ms):.3f} ms",
                rounds("c1"),
                rounds("cN"),
            )
        )
    print_columns(table)
    figures = {
        s.name: {kind: median_of(samples, s.name, kind, cpu_ms) for kind in ("c1", "cN")}
        for s in subjects
    }
    (args.out / "gateway_cpu.json").write_text(
        json.dumps(
            {
                "cpu_ms_per_request": figures,
                "samples": [asdict(s) for s in samples],
                "settings": {k: str(v) for k, v in vars(args).items()},
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    print(f"results in {args.out / 'gateway_cpu.json'}")
    return (
        0
        if all(
            f["c1"] <= CPU_TARGET_MS and f["cN"] <= CPU_TARGET_MS
            for name, f in figures.items()
            if name == "gateway"
        )
        else 1
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    option = parser.add_argument
    option("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    option("--start-rounds", type=int, default=3, help="starts of each server kind (default 3)")
    option("--warmup", type=int, default=200, help="warm-up requests per subject and mode")
    option("--latency-requests", type=int, default=500, help="c=1 requests per round")
    option("--stream-requests", type=int, default=300, help="c=1 streamed requests per round")
    option("--concurrency", type=int, default=32, help="throughput concurrency (default 32)")
    option("--throughput-s", type=float, default=3.0, help="seconds per throughput job")
    option("--throughput-cap", type=int, default=100_000, help="most requests per throughput job")
    option("--profile-requests", type=int, default=2000, help="requests per profile window")
    option("--profile-concurrency", type=int, default=32, help="concurrency while profiling")
    option("--no-profile", action="store_true", help="skip the cProfile run")
    option("--no-aiohttp-floor", action="store_true", help="skip the aiohttp floor proxy")
    option(
        "--serve-launcher",
        type=Path,
        help="run `python SCRIPT serve ...` as the gateway, not `python -m llmkit serve ...`",
    )
    option("--out", type=Path, default=BENCH_DIR / "results", help="results folder")
    option("--keep", action="store_true", help="keep the temporary folder")
    option(
        "--cpu-only",
        action="store_true",
        help="only the gateway's CPU per request, non-streamed, at c=1 and c=N",
    )
    option(
        "--baseline-launcher",
        type=Path,
        help="with --cpu-only: also measure `python SCRIPT serve ...` in the same rounds",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_run_options(parser)
    sub = parser.add_subparsers(dest="command")
    add_run_options(sub.add_parser("run", help="the benchmark (the default)"))
    fake = sub.add_parser("fake", help="the fake upstream; prints PORT n")
    fake.add_argument("--port", type=int, default=0)
    sub.add_parser("load", help="the load generator: JSON jobs on stdin, results on stdout")
    floor = sub.add_parser("floor", help="the bare proxy on uvicorn")
    floor.add_argument("--port", type=int, required=True)
    floor.add_argument("--upstream", required=True)
    floor.add_argument("--client", choices=sorted(FORWARDERS), default="httpx")
    profiled = sub.add_parser("profiled-serve", help="llmkit serve under cProfile")
    profiled.add_argument("--repo", required=True)
    profiled.add_argument("--port", type=int, required=True)
    profiled.add_argument("--modules-out", required=True)
    profiled.add_argument("--out", nargs="+", required=True)
    args = parser.parse_args(argv)
    commands = {
        "fake": fake_main,
        "load": load_main,
        "floor": floor_main,
        "profiled-serve": profiled_serve_main,
    }
    return commands.get(args.command, run_main)(args)


if __name__ == "__main__":
    sys.exit(main())
