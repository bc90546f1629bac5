"""Benchmark of `llmkit eval`: 1,000 cases against a fake OpenAI-compatible upstream.

Run by hand, never by the test suite:

    python bench/evals.py                 # 3 rounds, the fast asyncio fake upstream
    python bench/evals.py --rounds 5 --upstream tests   # tests/fake_upstream.py's threaded server

Set-up: a temporary prompt repository (committed) with a handful of prompts whose `model:` is an
alias in llmkit.yaml pointing at the fake upstream on 127.0.0.1, and 1,000 eval cases (10 files
of 100; `contains`, `icontains` and `max-latency-ms` assertions). The upstream runs in its own
process (bench/eval_upstream.py), answers `ok: <last user message>` and counts the chat requests
it receives.

Figures, each the median of the rounds and set against a baseline measured in the same round
(the machine may be shared and noisy):

1. `llmkit eval -j 16` with a fresh `.llmkit/` (no cache, no index): wall time; baseline the
   same 1,000 request bodies (recorded at the fake) replayed with httpx at concurrency 16 by a
   fresh Python process (bench/eval_direct.py). Also `--no-cache` on a warm `.llmkit/`, and the
   same replay with aiohttp (how much of the baseline is the HTTP client, not the upstream).
2. The same run again, answered from the response cache (the fake must see zero requests);
   baseline a bare Python process reading and decoding the 1,000 cached rows from SQLite.
3. Start-up: process spawn to the fake receiving its first request; baselines `python -c pass`
   and `python -m llmkit --help`.

CPU seconds (user + system, from rusage) are reported beside the wall times: on a loaded machine
they move much less. Then the phases of one eval timed in a fresh process without a profiler,
the slowest imports, and one `--no-cache` run and one cached run under cProfile with llmkit's
own hot spots per case. Results go to bench/results/: evals.json and evals_profile.txt.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import re
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
GIT_IDENTITY = ("-c", "user.name=Bench", "-c", "user.email=bench@example.com")
UPSTREAM_START_TIMEOUT_S = 20.0
COMMAND_TIMEOUT_S = 30.0
EVAL_TIMEOUT_S = 300.0  # one `llmkit eval` run; far above any expected figure
QUICK_TIMEOUT_S = 60.0
TONES = ("friendly", "formal", "terse", "patient", "precise")
COMPANIES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli")
TOPICS = (
    "billing",
    "shipping",
    "returns",
    "onboarding",
    "security",
    "pricing",
    "outages",
    "accounts",
)


# -- the prompt repository -------------------------------------------------------------------


def prompt_text(index: int) -> str:
    return (
        "---\n"
        "model: fast\n"
        f"description: Eval benchmark prompt {index}\n"
        "temperature: 0.2\n"
        "max_tokens: 256\n"
        "---\n"
        "<!-- role:system -->\n"
        "You are a {{ tone }} support assistant for {{ company }}.\n"
        "{% if topic %}The customer asks about {{ topic }};"
        " answer in one short paragraph.{% endif %}\n"
        "\n"
        "<!-- role:user -->\n"
        "{{ question }}\n"
    )


def eval_file_text(prompt: int, part: int, cases: int) -> str:
    """One eval file: file-level vars and a latency assertion, then `cases` cases whose answer
    (the fake echoes the last user message) must contain the case's own token."""
    lines = [
        "vars:",
        f"  tone: {TONES[prompt % len(TONES)]}",
        f"  company: {COMPANIES[prompt % len(COMPANIES)]}",
        "assert:",
        "  - {type: max-latency-ms, value: 30000}",
        "cases:",
    ]
    for n in range(cases):
        token = f"item-{prompt}-{part}-{n:04d}"
        topic = TOPICS[(part * cases + n) % len(TOPICS)]
        lines += [
            f"  - name: case {part}-{n:04d}",
            f"    vars: {{topic: {topic}}}",
            f'    user_vars: {{question: "How do I sort out {topic} for {token}?"}}',
            "    assert:",
            f"      - {{type: contains, value: {token}}}",
            f"      - {{type: icontains, value: {topic.upper()}}}",
        ]
    return "\n".join(lines) + "\n"


def llmkit_yaml(url: str) -> str:
    return (
        "models:\n"
        "  default:\n"
        "    model: echo\n"
        "  fast:\n"
        "    model: openai/fake\n"
        f"    api_base: {url}\n"
        "    api_key_env: FAKE_KEY\n"
    )


def git(repo: Path, *args: str) -> str:
    cmd = ["git", *GIT_IDENTITY, *args]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, timeout=QUICK_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"git {args[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode().strip()


def make_repo(root: Path, url: str, prompts: int, files: int, cases_per_file: int) -> int:
    """A committed prompt repository; returns the number of eval cases."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text(".llmkit/\n", "utf-8")
    (root / "llmkit.yaml").write_text(llmkit_yaml(url), "utf-8")
    for p in range(prompts):
        path = root / "prompts" / "bench" / f"p{p}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(prompt_text(p), "utf-8")
    for f in range(files):
        prompt, part = f % prompts, f // prompts
        path = root / "evals" / "bench" / f"p{prompt}" / f"part-{part}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(eval_file_text(prompt, part, cases_per_file), "utf-8")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "Eval benchmark prompts and cases")
    return files * cases_per_file


# -- the fake upstream -------------------------------------------------------------------------


class Upstream:
    """bench/eval_upstream.py in its own process, driven over its stdin and stdout."""

    def __init__(self, kind: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "eval_upstream.py"), "--kind", kind],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
        )
        hello = self._read_line(UPSTREAM_START_TIMEOUT_S)
        self.url: str = hello["url"]

    def _read_line(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            raise RuntimeError(f"the fake upstream did not answer within {timeout_s:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fake upstream exited (code {self.proc.poll()})")
        return json.loads(line)

    def command(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()
        return self._read_line(COMMAND_TIMEOUT_S)

    def stats(self) -> dict[str, Any]:
        return self.command("stats")

    def reset(self) -> None:
        self.command("reset")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.command("quit")
                self.proc.wait(timeout=5)
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)


# -- running things ----------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LLMKIT_") and k != "GITHUB_STEP_SUMMARY"
    }
    env.update({"PYTHONPATH": str(PROJECT_ROOT), "FAKE_KEY": "x", **extra})
    return env


SUMMARY = re.compile(
    r"(\d+)/(\d+) cases passed, (\d+) regression\(s\), (\d+)/(\d+) runs from cache"
)


@dataclass
class EvalRun:
    wall: float
    cpu: float  # user + system seconds of the llmkit process
    upstream_cpu: float  # CPU seconds the fake spent meanwhile
    startup: float | None  # spawn -> first request at the fake
    requests: int
    exit_code: int
    passed: int
    cases: int
    cached_runs: int
    summary: str  # llmkit's closing line, or the tail of its output when that is missing


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_eval(
    repo: Path, upstream: Upstream, jobs: int, *extra: str, prefix: tuple[str, ...] = ()
) -> EvalRun:
    """One `llmkit eval` in a fresh process, its output in files (as CI logs would take it)."""
    upstream.reset()
    cmd = [
        sys.executable,
        *prefix,
        "-m",
        "llmkit",
        "eval",
        "--repo",
        str(repo),
        "-j",
        str(jobs),
        *extra,
    ]
    out_path, err_path = repo.parent / "eval.stdout", repo.parent / "eval.stderr"
    upstream_cpu = upstream.stats()["cpu"]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        cpu = children_cpu()
        started = time.monotonic()
        proc = subprocess.run(
            cmd, cwd=repo, stdout=out, stderr=err, env=child_env(), timeout=EVAL_TIMEOUT_S
        )
        wall = time.monotonic() - started
        cpu = children_cpu() - cpu
    stats = upstream.stats()
    # rich wraps the closing line at the console width, so search the whole output.
    text = " ".join(out_path.read_text("utf-8", errors="replace").split())
    found = SUMMARY.search(text)
    summary = (
        found.group(0) if found else err_path.read_text("utf-8", errors="replace")[-500:].strip()
    )
    passed, cases, cached = (int(found.group(n)) for n in (1, 2, 4)) if found else (0, 0, 0)
    startup = stats["first"] - started if stats["first"] is not None else None
    return EvalRun(
        wall,
        cpu,
        stats["cpu"] - upstream_cpu,
        startup,
        stats["chat"],
        proc.returncode,
        passed,
        cases,
        cached,
        summary,
    )


def run_quiet(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, float, str]:
    """(wall, CPU, stdout) of a subprocess that must succeed."""
    cpu = children_cpu()
    started = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, env=env or child_env(), timeout=QUICK_TIMEOUT_S
    )
    elapsed = time.monotonic() - started
    cpu = children_cpu() - cpu
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {tail}")
    return elapsed, cpu, proc.stdout.decode(errors="replace")


@dataclass
class Direct:
    wall: float  # the whole process: start-up, import httpx, send
    send: float  # sending only
    cpu: float
    upstream_cpu: float
    requests: int


def direct_baseline(upstream: Upstream, bodies: Path, jobs: int, client: str = "httpx") -> Direct:
    """Replaying the recorded bodies from a fresh process."""
    upstream.reset()
    upstream_cpu = upstream.stats()["cpu"]
    cmd = [
        sys.executable,
        str(BENCH_DIR / "eval_direct.py"),
        upstream.url,
        str(bodies),
        "--jobs",
        str(jobs),
        "--client",
        client,
    ]
    wall, cpu, out = run_quiet(cmd, PROJECT_ROOT)
    stats = upstream.stats()
    result = json.loads(out.strip().splitlines()[-1])
    return Direct(wall, result["send_s"], cpu, stats["cpu"] - upstream_cpu, stats["chat"])


CACHE_FLOOR = """
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
rows = conn.execute("SELECT key, response, latency_ms FROM response_cache").fetchall()
decoded = {key: json.loads(response) for key, response, _ in rows}
print(len(decoded))
"""


def cache_floor(db_path: Path) -> tuple[float, float, int]:
    """(wall, CPU, rows) of a bare Python process reading and decoding every cached response."""
    wall, cpu, out = run_quiet([sys.executable, "-c", CACHE_FLOOR, str(db_path)], PROJECT_ROOT)
    return wall, cpu, int(out.strip())


# -- one round ---------------------------------------------------------------------------------


@dataclass
class Round:
    fresh: EvalRun
    cached: EvalRun
    warm_no_cache: EvalRun
    direct: Direct
    direct_aiohttp: Direct
    cache_floor: float
    cache_floor_cpu: float
    cache_rows: int
    python_pass: float
    python_pass_cpu: float
    llmkit_help: float
    llmkit_help_cpu: float


def one_round(repo: Path, upstream: Upstream, jobs: int, bodies: Path) -> Round:
    """Every figure once, the baselines interleaved with the runs they are set against."""
    shutil.rmtree(repo / ".llmkit", ignore_errors=True)
    fresh = run_eval(repo, upstream, jobs)
    if not bodies.exists():
        upstream.command(f"bodies {bodies}")
    direct = direct_baseline(upstream, bodies, jobs)
    direct_aiohttp = direct_baseline(upstream, bodies, jobs, "aiohttp")
    cached = run_eval(repo, upstream, jobs)
    floor, floor_cpu, rows = cache_floor(repo / ".llmkit" / "llmkit.db")
    python_pass, python_pass_cpu, _ = run_quiet([sys.executable, "-c", "pass"], PROJECT_ROOT)
    warm = run_eval(repo, upstream, jobs, "--no-cache")
    llmkit_help, llmkit_help_cpu, _ = run_quiet(
        [sys.executable, "-m", "llmkit", "--help"], PROJECT_ROOT
    )
    return Round(
        fresh,
        cached,
        warm,
        direct,
        direct_aiohttp,
        floor,
        floor_cpu,
        rows,
        python_pass,
        python_pass_cpu,
        llmkit_help,
        llmkit_help_cpu,
    )


def check_round(r: Round, cases: int) -> list[str]:
    problems = []
    expected = (
        ("fresh", r.fresh, cases),
        ("cached", r.cached, 0),
        ("--no-cache", r.warm_no_cache, cases),
    )
    for name, run, want in expected:
        if run.exit_code != 0:
            problems.append(f"{name} run exited {run.exit_code}: {run.summary}")
        if run.requests != want:
            problems.append(
                f"{name} run: the fake saw {run.requests} chat requests, expected {want}"
            )
        if run.passed != cases or run.cases != cases:
            problems.append(
                f"{name} run: {run.passed}/{run.cases} cases passed,"
                f" expected {cases}/{cases}: {run.summary!r}"
            )
    if r.cached.cached_runs != cases:
        problems.append(f"cached run: {r.cached.cached_runs}/{cases} runs came from the cache")
    if r.fresh.cached_runs or r.warm_no_cache.cached_runs:
        problems.append(
            f"uncached runs read the cache: fresh {r.fresh.cached_runs},"
            f" --no-cache {r.warm_no_cache.cached_runs}"
        )
    for name, direct in (("httpx", r.direct), ("aiohttp", r.direct_aiohttp)):
        if direct.requests != cases:
            problems.append(
                f"{name} baseline: the fake saw {direct.requests} requests, expected {cases}"
            )
    if r.cache_rows != cases:
        problems.append(f"response cache holds {r.cache_rows} rows, expected {cases}")
    return problems


# -- start-up phases ---------------------------------------------------------------------------

# What `llmkit eval` does, step by step, in a fresh process without a profiler: the steps of
# llmkit/cli_eval.py's _run and EvalRunner.run, then per-case steps timed apart for scale.
PHASES = """
import asyncio, io, json, sys, time
started = time.perf_counter()
marks = []
def mark(name):
    marks.append((name, time.perf_counter()))
import llmkit.cli, llmkit.cli_eval
mark("import llmkit.cli + cli_eval (click)")
from llmkit import providers
from llmkit.evals.records import EvalRecords, cache_key
from llmkit.evals.console import render_table
from llmkit.evals.results import build_report
from llmkit.evals.runner import EvalRunner, RunOptions
from llmkit.evals.spec import load_evals
from llmkit.execute import Executor
from llmkit.providers import openai_wire
from llmkit.workspace import Workspace
mark("import eval modules (runner, execute, providers, HTTP client)")
ws = Workspace.open(sys.argv[1])
mark("Workspace.open (settings)")
ws.index.sync()
mark("index.sync()")
cases, problems = load_evals(ws.settings.repo)
mark(f"load_evals ({len(cases)} cases)")
ws.runlog.start()
records = EvalRecords(ws.db)
runner = EvalRunner(Executor(ws, ws.models, ws.runlog), records, RunOptions(concurrency=16))
mark("runlog.start + EvalRecords (migrations)")
versions = [ws.index.version(c.prompt_key, None) for c in cases]
mark("index.version per case (EvalRunner.run's job list)")
base_url = runner._prepare(cases[0], versions[0]).call.api_base.rstrip("/")
pooled = getattr(openai_wire, "session_for", None) or getattr(openai_wire, "client_for", None)
async def run_all():
    if pooled is not None:
        pooled(base_url)
    mark(f"first pooled HTTP client (openai_wire.{getattr(pooled, '__name__', '?')}; \
only on a cache miss)")
    results = await runner.run(cases)
    mark("EvalRunner.run, all cases")
    await providers.aclose()
    return results
results = asyncio.run(run_all())
report = build_report(results, None, None)
mark("build_report")
from rich.console import Console
Console(file=io.StringIO(), width=80).print(render_table(report))
mark("render_table + rich print, 80 columns")
records.save_run(results, None, source="cli", summary=report.counts())
mark("records.save_run")
ws.runlog.close()
mark("runlog.close (flush)")
executions = [runner._prepare(c, v) for c, v in zip(cases, versions)]
mark("apart: EvalRunner._prepare per case")
keys = [cache_key(e.call.model, e.call.messages, {**e.call.params, "_repeat": 0}, e.call.api_base) \
for e in executions]
mark("apart: cache_key per case")
hits = [records.cached(k) for k in keys]
mark(f"apart: records.cached per case ({sum(h is not None for h in hits)} hits)")
ws.close()
previous = started
out = []
for name, at in marks:
    out.append([name, at - previous])
    previous = at
print(json.dumps({"phases": out, "cached_runs": sum(r.cached for r in results), \
"passed": sum(r.passed for r in results)}))
"""
STARTUP_PHASES = 8  # the first PHASES steps happen before the first request


def wire_client() -> str:
    """Which HTTP client llmkit's wire path uses in this working tree."""
    source = (PROJECT_ROOT / "llmkit" / "providers" / "openai_wire.py").read_text("utf-8")
    found = [
        name
        for name in ("aiohttp", "httpx")
        if re.search(rf"^import {name}\b", source, re.MULTILINE)
    ]
    return "+".join(found) or "unknown"


def phases(
    repo: Path, data_dir: Path | None, cases: int, problems: list[str]
) -> list[tuple[str, float]]:
    """PHASES in a fresh process: with `data_dir`, a new (empty) one; else the repository's."""
    env = child_env(**({"LLMKIT_DATA_DIR": str(data_dir)} if data_dir else {}))
    _, _, out = run_quiet([sys.executable, "-c", PHASES, str(repo)], repo, env)
    result = json.loads(out.strip().splitlines()[-1])
    want_cached = 0 if data_dir else cases
    if result["passed"] != cases or result["cached_runs"] != want_cached:
        problems.append(
            f"phases ({'fresh' if data_dir else 'warm'}): {result['passed']}/{cases} passed,"
            f" {result['cached_runs']} from cache, expected {want_cached}"
        )
    return [(name, seconds) for name, seconds in result["phases"]]


def median_phases(runs: list[list[tuple[str, float]]]) -> list[tuple[str, float]]:
    return [
        (name, statistics.median(run[i][1] for run in runs)) for i, (name, _) in enumerate(runs[0])
    ]


def slowest_imports(repo: Path, top: int = 10) -> list[str]:
    """The slowest imports of the eval path, by cumulative time (python -X importtime)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PHASES, str(repo)],
        cwd=repo,
        capture_output=True,
        env=child_env(),
        text=True,
        timeout=QUICK_TIMEOUT_S,
    )
    rows = []
    for line in proc.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if line.startswith("import time:") and len(fields) == 3 and fields[0].strip().isdigit():
            rows.append((int(fields[1]), int(fields[0]), fields[2].rstrip()))
    rows.sort(reverse=True)
    return [
        f"{cum / 1000:7.1f} ms cumulative {own / 1000:6.1f} ms self {name}"
        for cum, own, name in rows[:top]
    ]


# -- profile -----------------------------------------------------------------------------------


def profile_run(repo: Path, upstream: Upstream, jobs: int, out: Path, *extra: str) -> EvalRun:
    return run_eval(repo, upstream, jobs, *extra, prefix=("-m", "cProfile", "-o", str(out)))


def hot_spots(prof: Path, cases: int, top: int) -> tuple[list[str], list[str], str]:
    """llmkit's own functions by own time and by cumulative time (both per case), and the
    profile's text. Cumulative time counts what a function calls in other libraries (yaml,
    rich, httpx), which is where most of it goes; for coroutines it counts each resumption."""
    text = io.StringIO()
    stats = pstats.Stats(str(prof), stream=text)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (filename, line, name), (_, calls, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        if f"{os.sep}llmkit{os.sep}" in filename:
            rel = filename.split(f"{os.sep}llmkit{os.sep}", 1)[1]
            rows.append((tt, ct, calls, f"llmkit/{rel}:{line}({name})"))
    header = f"{'own/case':>9} {'cum/case':>9} {'calls':>7}  function"

    def fmt(row: tuple[float, float, int, str]) -> str:
        tt, ct, calls, where = row
        return f"{tt / cases * 1e6:7.0f}us {ct / cases * 1e6:7.0f}us {calls:7d}  {where}"

    by_own = [header] + [fmt(r) for r in sorted(rows, reverse=True)[:top]]
    by_own.append(
        f"(all of the profile: {total:.2f} s = {total / cases * 1e3:.2f} ms per case;"
        f" llmkit's own code: {sum(r[0] for r in rows):.2f} s)"
    )
    by_cum = [header] + [fmt(r) for r in sorted(rows, key=lambda r: r[1], reverse=True)[:top]]
    stats.sort_stats("cumulative").print_stats(50)
    stats.sort_stats("tottime").print_stats(40)
    return by_own, by_cum, text.getvalue()


# -- report ------------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: float | None
    baseline: float | None
    target: float | None
    baseline_name: str = ""
    note: str = ""
    values: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.value is not None and self.baseline else None

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        return self.value is not None and self.value <= self.target


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.0f} ms"


def build_rows(rounds: list[Round], cases: int) -> list[Row]:
    def col(get: Any) -> list[Any]:
        return [get(r) for r in rounds]

    def med(get: Any) -> float | None:
        return median(col(get))

    fresh, warm, cached = (
        med(lambda r: r.fresh.wall),
        med(lambda r: r.warm_no_cache.wall),
        med(lambda r: r.cached.wall),
    )
    httpx_wall, httpx_send = med(lambda r: r.direct.wall), med(lambda r: r.direct.send)
    aiohttp_wall = med(lambda r: r.direct_aiohttp.wall)
    help_, bare = med(lambda r: r.llmkit_help), med(lambda r: r.python_pass)
    startup_fresh, startup_warm = (
        med(lambda r: r.fresh.startup),
        med(lambda r: r.warm_no_cache.startup),
    )
    fake_cpu = f"fake upstream CPU {fmt_seconds(med(lambda r: r.fresh.upstream_cpu))}"
    httpx_note = (
        f"httpx send only {fmt_seconds(httpx_send)}, fake upstream CPU"
        f" {fmt_seconds(med(lambda r: r.direct.upstream_cpu))}"
    )
    aiohttp_note = (
        f"aiohttp send only {fmt_seconds(med(lambda r: r.direct_aiohttp.send))}, fake upstream CPU"
        f" {fmt_seconds(med(lambda r: r.direct_aiohttp.upstream_cpu))}"
    )
    max_cached_requests = max(col(lambda r: r.cached.requests))
    spawn = "spawn -> first request at the fake"
    rows = [
        Row(
            "1. eval -j16, fresh .llmkit",
            fresh,
            httpx_wall,
            10.0,
            "httpx replay, fresh process",
            f"{fake_cpu}; {httpx_note}",
            col(lambda r: r.fresh.wall),
        ),
        Row(
            "1b. eval -j16 --no-cache, warm",
            warm,
            httpx_wall,
            10.0,
            "httpx replay, fresh process",
            "",
            col(lambda r: r.warm_no_cache.wall),
        ),
        Row(
            "1c. eval -j16, fresh, vs aiohttp",
            fresh,
            aiohttp_wall,
            None,
            "aiohttp replay, fresh process",
            aiohttp_note,
            col(lambda r: r.direct_aiohttp.wall),
        ),
        Row(
            "2. eval -j16 from cache",
            cached,
            med(lambda r: r.cache_floor),
            2.0,
            "python reading+decoding the cache rows",
            f"the fake saw {max_cached_requests} requests (max over rounds)",
            col(lambda r: r.cached.wall),
        ),
        Row(
            "3. start-up, fresh .llmkit",
            startup_fresh,
            help_,
            1.0,
            "llmkit --help",
            spawn,
            col(lambda r: r.fresh.startup),
        ),
        Row(
            "3b. start-up, warm .llmkit",
            startup_warm,
            help_,
            1.0,
            "llmkit --help",
            spawn,
            col(lambda r: r.warm_no_cache.startup),
        ),
        Row("3c. start-up, warm, vs python", startup_warm, bare, None, "python -c pass"),
        Row("llmkit --help", help_, bare, None, "python -c pass", "", col(lambda r: r.llmkit_help)),
        Row(
            "CPU 1. fresh run",
            med(lambda r: r.fresh.cpu),
            med(lambda r: r.direct.cpu),
            None,
            "httpx replay process",
        ),
        Row(
            "CPU 1. fresh run, vs aiohttp",
            med(lambda r: r.fresh.cpu),
            med(lambda r: r.direct_aiohttp.cpu),
            None,
            "aiohttp replay process",
        ),
        Row(
            "CPU 1b. --no-cache, warm",
            med(lambda r: r.warm_no_cache.cpu),
            med(lambda r: r.direct.cpu),
            None,
            "httpx replay process",
        ),
        Row(
            "CPU 2. from cache",
            med(lambda r: r.cached.cpu),
            med(lambda r: r.cache_floor_cpu),
            None,
            "python reading+decoding the cache rows",
        ),
        Row(
            "CPU llmkit --help",
            med(lambda r: r.llmkit_help_cpu),
            med(lambda r: r.python_pass_cpu),
            None,
            "python -c pass",
        ),
    ]
    if fresh is not None and httpx_send:
        rows.append(
            Row(
                "per case, fresh run (wall)",
                fresh / cases,
                httpx_send / cases,
                None,
                "httpx send per request",
            )
        )
    return rows


def print_table(rows: list[Row]) -> None:
    header = ("figure", "value", "baseline", "ratio", "target", "result")
    lines = [header]
    for row in rows:
        ratio = f"{row.ratio:.1f}x" if row.ratio is not None else "-"
        target = f"<= {fmt_seconds(row.target)}" if row.target is not None else "-"
        result = "-" if row.passed is None else ("pass" if row.passed else "FAIL")
        lines.append(
            (row.figure, fmt_seconds(row.value), fmt_seconds(row.baseline), ratio, target, result)
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for row in rows:
        rounds = f"rounds {', '.join(fmt_seconds(v) for v in row.values)}" if row.values else ""
        baseline = f"baseline {row.baseline_name}" if row.baseline_name else ""
        details = "; ".join(part for part in (baseline, row.note, rounds) if part)
        if details:
            print(f"  {row.figure}: {details}")


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument("--jobs", type=int, default=16, help="llmkit eval -j (default 16)")
    parser.add_argument("--prompts", type=int, default=5, help="prompts (default 5)")
    parser.add_argument("--files", type=int, default=10, help="eval files (default 10)")
    parser.add_argument(
        "--cases-per-file", type=int, default=100, help="cases per eval file (default 100)"
    )
    parser.add_argument(
        "--upstream", choices=("fast", "tests"), default="fast", help="fake upstream (default fast)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile runs")
    parser.add_argument("--top", type=int, default=20, help="hot spots to list (default 20)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="results folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 50:
        parser.error("--rounds must be 1..50")

    work = Path(tempfile.mkdtemp(prefix="llmkit-evals-bench-"))
    upstream: Upstream | None = None
    rounds: list[Round] = []
    problems: list[str] = []
    hot: list[str] = []
    hot_cum: list[str] = []
    hot_cached: list[str] = []
    hot_cached_cum: list[str] = []
    fresh_phases: list[list[tuple[str, float]]] = []
    warm_phases: list[list[tuple[str, float]]] = []
    imports: list[str] = []
    profile_text = ""
    client = wire_client()
    try:
        upstream = Upstream(args.upstream)
        repo = work / "repo"
        cases = make_repo(repo, upstream.url, args.prompts, args.files, args.cases_per_file)
        print(
            f"{cases} cases in {args.files} files over {args.prompts} prompts;"
            f" upstream {args.upstream} at {upstream.url};"
            f" llmkit's wire path on {client}; {os.cpu_count()} cpus,"
            f" load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        bodies = work / "bodies.jsonl"
        run_quiet([sys.executable, "-m", "llmkit", "--help"], PROJECT_ROOT)  # warm the page cache
        for n in range(args.rounds):
            r = one_round(repo, upstream, args.jobs, bodies)
            rounds.append(r)
            problems += [f"round {n + 1}: {p}" for p in check_round(r, cases)]
            print(
                f"round {n + 1}/{args.rounds}: fresh {r.fresh.wall:.2f} s,"
                f" cached {r.cached.wall:.2f} s,"
                f" --no-cache {r.warm_no_cache.wall:.2f} s, httpx {r.direct.wall:.2f} s"
                f" (send {r.direct.send:.2f} s),"
                f" start-up {fmt_seconds(r.fresh.startup)}"
                f" / {fmt_seconds(r.warm_no_cache.startup)};"
                f" load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        print("start-up phases ...", flush=True)
        fresh_phases = [
            phases(repo, work / f"phases-{n}", cases, problems) for n in range(args.rounds)
        ]
        warm_phases = [phases(repo, None, cases, problems) for _ in range(args.rounds)]
        imports = slowest_imports(repo)
        if not args.no_profile:
            print("profiling ...", flush=True)
            prof = work / "eval.prof"
            run = profile_run(repo, upstream, args.jobs, prof, "--no-cache")
            if run.exit_code != 0 or run.requests != cases:
                problems.append(
                    f"profiled run: exit {run.exit_code}, {run.requests} requests: {run.summary}"
                )
            hot, hot_cum, profile_text = hot_spots(prof, cases, args.top)
            prof_cached = work / "eval-cached.prof"
            run_cached = profile_run(repo, upstream, args.jobs, prof_cached)
            if run_cached.exit_code != 0 or run_cached.requests != 0:
                problems.append(
                    f"profiled cached run: exit {run_cached.exit_code},"
                    f" {run_cached.requests} requests"
                )
            hot_cached, hot_cached_cum, cached_text = hot_spots(prof_cached, cases, args.top)
            profile_text = (
                f"llmkit eval -j {args.jobs} --no-cache over {cases} cases"
                f" (wall under cProfile {run.wall:.2f} s)\n"
                f"{profile_text}\n\nllmkit eval -j {args.jobs} from the cache (wall under cProfile"
                f" {run_cached.wall:.2f} s)\n{cached_text}"
            )
    finally:
        if upstream is not None:
            upstream.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = build_rows(rounds, cases)
    print()
    print_table(rows)
    if fresh_phases and warm_phases:
        print(
            f"\nphases of an eval in one process (perf_counter, median of {len(warm_phases)};"
            f" the first {STARTUP_PHASES}"
            " come before the first request; fresh: no index, no cache; warm: cache filled):"
        )
        print(f"  {'fresh .llmkit':>13} {'warm .llmkit':>13}  step")
        for n, ((name, fresh_s), (_, warm_s)) in enumerate(
            zip(median_phases(fresh_phases), median_phases(warm_phases))
        ):
            if n == STARTUP_PHASES:
                print(
                    f"  {'-' * 13} {'-' * 13}"
                    f"  (the run, then per-case steps timed apart, all {cases} cases)"
                )
            print(f"  {fmt_seconds(fresh_s):>13} {fmt_seconds(warm_s):>13}  {name}")
    if imports:
        print("\nslowest imports on the eval path (python -X importtime):")
        print("\n".join(f"  {line}" for line in imports[:8]))
    for title, lines in (
        ("--no-cache run, llmkit functions by own time", hot),
        ("--no-cache run, llmkit functions by cumulative time", hot_cum),
        ("cached run, llmkit functions by own time", hot_cached[: args.top // 2 + 2]),
        ("cached run, llmkit functions by cumulative time", hot_cached_cum[: args.top // 2 + 2]),
    ):
        if lines:
            print(f"\n{title}, per case (profile: {args.out / 'evals_profile.txt'}):")
            print("\n".join(f"  {line}" for line in lines))
    print(
        "\ncorrectness checks: " + ("all passed" if not problems else f"{len(problems)} problem(s)")
    )
    for problem in problems:
        print(f"  - {problem}")
    args.out.mkdir(parents=True, exist_ok=True)
    if profile_text:
        (args.out / "evals_profile.txt").write_text(profile_text, encoding="utf-8")
    results = {
        "cases": cases,
        "upstream": args.upstream,
        "wire_client": client,
        "rounds": [asdict(r) for r in rounds],
        "rows": [{**asdict(row), "ratio": row.ratio, "passed": row.passed} for row in rows],
        "problems": problems,
        "startup_phases_fresh": fresh_phases,
        "startup_phases_warm": warm_phases,
        "imports": imports,
        "hot_spots": {
            "own": hot,
            "cumulative": hot_cum,
            "cached_own": hot_cached,
            "cached_cumulative": hot_cached_cum,
        },
    }
    (args.out / "evals.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    failed = any(row.passed is False for row in rows) or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
