"""Clients that do not behave: they stall, reset, leave while the upstream thinks, send their
request slowly. A real `llmkit serve` between raw sockets and the fake upstream; every wait is
bounded and the assertions are on outcomes (what the upstream saw, what the run log says, what
the other clients got), never on how long something took.

Raw sockets that send a streaming request and never read stand for every client that stops
reading, including one that never reads the response headers: the headers are one more write
into buffers that are already full.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from llmkit import providers
from llmkit.config import Settings
from llmkit.errors import ConfigError, UpstreamError, UpstreamPoolFull
from llmkit.providers import ProviderCall
from tests.api_fixtures import running_api
from tests.exec_fixtures import (
    FAKE_KEY_ENV,
    FAKE_KEY_VALUE,
    build_exec_repo,
    read_run_log,
    server_env,
    sse_events,
)
from tests.fake_upstream import FakeUpstream, RecordedRequest
from tests.helpers import ServerProcess, poll, start_server

WAIT_S = 60.0
CHUNK_CHARS = 16 * 1024
ANSWER = "".join(f"{i:07d} " for i in range(1_000_000))  # 8 MB, every prefix distinct
ANSWER_USAGE = {"prompt_tokens": 1, "completion_tokens": 1_000_000, "total_tokens": 1_000_001}
NOT_KEPT = re.compile(r"\[\.\.\. (\d+) more characters not kept\]$")
# A client that reads nothing, with a small receive buffer and segment size (so that the kernel
# buffers little for it: a few dozen KB, not megabytes), is blocked once this much waits for it.
BLOCKED_BYTES = 48 * 1024
# A burst well over what the kernel and the gateway's buffers hold for such a client.
BURST_CHUNKS = 2 * 1024 * 1024 // CHUNK_CHARS


# -- helpers ------------------------------------------------------------------------------------


def stream_body(model: str = "static", text: str = "hi", stream: bool = True) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}


def raw_request(server: ServerProcess, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {server.admin_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def silent_client(server: ServerProcess, body: dict[str, Any]) -> socket.socket:
    """A socket that sends its request and then reads nothing (see BLOCKED_BYTES)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1024)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(raw_request(server, body))
    return sock


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a client that crashes or is killed does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class PeakRss:
    """The highest VmRSS of a process, sampled in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = vm_rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, vm_rss_mib(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return max(self.peak, vm_rss_mib(self.pid))


def sent_chars(response: str | None) -> tuple[str, int]:
    """(the text kept in a run log row's response, stored as JSON; how many characters were
    sent in all)."""
    text = json.loads(response) if response else ""
    assert isinstance(text, str)
    match = NOT_KEPT.search(text)
    if match is None:
        return text, len(text)
    kept = text[: match.start()]
    return kept, len(kept) + int(match.group(1))


def rows_by_status(server: ServerProcess) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in read_run_log(server.db_path):
        rows.setdefault(row["status"], []).append(row)
    return rows


def settled(requests: list[RecordedRequest]) -> bool:
    return all(r.done.is_set() for r in requests)


def blocked_connections(port: int) -> int:
    """How many of the server's established connections have a full send queue: clients that
    are sent data and do not read it (from /proc/net/tcp, the kernel's own account)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            tx_queue = int(fields[4].split(":")[0], 16)
            if local_port == port and fields[3] == "01" and tx_queue >= BLOCKED_BYTES:
                count += 1
    return count


def burst_answer(fake: FakeUpstream) -> None:
    """An answer the gateway cannot hand to a client that reads nothing (a burst), then a
    trickle that would go on for minutes: the upstream is still sending when it is let go."""
    fake.enqueue(
        ANSWER,
        chunk_chars=CHUNK_CHARS,
        fault="slow",
        delay=0.5,
        slow_after=BURST_CHUNKS,
        usage=ANSWER_USAGE,
    )


def asked(row: dict[str, Any]) -> str:
    return str(json.loads(row["request"])["messages"][-1]["content"])


@dataclass
class Gateway:
    server: ServerProcess
    fake: FakeUpstream

    def post(self, body: dict[str, Any], timeout: float = 30) -> httpx.Response:
        return httpx.post(
            f"{self.server.v1}/chat/completions",
            json=body,
            headers=self.server.headers(),
            timeout=timeout,
        )

    def stream_text(self, body: dict[str, Any]) -> tuple[int, str]:
        with httpx.stream(
            "POST",
            f"{self.server.v1}/chat/completions",
            json=body,
            headers=self.server.headers(),
            timeout=30,
        ) as response:
            response.read()
        if response.status_code != 200:
            return response.status_code, response.text
        events = sse_events(response.text)
        assert events[-1] == "[DONE]"
        text = "".join(
            e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e.get("choices")
        )
        return 200, text


@pytest.fixture
def gateway_with(fake: FakeUpstream, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """`gateway_with(LLMKIT_SETTING="value", ...)`: `llmkit serve` on a repository whose
    prompts reach the fake upstream, with those settings."""
    started: list[ServerProcess] = []

    def start(**settings: str) -> Gateway:
        repo = tmp_path / f"repo{len(started)}"
        build_exec_repo(repo, fake.url)
        server = start_server(repo, tmp_path, server_env(**settings))
        started.append(server)
        return Gateway(server, fake)

    yield start
    for server in started:
        server.terminate()


POOL_SIZE = 4
WRITE_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def module_gateway(
    module_fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """One `llmkit serve` for the smaller tests: a small pool, short write and read timeouts.
    Each test asks with texts of its own, and finds its run log rows by them."""
    base = tmp_path_factory.mktemp("gateway")
    build_exec_repo(base / "repo", module_fake.url)
    server = start_server(
        base / "repo",
        base,
        server_env(
            LLMKIT_UPSTREAM_POOL_SIZE=str(POOL_SIZE),
            LLMKIT_UPSTREAM_ACQUIRE_TIMEOUT_S="0.5",
            LLMKIT_STREAM_WRITE_TIMEOUT_S=str(WRITE_TIMEOUT_S),
            LLMKIT_REQUEST_READ_TIMEOUT_S="1",
        ),
    )
    try:
        yield Gateway(server, module_fake)
    finally:
        server.terminate()


@pytest.fixture
def gateway(module_gateway: Gateway, fake: FakeUpstream) -> Gateway:
    """The module's gateway, with a fresh fake upstream."""
    return module_gateway


def rows_asking(server: ServerProcess, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """The run log rows of the calls whose last message starts with `prefix`, by status."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in read_run_log(server.db_path):
        if asked(row).startswith(prefix):
            rows.setdefault(row["status"], []).append(row)
    return rows


# -- stalled and resetting clients ----------------------------------------------------------------


def test_stalled_and_reset_clients_are_dropped_and_memory_stays_bounded(
    gateway_with: Callable[..., Gateway],
) -> None:
    """Hundreds of clients that read nothing, some of which then reset (F7): other clients are
    served meanwhile, memory stays bounded, every upstream call is closed while it still sends
    (not drained), and each is logged `cancelled` with the part of the answer that was sent."""
    write_timeout = 20
    gateway = gateway_with(LLMKIT_STREAM_WRITE_TIMEOUT_S=str(write_timeout))
    server, fake = gateway.server, gateway.fake
    assert gateway.stream_text(stream_body(text="warm"))[0] == 200
    fake.reset()
    start_rss = vm_rss_mib(server.proc.pid)
    peak = PeakRss(server.proc.pid)
    stalled_count, reset_count = 150, 100
    for _ in range(stalled_count + reset_count):
        burst_answer(fake)
    sockets: list[socket.socket] = []
    try:
        sockets += [silent_client(server, stream_body(text=f"s{i}")) for i in range(stalled_count)]
        opened_at: dict[str, float] = {}
        resetting: list[tuple[str, socket.socket]] = []
        for i in range(reset_count):
            opened_at[f"r{i}"] = time.monotonic()
            resetting.append((f"r{i}", silent_client(server, stream_body(text=f"r{i}"))))
        sockets += [sock for _, sock in resetting]

        def all_held() -> bool:
            # Every call reached the upstream, and each client is blocked on a full send queue,
            # or was already dropped by its write timeout (on a loaded machine, opening the last
            # client can take longer than the first one's timeout).
            requests = list(fake.chat_requests)
            dropped = sum(1 for r in requests if r.done.is_set())
            blocked = blocked_connections(server.port)
            return len(requests) >= len(sockets) and blocked + dropped >= len(sockets)

        poll(all_held, "the gateway's writes to every silent client to block", timeout_s=WAIT_S)
        held = list(fake.chat_requests)
        assert len(held) == len(sockets)

        # Other clients are served meanwhile.
        normal = gateway.post(stream_body(text="normal", stream=False))
        assert normal.status_code == 200
        assert normal.json()["choices"][0]["message"]["content"] == "ok: normal"
        assert gateway.stream_text(stream_body(text="streamed")) == (200, "ok: streamed")

        # A resetting client reset before its write timeout could have run out must be logged
        # as disconnected; on a loaded machine the timeout can come first for the early ones.
        timeout_possible: set[str] = set()
        for text, sock in resetting:
            if time.monotonic() - opened_at[text] >= write_timeout - 1:
                timeout_possible.add(text)
            reset(sock)
        poll(
            lambda: settled(held),
            "the gateway to close every upstream call it held",
            timeout_s=WAIT_S,
        )
    finally:
        rss_peak = peak.stop()
        for sock in sockets:
            sock.close()

    assert rss_peak - start_rss < 300, f"RSS went from {start_rss:.0f} to {rss_peak:.0f} MiB"
    # The upstream saw each call closed while it was still sending, not read to the end.
    assert {r.outcome for r in held} == {"disconnected"}
    assert all(r.bytes_sent < len(ANSWER) for r in held)

    def all_logged() -> bool:
        return len(rows_by_status(server).get("cancelled", [])) >= len(sockets)

    poll(all_logged, "a cancelled run log row for every dropped client", timeout_s=WAIT_S)
    cancelled = rows_by_status(server)["cancelled"]
    assert len(cancelled) == len(sockets)
    for row in cancelled:
        kept, total = sent_chars(row["response"])
        # What was sent: a prefix of the answer, never the whole answer read from upstream.
        assert ANSWER.startswith(kept) and 0 < total < len(ANSWER)
        assert row["http_status"] == 499 and row["stream"]
        timed_out = f"the client read nothing for {write_timeout} s"
        text = asked(row)
        if text.startswith("s"):
            expected = {timed_out}
        elif text in timeout_possible:
            expected = {timed_out, "the client disconnected"}
        else:
            expected = {"the client disconnected"}
        assert row["error"] in expected, text
    assert set(rows_by_status(server)) == {"ok", "cancelled"}


def test_full_pool_answers_503_at_once_then_serves_again(gateway: Gateway) -> None:
    """The F7 reproduction, scaled: stalled streams hold every upstream connection, and the
    next caller gets a quick 503 with the pool's own code instead of waiting until its timeout;
    once the stalled clients are dropped, calls go through again."""
    server, fake = gateway.server, gateway.fake
    for _ in range(POOL_SIZE):
        burst_answer(fake)
    stalled = [silent_client(server, stream_body(text=f"pool-s{i}")) for i in range(POOL_SIZE)]
    try:
        poll(
            lambda: len(fake.chat_requests) == POOL_SIZE,
            "the calls to fill the pool",
            timeout_s=WAIT_S,
        )
        held = list(fake.chat_requests)
        for body in (stream_body(text="pool-next", stream=False), stream_body(text="pool-next")):
            refused = gateway.post(body)
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["code"] == "upstream_pool_full" and error["type"] == "server_error"
            assert f"All {POOL_SIZE} connections" in error["message"]
            assert refused.headers["retry-after"] == "1"
            assert refused.headers["x-llmkit-trace-id"]
        # A client more than the pool holds, that reads nothing either, is refused the same way.
        extra = silent_client(server, stream_body(text="pool-extra"))
        extra.settimeout(WAIT_S)
        assert extra.recv(65536).startswith(b"HTTP/1.1 503 ")
        extra.close()
        assert len(fake.chat_requests) == POOL_SIZE  # nothing refused reached the upstream
        poll(lambda: settled(held), "the stalled clients to be dropped", timeout_s=WAIT_S)
    finally:
        for sock in stalled:
            sock.close()
    assert gateway.stream_text(stream_body(text="pool-again")) == (200, "ok: pool-again")
    poll(
        lambda: len(rows_asking(server, "pool-s").get("cancelled", [])) == POOL_SIZE,
        "the dropped clients' run log rows",
        timeout_s=WAIT_S,
    )
    refused_rows = [
        *rows_asking(server, "pool-next")["error"],
        *rows_asking(server, "pool-extra")["error"],
    ]
    assert [r["http_status"] for r in refused_rows] == [503, 503, 503]


def test_reader_that_stops_after_a_little_is_logged_with_what_it_was_sent(
    gateway: Gateway,
) -> None:
    server, fake = gateway.server, gateway.fake
    burst_answer(fake)
    sock = silent_client(server, stream_body(text="stops"))
    received = b""
    while len(received) < 200_000:
        data = sock.recv(65536)
        assert data, "the gateway closed the stream early"
        received += data
    poll(
        lambda: bool(fake.chat_requests) and fake.chat_requests[0].done.is_set(),
        "the gateway to drop the reader that stopped",
        timeout_s=WAIT_S,
    )
    [upstream] = fake.chat_requests
    assert upstream.outcome == "disconnected" and upstream.bytes_sent < len(ANSWER)
    sock.close()
    poll(lambda: "cancelled" in rows_asking(server, "stops"), "the run log row", timeout_s=WAIT_S)
    [row] = rows_asking(server, "stops")["cancelled"]
    assert row["error"] == f"the client read nothing for {WRITE_TIMEOUT_S} s"
    kept, total = sent_chars(row["response"])
    read_text = "".join(re.findall(r'"content":"([0-9 ]*)"', received.decode()))
    assert ANSWER.startswith(kept) and ANSWER.startswith(read_text)
    assert len(read_text) <= total < len(ANSWER)


@pytest.mark.parametrize("stream", [True, False])
def test_client_leaving_while_the_upstream_thinks_cancels_it(
    gateway: Gateway, stream: bool
) -> None:
    server, fake = gateway.server, gateway.fake
    fake.enqueue(fault="hang")
    text = f"leaves-{stream}"
    sock = silent_client(server, stream_body(text=text, stream=stream))
    poll(lambda: bool(fake.chat_requests), "the call to reach the upstream", timeout_s=WAIT_S)
    reset(sock)
    [upstream] = fake.chat_requests
    poll(upstream.done.is_set, "the gateway to close the upstream call", timeout_s=WAIT_S)
    assert upstream.outcome == "disconnected"
    poll(lambda: "cancelled" in rows_asking(server, text), "the run log row", timeout_s=WAIT_S)
    [row] = rows_asking(server, text)["cancelled"]
    assert row["error"] == "the client disconnected"
    assert sent_chars(row["response"]) == ("", 0)
    assert bool(row["stream"]) is stream
    assert "Traceback" not in server.stderr()


def test_request_sent_slowly_is_refused_with_408(gateway: Gateway) -> None:
    server = gateway.server
    # A head that never ends: the server answers 408 and closes, not waits without end.
    head_only = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    head_only.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    answer = head_only.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"request_timeout"' in answer
    head_only.close()
    # A body that stops halfway.
    data = raw_request(server, stream_body(text="slow-body"))
    body_half = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    body_half.sendall(data[: len(data) - 10])
    answer = receive_until(body_half, b"request_timeout")
    assert answer.startswith(b"HTTP/1.1 408 ")
    body_half.close()
    # And a kept-alive connection whose next request head stops halfway.
    kept_alive = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    kept_alive.sendall(raw_request(server, stream_body(text="slow-first", stream=False)))
    assert receive_until(kept_alive, b'"ok: slow-first"').startswith(b"HTTP/1.1 200 ")
    kept_alive.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert receive_until(kept_alive, b"request_timeout").startswith(b"HTTP/1.1 408 ")
    kept_alive.close()
    assert [r.body["messages"][-1]["content"] for r in gateway.fake.chat_requests] == ["slow-first"]
    assert gateway.post(stream_body(text="slow-after", stream=False)).status_code == 200


def receive_until(sock: socket.socket, marker: bytes) -> bytes:
    answer = b""
    while marker not in answer:
        more = sock.recv(65536)
        assert more, f"closed before {marker!r}: {answer!r}"
        answer += more
    return answer


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("UPSTREAM_POOL_SIZE", "0"),
        ("STREAM_WRITE_TIMEOUT_S", "-1"),
        ("REQUEST_READ_TIMEOUT_S", "0"),
    ],
)
def test_limits_that_make_no_sense_are_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"LLMKIT_{name}", value)
    with pytest.raises(ConfigError) as refused:
        Settings.resolve(tmp_path)
    assert f"LLMKIT_{name}" in refused.value.message
    assert "greater than 0" in refused.value.message


# -- JSON mode buffering --------------------------------------------------------------------------


def test_json_mode_buffer_is_capped_and_merges_chunks(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    build_exec_repo(repo, fake.url)
    monkeypatch.setenv(FAKE_KEY_ENV, FAKE_KEY_VALUE)
    with running_api(repo, json_buffer_max_bytes=64 * 1024) as env:
        headers = {"Authorization": f"Bearer {env.run_key}"}
        body = stream_body(model="json", text="?")
        # An answer within the cap, in many small chunks, arrives whole in a few.
        answer = json.dumps({"answer": "word " * 4000})
        fake.enqueue(answer, chunk_chars=7)
        with env.client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            r.read()
        assert r.status_code == 200
        events = sse_events(r.text)
        text = "".join(
            e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"]
        )
        assert text == answer
        assert len(events) < 10 < len(answer) // 7
        # One over the cap is a 502 before the stream starts, and is not retried.
        fake.enqueue(json.dumps({"answer": "word " * 20000}), chunk_chars=7)
        refused = env.client.post("/v1/chat/completions", json=body, headers=headers)
        assert refused.status_code == 502
        assert refused.json()["error"]["code"] == "json_output_too_large"
        assert "65536 bytes" in refused.json()["error"]["message"]
        assert len(fake.chat_requests) == 2
        row = env.get(f"/v1/ui/logs/{refused.headers['x-llmkit-trace-id']}").json()
        assert row["status"] == "error"


# -- the provider layer: the pool on every network path --------------------------------------------


@pytest_asyncio.fixture
async def pools() -> Any:
    """The running loop's HTTP sessions, closed after the test."""
    yield
    await providers.aclose()


@pytest_asyncio.fixture
async def small_pool(pools: Any) -> None:
    providers.configure_pool(providers.PoolLimits(size=1, acquire_timeout_s=0.2))


def call_to(fake: FakeUpstream, via: str, **options: Any) -> ProviderCall:
    return ProviderCall(
        "openai/fake-model",
        [{"role": "user", "content": "hi"}],
        api_base=fake.url,
        api_key="sk-test",
        via="litellm" if via == "litellm" else None,
        backoff_base=0.01,
        **options,
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("via", ["wire", "litellm"])
async def test_pool_full_is_its_own_503_and_not_retried(
    fake: FakeUpstream, small_pool: Any, via: str
) -> None:
    fake.enqueue("a b c d e f", fault="slow", delay=0.5)
    holder = providers.stream(call_to(fake, via))
    await anext(holder)
    with pytest.raises(UpstreamPoolFull) as refused:
        await providers.complete(call_to(fake, via, max_retries=3))
    assert refused.value.status == 503 and refused.value.code == "upstream_pool_full"
    assert refused.value.headers == {"retry-after": "1"}
    with pytest.raises(UpstreamPoolFull):
        await anext(providers.stream(call_to(fake, via, max_retries=3)))
    # A fallback model may sit on another upstream: it is tried.
    answered = await providers.complete(call_to(fake, via, fallbacks=["echo"]))
    assert answered["model"] == "echo"
    assert len(fake.chat_requests) == 1
    await holder.aclose()
    answer = await providers.complete(call_to(fake, via))
    assert answer["choices"][0]["message"]["content"] == "ok: hi"


@pytest.mark.asyncio
async def test_oversized_stream_event_is_an_error_not_a_growing_buffer(
    fake: FakeUpstream, pools: Any
) -> None:
    fake.enqueue("x" * (1024 * 1024 + 1), chunk_chars=2 * 1024 * 1024)
    received = []
    with pytest.raises(UpstreamError) as failed:
        async for chunk in providers.stream(call_to(fake, "wire", max_retries=0)):
            received.append(chunk)
    assert "a stream event larger than 1048576 bytes" in failed.value.message
    assert len(received) == 1  # the role chunk; nothing after it
