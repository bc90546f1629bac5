"""Throughput of three `llmkit serve --ref main` replicas on one PostgreSQL store against one.

Run by hand, never by the test suite:

    python bench/replicas.py                      # 15 s at c=32 per fleet size
    python bench/replicas.py --seconds 5 --concurrency 16

One throwaway PostgreSQL cluster (tests/pg.py's, from Debian's binaries; as root it runs as an
unprivileged user) holds the fleet's durable store. A generated repository (bench/gen_repo.py,
every prompt `model: echo`, so calls run offline) is cloned once per replica, and each replica
is `python -m llmkit serve --ref main --no-watch` on its clone, started as the tests start one
(tests/helpers.py). A run key is made through the first replica's API. First one replica, then
three (the first and two more), are driven by this process: an asyncio/httpx load generator
keeping `--concurrency` requests in flight for `--seconds`, spreading them round-robin over the
replicas, each a POST /v1/chat/completions for one of the echo prompts. Each fleet size gets a
short warm-up first, not counted.

Figures: requests/s, p50/p95 latency, the ratio three/one, and the CPU seconds the servers,
this process (the load generator) and PostgreSQL used meanwhile, from /proc/<pid>/stat: on a
machine of few cores they all compete for the same cores, which the CPU figures show.
Everything listens on 127.0.0.1; every process is killed at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

import gen_repo

from tests.helpers import ServerProcess, clean_env, git, start_server
from tests.pg import PgServer, pg_bin_dir, server_user

FLAGS = ("--log-level", "warning", "--ref", "main")
VARIABLES = {name: "bench" for name in gen_repo.VARIABLES} | {"question": "Where is my parcel?"}
WARMUP_S = 2.0
# Bounds beside the duration: no run sends more than this, and no request waits longer.
MAX_REQUESTS = 1_000_000
REQUEST_TIMEOUT_S = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str) -> float:
    """utime + stime of a process so far, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces: the fields after it are counted from its ")".
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def postgres_cpu_seconds(pg: PgServer) -> float:
    """The cluster's CPU so far: its postmaster's and its live children's (the backends)."""
    postmaster = (pg.data / "postmaster.pid").read_text().split()[0]
    total = cpu_seconds(postmaster)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[1] == postmaster:
                total += cpu_seconds(stat.parent.name)
        except (OSError, IndexError):
            continue  # a process that ended meanwhile
    return total


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


async def drive(
    urls: list[str], key: str, prompts: list[str], concurrency: int, seconds: float
) -> Load:
    """`concurrency` workers posting calls round-robin over `urls` until `seconds` pass."""
    load = Load()
    turns = itertools.count()
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                turn = next(turns)
                if turn >= MAX_REQUESTS:
                    return
                body = {"model": prompts[turn % len(prompts)], "variables": VARIABLES}
                sent = time.perf_counter()
                try:
                    response = await client.post(
                        f"{urls[turn % len(urls)]}/v1/chat/completions", json=body, headers=headers
                    )
                    failure = None if response.status_code == 200 else str(response.status_code)
                except httpx.HTTPError as exc:
                    failure = type(exc).__name__
                if failure is None:
                    load.latencies.append(time.perf_counter() - sent)
                else:
                    load.failures[failure] = load.failures.get(failure, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        load.seconds = time.perf_counter() - started
    return load


def measure(
    servers: list[ServerProcess],
    pg: PgServer,
    key: str,
    prompts: list[str],
    args: argparse.Namespace,
) -> dict:
    urls = [server.url for server in servers]
    asyncio.run(drive(urls, key, prompts, args.concurrency, WARMUP_S))
    pids = [server.proc.pid for server in servers]
    before = [cpu_seconds(pid) for pid in pids], cpu_seconds("self"), postgres_cpu_seconds(pg)
    load = asyncio.run(drive(urls, key, prompts, args.concurrency, args.seconds))
    after = [cpu_seconds(pid) for pid in pids], cpu_seconds("self"), postgres_cpu_seconds(pg)
    if not load.latencies:
        raise RuntimeError(f"no call succeeded: {load.failures}")
    latencies = sorted(load.latencies)
    result = {
        "replicas": len(servers),
        "requests": len(latencies),
        "failures": load.failures,
        "requests_per_s": round(len(latencies) / load.seconds, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[math.ceil(len(latencies) * 0.95) - 1] * 1000, 1),
        "server_cpu_s": [round(a - b, 1) for a, b in zip(after[0], before[0], strict=True)],
        "load_generator_cpu_s": round(after[1] - before[1], 1),
        "postgresql_cpu_s": round(after[2] - before[2], 1),
        "seconds": round(load.seconds, 1),
    }
    print(
        f"{len(servers)} replica(s): {result['requests_per_s']:>8,.1f} req/s   p50"
        f" {result['p50_ms']:>7.1f} ms   p95 {result['p95_ms']:>7.1f} ms   server CPU"
        f" {sum(result['server_cpu_s']):.1f} s {result['server_cpu_s']}   load generator CPU"
        f" {result['load_generator_cpu_s']:.1f} s   PostgreSQL CPU"
        f" {result['postgresql_cpu_s']:.1f} s   failures {load.failures or 0}",
        flush=True,
    )
    return result


def run(args: argparse.Namespace, work: Path, pg: PgServer, servers: list[ServerProcess]) -> dict:
    made = gen_repo.generate(work / "origin", args.prompts, 3, model="echo")
    env = clean_env(LLMKIT_DATABASE_URL=pg.new_store())

    def start_replica() -> None:
        clone = work / f"replica{len(servers)}"
        git(work, "clone", "-q", str(made.root), str(clone))
        servers.append(start_server(clone, work, env, flags=FLAGS))

    start_replica()
    created = httpx.post(
        f"{servers[0].v1}/ui/settings/api-keys",
        headers=servers[0].headers(),
        json={"name": "bench", "scope": "run"},
        timeout=REQUEST_TIMEOUT_S,
    )
    created.raise_for_status()
    key = created.json()["key"]
    print(f"{args.prompts} echo prompts, c={args.concurrency}, {args.seconds:g} s per fleet size")
    one = measure(servers, pg, key, made.keys, args)
    start_replica()
    start_replica()
    three = measure(servers, pg, key, made.keys, args)
    ratio = three["requests_per_s"] / one["requests_per_s"]
    print(
        f"three / one: x{ratio:.2f} requests/s, p50 x{three['p50_ms'] / one['p50_ms']:.2f},"
        f" on {os.cpu_count()} cores shared by the replicas, the load generator and PostgreSQL"
    )
    return {"cores": os.cpu_count(), "one": one, "three": three, "ratio": round(ratio, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "replicas.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-replicas-"))
    pg = PgServer(pg_bin_dir(), Path(tempfile.mkdtemp(prefix="llmkit-pg-")), server_user())
    servers: list[ServerProcess] = []
    try:
        pg.start()
        report = run(args, work, pg, servers)
    finally:
        for server in servers:
            server.kill()
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(f"{exc}: {exc.stderr}")
