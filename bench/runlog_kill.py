"""Kill -9 under load: how many acknowledged run-log rows a crash loses, default vs durable.

Run by hand, never by the test suite:

    python bench/runlog_kill.py                      # 10 kills per mode, fake upstream, c=32
    python bench/runlog_kill.py --kills 12 --model echo --out /tmp/runlog_kill.json

Processes, all on 127.0.0.1: the raw-asyncio fake upstream of `bench/gateway.py` (one fixed
completion) and `python -m llmkit serve --no-watch` over a temporary prompt repository whose
`bench` prompt runs on it (`--model echo` runs the built-in echo model instead: no upstream,
the server's own CPU is the only limit, the worst case for the writer thread). This process is
the client: `--concurrency` keep-alive connections, each sending the next chat completion as
soon as the last one is answered.

One kill: start the server, load it for a random 1-2 s, SIGKILL it, read every response that
had been sent in full (they count as acknowledged: the server wrote them before it died), then
open the SQLite file and count the acknowledged trace ids that have no row. That count is
given as ms of traffic (over the request rate of the last 0.5 s before the kill), and as how
long before the kill the oldest lost answer was read. Modes alternate kill by kill (default,
durable, default, ...; `batchN` is the default mode with an N ms window), so all see the same
machine. CPU per request is the server's CPU (from /proc, as in `bench/gateway.py`) between
0.4 s into the load and the kill, over the responses acknowledged in that span; the
durable/default ratio is measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import gateway  # the fake upstream, /proc readers and process helpers

HOST = gateway.HOST
TRACE_HEADER = b"x-llmkit-trace-id"
WARMUP_S = 0.4
RECENT_S = 0.5
MODES = {"default": {"LLMKIT_LOG_DURABLE": "0"}, "durable": {"LLMKIT_LOG_DURABLE": "1"}}


def mode_env(mode: str) -> dict[str, str]:
    """`default`, `durable`, or `batchN`: the default mode with an N ms batch window."""
    if mode in MODES:
        return MODES[mode]
    if mode.startswith("batch") and mode[5:].isdigit():
        return {"LLMKIT_LOG_DURABLE": "0", "LLMKIT_LOG_BATCH_MS": mode[5:]}
    raise ValueError(mode)


class Connection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection with one request in flight; keeps each answer's trace id."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.waiter: asyncio.Future[None] | None = None
        self.header_name = b""
        self.trace_id = ""
        self.status = 0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # a cut answer ends this connection's work
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == TRACE_HEADER:
            self.trace_id = value.decode()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def request(self, raw: bytes) -> tuple[int, str]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.trace_id, self.status = "", 0
        self.transport.write(raw)
        await self.waiter
        return self.status, self.trace_id


@dataclass
class Kill:
    mode: str
    load_s: float
    acknowledged: int
    lost: int
    rate_rps: float
    recent_rps: float  # over the last RECENT_S before the kill: the traffic a loss is made of
    reach_ms: float  # how long before the kill the oldest lost row was acknowledged
    cpu_ms_per_request: float
    p50_ms: float
    errors: int
    lost_trace_ids: list[str] = field(default_factory=list)

    @property
    def lost_ms(self) -> float:
        """The lost rows as milliseconds of the traffic just before the kill."""
        return self.lost / self.recent_rps * 1000 if self.recent_rps else 0.0


@dataclass
class Load:
    acknowledged: dict[str, float]  # trace id -> when its answer was read (perf_counter)
    killed_at: float
    errors: int
    cpu_s: float
    measured: int  # answers acknowledged in the span cpu_s covers
    latencies_ms: list[float]


async def load_and_kill(
    server: subprocess.Popen[Any], port: int, raw: bytes, concurrency: int, load_s: float
) -> Load:
    """Load the server, SIGKILL it after `load_s`, and collect every answer it sent in full."""
    loop = asyncio.get_running_loop()
    connections = []
    for _ in range(concurrency):
        _, conn = await asyncio.wait_for(loop.create_connection(Connection, HOST, port), 5)
        connections.append(conn)
    acknowledged: dict[str, float] = {}
    latencies: list[float] = []
    errors = [0]
    killed = [False]

    async def drive(conn: Connection) -> None:
        while not killed[0]:
            sent = time.perf_counter()
            try:
                status, trace_id = await conn.request(raw)
            except Exception:  # the kill cut this connection
                return
            if status == 200 and trace_id:
                acknowledged[trace_id] = time.perf_counter()
                latencies.append((acknowledged[trace_id] - sent) * 1000)
            else:
                errors[0] += 1

    tasks = [asyncio.create_task(drive(conn)) for conn in connections]
    await asyncio.sleep(WARMUP_S)
    cpu_before, counted_before = gateway.cpu_reading(server.pid), len(acknowledged)
    await asyncio.sleep(load_s - WARMUP_S)
    cpu_after, counted_after = gateway.cpu_reading(server.pid), len(acknowledged)
    os.kill(server.pid, signal.SIGKILL)
    killed_at = time.perf_counter()
    killed[0] = True
    # Answers already in the socket buffers were sent before the kill: read them all.
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in connections)), 10)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    return Load(
        acknowledged,
        killed_at,
        errors[0],
        cpu_after.since(cpu_before),
        counted_after - counted_before,
        latencies,
    )


def stored_trace_ids(db_path: Path) -> set[str]:
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        return {row[0] for row in conn.execute("SELECT trace_id FROM run_log")}
    finally:
        conn.close()


def integrity(db_path: Path) -> str:
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def one_kill(
    procs: gateway.Processes,
    repo: Path,
    key: str,
    mode: str,
    env: dict[str, str],
    concurrency: int,
    load_s: float,
) -> Kill:
    port = gateway.free_port()
    server_env = {**env, **mode_env(mode)}
    argv = gateway.gateway_argv(repo, port, None)
    # A file, not a pipe: nobody reads the pipe while the server runs, and a full one blocks it.
    stderr_path = repo.parent / f"serve-{port}.stderr"
    with stderr_path.open("w") as stderr:
        server = procs.spawn(argv, server_env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        gateway.wait_ready(server, port, time.perf_counter())
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{stderr_path.read_text()[-2000:]}") from None
    raw = gateway.raw_request(port, gateway.gateway_body(False), key)
    try:
        load = asyncio.run(load_and_kill(server, port, raw, concurrency, load_s))
    finally:
        procs.end(server, signal.SIGKILL)
    stored = stored_trace_ids(repo / ".llmkit" / "llmkit.db")
    lost = [t for t in load.acknowledged if t not in stored]
    # An answer read after the kill was sent before it: it counts as read at the kill.
    oldest = min((min(load.acknowledged[t], load.killed_at) for t in lost), default=load.killed_at)
    return Kill(
        mode=mode,
        load_s=load_s,
        acknowledged=len(load.acknowledged),
        lost=len(lost),
        rate_rps=len(load.acknowledged) / load_s,
        recent_rps=len(
            [
                t
                for t in load.acknowledged.values()
                if load.killed_at - RECENT_S <= t <= load.killed_at
            ]
        )
        / RECENT_S,
        reach_ms=(load.killed_at - oldest) * 1000,
        cpu_ms_per_request=load.cpu_s / load.measured * 1000 if load.measured else 0.0,
        p50_ms=statistics.median(load.latencies_ms) if load.latencies_ms else 0.0,
        errors=load.errors,
        lost_trace_ids=lost[:20],
    )


def make_repository(
    root: Path, fake_port: int, env: dict[str, str], model: str
) -> tuple[Path, str]:
    repo, key = gateway.make_repository(root, fake_port, env)
    if model == "echo":
        # The bench prompt runs on the alias `fast`; the registry reads llmkit.yaml from disk.
        (repo / "llmkit.yaml").write_text("models:\n  fast:\n    model: echo\n", "utf-8")
    return repo, key


def report(kills: list[Kill], modes: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    table = [
        (
            "mode",
            "kills",
            "lost/kill median",
            "max",
            "as ms of traffic median",
            "max",
            "oldest lost ack median",
            "max",
            "lost/acked",
            "req/s",
            "cpu/req",
            "p50",
        )
    ]
    for mode in modes:
        mine = [k for k in kills if k.mode == mode]

        def med(values: list[float]) -> float:
            return statistics.median(values)

        figures = {
            "kills": len(mine),
            "lost_per_kill": [k.lost for k in mine],
            "lost_median": med([k.lost for k in mine]),
            "lost_max": max(k.lost for k in mine),
            "lost_ms_median": med([k.lost_ms for k in mine]),
            "lost_ms_max": max(k.lost_ms for k in mine),
            "reach_ms_median": med([k.reach_ms for k in mine]),
            "reach_ms_max": max(k.reach_ms for k in mine),
            "acknowledged": sum(k.acknowledged for k in mine),
            "lost": sum(k.lost for k in mine),
            "rate_rps_median": med([k.rate_rps for k in mine]),
            "cpu_ms_per_request_median": med([k.cpu_ms_per_request for k in mine]),
            "p50_ms_median": med([k.p50_ms for k in mine]),
            "errors": sum(k.errors for k in mine),
        }
        summary[mode] = figures
        table.append(
            (
                mode,
                str(len(mine)),
                f"{figures['lost_median']:g}",
                str(figures["lost_max"]),
                f"{figures['lost_ms_median']:.1f} ms",
                f"{figures['lost_ms_max']:.1f} ms",
                f"{figures['reach_ms_median']:.1f} ms",
                f"{figures['reach_ms_max']:.1f} ms",
                f"{figures['lost']}/{figures['acknowledged']}",
                f"{figures['rate_rps_median']:.0f}",
                f"{figures['cpu_ms_per_request_median']:.3f} ms",
                f"{figures['p50_ms_median']:.1f} ms",
            )
        )
    gateway.print_columns(table)
    print(
        f"  as ms of traffic: rows lost / the request rate of the last {RECENT_S:g} s before"
        " the kill; oldest lost ack: how long before the kill the oldest lost row's answer"
        " was read (0 when all were read after it)."
    )
    if "default" in summary and "durable" in summary:
        ratio = (
            summary["durable"]["cpu_ms_per_request_median"]
            / summary["default"]["cpu_ms_per_request_median"]
        )
        summary["durable_cpu_ratio"] = ratio
        print(f"durable CPU/request = x{ratio:.2f} of default (medians over the kills of this run)")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kills per mode (default 10)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--model", choices=("fake", "echo"), default="fake")
    parser.add_argument(
        "--modes",
        default="default,durable",
        help="comma-separated: default, durable, batchN (an N ms window)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        try:
            mode_env(mode)
        except ValueError:
            parser.error(f"unknown mode {mode!r} (default, durable or batchN)")
    gateway.use_uvloop()
    gateway.READY_TIMEOUT_S = 60.0  # a server starts slowly on a busy machine; that is not news
    rng = random.Random(args.seed)
    env = gateway.child_env()
    env.pop("LLMKIT_LOG_DURABLE", None)
    env.pop("LLMKIT_LOG_BATCH_MS", None)
    procs = gateway.Processes()
    kills: list[Kill] = []
    try:
        with tempfile.TemporaryDirectory(prefix="runlog-kill-") as tmp:
            _, fake_port = gateway.start_fake(procs, env)
            repo, key = make_repository(Path(tmp), fake_port, env, args.model)
            for n in range(args.kills):
                for mode in modes[n % len(modes) :] + modes[: n % len(modes)]:
                    kill = one_kill(
                        procs, repo, key, mode, env, args.concurrency, rng.uniform(1.0, 2.0)
                    )
                    kills.append(kill)
                    print(
                        f"kill {n + 1:>2} {mode:<8} acknowledged {kill.acknowledged:>5}"
                        f" lost {kill.lost:>4} ({kill.lost_ms:6.1f} ms at"
                        f" {kill.recent_rps:.0f} req/s; oldest {kill.reach_ms:5.1f} ms before"
                        f" the kill) cpu/req {kill.cpu_ms_per_request:.3f} ms"
                        f" errors {kill.errors}",
                        flush=True,
                    )
            check = integrity(repo / ".llmkit" / "llmkit.db")
            print(
                f"\nc={args.concurrency}, model {args.model}, {args.kills} kills per mode;"
                f" database integrity after every kill: {check}"
            )
            summary = report(kills, modes)
    finally:
        procs.end_all()
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "concurrency": args.concurrency,
                    "model": args.model,
                    "summary": summary,
                    "kills": [asdict(k) | {"lost_ms": k.lost_ms} for k in kills],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
