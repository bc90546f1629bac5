"""Server time of each web page on a 1,000-prompt x 20-version repository with a 1,000,000-row
run log: the prompt list, a search, a prompt page, history, a diff and (with --traces) the
trace pages, each against a target of 100 ms and beside baselines measured in the same run.

Run by hand, never by the test suite:

    python bench/web_pages.py                          # 1,000 x 20, 1,000,000 rows
    python bench/web_pages.py --rows 100000 --requests 50 --traces
    python bench/web_pages.py --profile bench/results/web_pages_profile

The repository (bench/gen_repo.py) and its database (the index, and the run log written as
bench/runlog_scale.py writes it, its calls spread over the repository's first 200 prompts) are
generated once and kept under the temp dir, one folder per size, since the log takes minutes
to write and its rollups to backfill; `--fresh` makes them again.

What is timed is the real app (create_app, no watcher) in process over starlette's
TestClient with an admin bearer key: routing, the admin-key check, the handler, the template
and the response, without a socket. Each page gets `--warmup` requests first, then
`--requests` requests, each followed by its baselines, so noise lands on both: GET /v1/
(the app's floor: routing and a small JSON answer, no auth, no reads; /healthz is not one,
as it lists every prompt) and, where the API has one, the API's JSON route for the same data
(the prompt list's is a page of 1,000 prompts). The trace pages are the list's first page, a
page 90% of the way down by the API's `cursor`, the page back from there (Newer: the API has
no `before`, so it stands beside the floor alone), one prompt's calls, that prompt's errors,
and one trace. Figures are the median and p95 (nearest rank) of
the wall time, and the medians of the CPU time per request of the process (client and
server) and of the endpoint function alone (in its worker thread): on a shared machine they
say what the page costs when the wall time says how busy the machine was. Ratios are medians
over medians. Exits 1 when a page misses the target.

With `--profile PREFIX`, each page over its target is profiled with cProfile over
`--requests` more requests (the endpoint runs in a worker thread, so the profiler is switched
on around it there, by wrapping FastAPI's `_run_sync_endpoint`) and the top functions by
cumulative time are written to PREFIX-<page>.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlencode

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
for folder in (PROJECT_ROOT, BENCH_DIR):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import fastapi.routing
import runlog_scale
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gen_repo import generate, prompt_key

from llmkit.api.app import create_app
from llmkit.config import Settings
from llmkit.db import Database
from llmkit.runlog import RunLog
from llmkit.runlog_query import encode_cursor

TARGET_S = 0.100
CACHE_ROOT = Path(tempfile.gettempdir()) / "llmkit-bench-web-pages"
READY = "ready.json"
FLOOR = "/v1/"  # the version: no auth, no reads


@dataclass
class Page:
    name: str
    url: str
    api: str | None  # the API's JSON route for the same data, if it has one
    expect: str  # text the page must hold, so an error page is never timed as a page


@dataclass
class Figure:
    page: Page
    times: list[float]
    cpu_times: list[float]  # the process's CPU time for each of `times`
    handler_times: list[float]  # the endpoint's own CPU time, in its worker thread
    api_times: list[float]
    floor_times: list[float]
    first: float  # the first request, before any warm-up

    def median(self) -> float:
        return statistics.median(self.times)

    def p95(self) -> float:
        return nearest_rank(self.times, 95)

    def passed(self) -> bool:
        return self.median() <= TARGET_S and self.p95() <= TARGET_S

    def row(self) -> dict[str, Any]:
        floor = statistics.median(self.floor_times)
        api = statistics.median(self.api_times) if self.api_times else None
        return {
            "page": self.page.name,
            "url": self.page.url,
            "median_ms": ms(self.median()),
            "p95_ms": ms(self.p95()),
            "cpu_ms": ms(statistics.median(self.cpu_times)),
            "handler_cpu_ms": ms(statistics.median(self.handler_times)),
            "first_ms": ms(self.first),
            "floor_ms": ms(floor),
            "x_floor": round(self.median() / floor, 1),
            "api": self.page.api,
            "api_ms": ms(api) if api is not None else None,
            "x_api": round(self.median() / api, 2) if api else None,
            "target_ms": ms(TARGET_S),
            "passed": self.passed(),
        }


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def nearest_rank(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * pct // 100) - 1)]


# -- the data ------------------------------------------------------------------------------


def prepare(prompts: int, versions: int, rows: int, fresh: bool) -> Path:
    """The repository with its database (index and run log), generated once per size and
    kept: a folder without its ready marker is half made, and is made again."""
    folder = CACHE_ROOT / f"p{prompts}-v{versions}-r{rows}"
    if fresh or not (folder / READY).exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        repo = folder / "repo"
        started = time.perf_counter()
        generated = generate(repo, prompts=prompts, versions=versions)
        print(f"repository: {generated.commits:,} commits in {time.perf_counter() - started:.1f} s")
        settings = Settings.resolve(repo, watch=False)
        if rows:
            print(f"run log: {rows:,} rows ...", flush=True)
            took = runlog_scale.generate(settings.db_path, rows, keys=generated.keys)
            started = time.perf_counter()
            db = Database(settings.db_path)
            RunLog(db).close()  # opening migrates: the rollups' backfill
            db.close()
            print(
                f"run log written in {took:.1f} s, rollups in {time.perf_counter() - started:.1f} s"
            )
        started = time.perf_counter()
        with TestClient(create_app(settings)):
            pass  # the first start builds the index
        print(f"index built in {time.perf_counter() - started:.1f} s")
        (folder / READY).write_text(
            json.dumps({"prompts": prompts, "versions": versions, "rows": rows}) + "\n"
        )
    else:
        print(f"reusing {folder} (--fresh to make it again)")
    return folder / "repo"


def pages_to_time(
    app: FastAPI, key: str, query: str, diff: tuple[int, int], traces: bool
) -> list[Page]:
    quoted = quote(key)
    old, new = diff
    pages = [
        Page("prompt list", "/", "/v1/ui/prompts?limit=1000", key.rsplit("/", 1)[-1]),
        Page(f"search {query!r}", f"/?{urlencode({'q': query})}", None, query),
        Page("prompt page", f"/prompts/{quoted}", f"/v1/ui/prompts/{quoted}", key),
        Page("history", f"/history/{quoted}", f"/v1/ui/prompts/{quoted}/versions", key),
        Page(
            f"diff {old}..{new}",
            f"/diff/{quoted}?from={old}&to={new}",
            f"/v1/ui/prompts/{quoted}/diff?from={old}&to={new}",
            key,
        ),
    ]
    if traces:
        pages += trace_pages(app, key)
    return pages


def trace_pages(app: FastAPI, key: str) -> list[Page]:
    """The trace list (first page, a page 90% of the way down by the API's `cursor`, the page
    back from there by its Newer link's `before`, one prompt's, one prompt's errors) and one
    trace. A list must link to the trace of its first row, so a page that ignored the cursor,
    or an error page, is not timed as the page asked for."""
    runlog = app.state.ws.runlog
    deep = runlog.count() * 9 // 10
    above = (
        app.state.ws.db.reader()
        .execute(
            "SELECT created_at, id FROM run_log ORDER BY created_at DESC, id DESC LIMIT 2 OFFSET ?",
            (max(0, deep - 1),),
        )
        .fetchall()
    )
    if len(above) < 2:
        return []
    cursor = encode_cursor(above[0][0], above[0][1])  # what the Older link of the page above holds
    back = encode_cursor(above[1][0], above[1][1])  # what the deep page's Newer link holds
    first = runlog.page_after(None, limit=1).rows[0]
    at_depth = runlog.page_after(cursor, limit=1).rows[0]
    mine = runlog.page_after(None, limit=1, prompt=key).rows
    failed = runlog.page_after(None, limit=1, prompt=key, status="error").rows
    pages = [
        Page("traces, first page", "/traces", "/v1/ui/logs", f'/traces/{first["id"]}"'),
        Page(
            f"traces, page at row {deep:,}",
            f"/traces?{urlencode({'cursor': cursor})}",
            f"/v1/ui/logs?{urlencode({'cursor': cursor})}",
            f'/traces/{at_depth["id"]}"',
        ),
        # The API has no `before`: the Newer page has no JSON twin to stand beside.
        Page(
            f"traces, back from row {deep:,}",
            f"/traces?{urlencode({'before': back})}",
            None,
            f'/traces/{above[0][1]}"',  # its last row is the one just above the deep page
        ),
        Page(
            f"trace {first['id']}",
            f"/traces/{first['id']}",
            f"/v1/ui/logs/{first['id']}",
            first["prompt_key"],
        ),
    ]
    if mine:
        pages.append(
            Page(
                "traces of one prompt",
                f"/traces?{urlencode({'prompt': key})}",
                f"/v1/ui/logs?{urlencode({'prompt': key})}",
                f'/traces/{mine[0]["id"]}"',
            )
        )
    if failed:
        errors = {"prompt": key, "status": "error"}
        pages.append(
            Page(
                "traces of one prompt, errors",
                f"/traces?{urlencode(errors)}",
                f"/v1/ui/logs?{urlencode(errors)}",
                f'/traces/{failed[0]["id"]}"',
            )
        )
    return pages


# -- timing --------------------------------------------------------------------------------


def timed_get(
    client: TestClient, url: str, page: Page | None = None, cpu: list[float] | None = None
) -> float:
    started, cpu_started = time.perf_counter(), time.process_time()
    response = client.get(url)
    elapsed = time.perf_counter() - started
    if cpu is not None:
        cpu.append(time.process_time() - cpu_started)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:300]}")
    if page is not None and page.expect not in response.text:
        raise RuntimeError(f"GET {url}: the page does not mention {page.expect!r}")
    return elapsed


class EndpointClock:
    """The CPU time spent in endpoint functions since `take()`. FastAPI runs a plain `def`
    endpoint in a worker thread, so the clock is read there, around FastAPI's one call site of
    such endpoints; the other helpers' load on a shared machine adds wait, not CPU time."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.original = fastapi.routing._run_sync_endpoint

    def __enter__(self) -> Self:
        def clocked(*, function: Callable[..., Any], arguments: dict[str, Any]) -> Any:
            started = time.thread_time()
            try:
                return self.original(function=function, arguments=arguments)
            finally:
                self.spent += time.thread_time() - started

        fastapi.routing._run_sync_endpoint = clocked  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        fastapi.routing._run_sync_endpoint = self.original  # type: ignore[assignment]

    def take(self) -> float:
        spent, self.spent = self.spent, 0.0
        return spent


def measure(
    client: TestClient, clock: EndpointClock, page: Page, warmup: int, requests: int
) -> Figure:
    first = timed_get(client, page.url, page)
    for _ in range(warmup):
        timed_get(client, page.url, page)
        if page.api:
            timed_get(client, page.api)
        timed_get(client, FLOOR)
    times: list[float] = []
    cpu_times: list[float] = []
    handler_times: list[float] = []
    api_times: list[float] = []
    floor_times: list[float] = []
    for _ in range(requests):
        clock.take()
        times.append(timed_get(client, page.url, page, cpu_times))
        handler_times.append(clock.take())
        if page.api:
            api_times.append(timed_get(client, page.api))
        floor_times.append(timed_get(client, FLOOR))
    return Figure(page, times, cpu_times, handler_times, api_times, floor_times, first)


def profile_page(client: TestClient, page: Page, requests: int, out: Path) -> str:
    """cProfile of the endpoint over `requests` requests of the page. FastAPI runs a plain
    `def` endpoint in a worker thread, where a profiler switched on in this thread sees
    nothing, so its one call site of such endpoints switches the profiler on around each."""
    profiler = cProfile.Profile()
    original = fastapi.routing._run_sync_endpoint

    def profiled(*, function: Callable[..., Any], arguments: dict[str, Any]) -> Any:
        return profiler.runcall(original, function=function, arguments=arguments)

    fastapi.routing._run_sync_endpoint = profiled  # type: ignore[assignment]
    try:
        for _ in range(requests):
            timed_get(client, page.url, page)
    finally:
        fastapi.routing._run_sync_endpoint = original  # type: ignore[assignment]
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats(30)
    slug = "".join(c if c.isalnum() else "-" for c in page.name).strip("-")
    path = out.with_name(f"{out.name}-{slug}.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{requests} x GET {page.url}\n{text.getvalue()}", encoding="utf-8")
    return str(path)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'page':<30} {'median':>8} {'p95':>8} {'cpu':>6} {'handler':>7} {'first':>8}"
        f"   {'GET /v1/':>8} {'x':>6}   {'API':>7} {'x':>5}  target"
    )
    for row in rows:
        api = (
            f"{row['api_ms']:>7.1f} {row['x_api']:>5.2f}" if row["api_ms"] is not None else " " * 13
        )
        verdict = "ok" if row["passed"] else "OVER"
        print(
            f"{row['page']:<30} {row['median_ms']:>8.1f} {row['p95_ms']:>8.1f}"
            f" {row['cpu_ms']:>6.1f} {row['handler_cpu_ms']:>7.1f} {row['first_ms']:>8.1f}"
            f"   {row['floor_ms']:>8.1f} {row['x_floor']:>6.1f}"
            f"   {api}  {verdict}"
        )
    print(
        "(ms; cpu = the process's CPU time, handler = the endpoint's, medians, which a busy"
        " machine inflates less than the wall time; x = page median / baseline median;"
        " target: median and p95 <= 100 ms)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--rows", type=int, default=1_000_000, help="run log rows (0: none)")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--key", default=None, help="the prompt of the per-prompt pages")
    parser.add_argument("--query", default="patient", help="the search of `/?q=`")
    parser.add_argument("--diff", type=int, nargs=2, default=(3, 17), metavar=("FROM", "TO"))
    parser.add_argument("--traces", action="store_true", help="time /traces and /traces/{id}")
    parser.add_argument("--fresh", action="store_true", help="generate the data again")
    parser.add_argument("--profile", type=Path, default=None, metavar="PREFIX")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "web_pages.json")
    args = parser.parse_args()
    if max(args.diff) > args.versions or min(args.diff) < 1:
        parser.error(f"--diff {args.diff} is outside versions 1..{args.versions}")
    repo = prepare(args.prompts, args.versions, args.rows, args.fresh)
    key = args.key or prompt_key(min(1, args.prompts - 1))
    app = create_app(Settings.resolve(repo, watch=False))
    _, admin = app.state.ws.keys.create("bench web pages", "admin")
    figures: list[Figure] = []
    profiles: list[str] = []
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} cpus, load {load:.2f}; key {key}", flush=True)
    with (
        TestClient(app, headers={"Authorization": f"Bearer {admin}"}) as client,
        EndpointClock() as clock,
    ):
        for page in pages_to_time(app, key, args.query, tuple(args.diff), args.traces):
            print(f"{page.name} ...", flush=True)
            figure = measure(client, clock, page, args.warmup, args.requests)
            figures.append(figure)
            if args.profile and not figure.passed():
                profiles.append(profile_page(client, page, args.requests, args.profile))
    rows = [figure.row() for figure in figures]
    print_table(rows)
    for path in profiles:
        print(f"profile: {path}")
    report = {
        "prompts": args.prompts,
        "versions": args.versions,
        "rows": args.rows,
        "requests": args.requests,
        "key": key,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "how": "in process: create_app over starlette's TestClient, admin bearer key",
        "pages": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.out}")
    return 0 if all(figure.passed() for figure in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
