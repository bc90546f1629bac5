"""Benchmarks of the index core: rebuild, incremental sync, watcher latency, CLI start-up.

Run by hand, never by the test suite:

    python bench/index.py                      # generates a 1,000 x 20 repository in a temp dir
    python bench/index.py --repo DIR --runs 5  # a copy (clone) of DIR; DIR itself is never written

The machine may be shared and noisy, so every figure is the median of several runs, and each is
set against a baseline measured in the same run, interleaved with it (`git log --name-only` for
the rebuild, `git rev-parse HEAD` for a sync, `python -c pass` for `llmkit --help`). Results go
to bench/results/: index.json, and the rebuild's cProfile (top 25 by cumulative time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
for folder in (PROJECT_ROOT, BENCH_DIR):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from gen_repo import generate, prompt_text

from llmkit.db import Database
from llmkit.index import Index
from llmkit.store import GitStore, blob_id
from llmkit.watch import Watcher

GIT_IDENTITY = ("-c", "user.name=Bench", "-c", "user.email=bench@example.com")
POLL_S = 0.002
SERVE_TIMEOUT_S = 5.0


@dataclass
class Row:
    figure: str
    value: float | None  # seconds
    baseline: float | None  # seconds
    target: float | None  # seconds; the value must be at most this
    baseline_name: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        return self.value is not None and self.value <= self.target


# -- measuring -----------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_quiet(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Wall time of a subprocess whose output is read (as a caller would), failing loudly."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, env=env)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}:"
            f" {proc.stderr.decode(errors='replace')[-2000:]}"
        )
    return elapsed


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[rank]


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=repo, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {args[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode().strip()


def open_index(repo: Path, data_dir: Path) -> tuple[Index, Database]:
    """An Index on a fresh (or existing) database in `data_dir`, outside the repository."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(data_dir / "llmkit.db")
    store = GitStore(repo, lock_path=data_dir / "write.lock")
    return Index(store, db), db


# -- (a) full rebuild ----------------------------------------------------------------------


def bench_rebuild(repo: Path, work: Path, runs: int) -> tuple[list[Row], list[str]]:
    rebuilds: list[float] = []
    baselines: list[float] = []
    run_quiet(["git", "log", "--name-only"], repo)  # warm the page cache for both sides
    for n in range(runs):
        index, db = open_index(repo, work / f"rebuild-{n}")
        try:
            rebuilds.append(timed(index.rebuild))
        finally:
            db.close()
        baselines.append(run_quiet(["git", "log", "--name-only"], repo))
    checks = check_index(repo, work / f"rebuild-{runs - 1}")
    row = Row(
        "rebuild (fresh db)",
        statistics.median(rebuilds),
        statistics.median(baselines),
        10.0,
        "git log --name-only",
        f"runs {', '.join(f'{v:.2f}' for v in rebuilds)} s",
    )
    return [row], checks


def check_index(repo: Path, data_dir: Path) -> list[str]:
    """Compare a rebuilt index with what git says; returns the mismatches."""
    index, db = open_index(repo, data_dir)
    problems: list[str] = []
    try:
        on_disk = {
            line[len("prompts/") : -len(".md")]
            for line in git(repo, "ls-files", "-z", "prompts").split("\0")
            if line.endswith(".md")
        }
        served = {p.key: p for p in index.list_prompts()}
        if set(served) != on_disk:
            problems.append(f"prompts: index has {len(served)}, git ls-files has {len(on_disk)}")
        changes = git(
            repo,
            "log",
            "--format=",
            "--name-only",
            "--no-renames",
            "--diff-filter=AMT",
            "--",
            "prompts",
        )
        expected_versions = sum(1 for line in changes.splitlines() if line.endswith(".md"))
        indexed_versions = (
            db.reader()
            .execute("SELECT COUNT(*) FROM ix_versions WHERE seq IS NOT NULL")
            .fetchone()[0]
        )
        if indexed_versions != expected_versions:
            problems.append(
                f"versions: index has {indexed_versions}, git log has {expected_versions}"
            )
        for key in sorted(on_disk)[:: max(1, len(on_disk) // 20)]:
            version = served[key].version if key in served else None
            head_blob = git(repo, "rev-parse", f"HEAD:prompts/{key}.md")
            if version is None or version.blob != head_blob:
                problems.append(
                    f"{key}: served blob {version.blob if version else None}, HEAD has {head_blob}"
                )
    finally:
        db.close()
    return problems


# -- (b) incremental sync ------------------------------------------------------------------


def commit_prompt(repo: Path, key: str, content: str, message: str) -> str:
    path = repo / "prompts" / f"{key}.md"
    path.write_text(content, encoding="utf-8")
    git(repo, "add", "--", f"prompts/{key}.md")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def bench_sync(repo: Path, index: Index, keys: list[str], runs: int) -> tuple[list[Row], list[str]]:
    syncs: list[float] = []
    idle: list[float] = []
    baselines: list[float] = []
    problems: list[str] = []
    index.sync()
    for n in range(runs):
        key = keys[(n * 37) % len(keys)]
        sha = commit_prompt(repo, key, prompt_text(key, 10_000 + n), f"Bench edit {n} of {key}")
        started = time.perf_counter()
        report = index.sync()
        syncs.append(time.perf_counter() - started)
        served = index.get_prompt(key).version
        if (
            report.new_commits != 1
            or key not in report.changed
            or served is None
            or served.sha != sha
        ):
            problems.append(
                f"sync after committing {key}: new_commits={report.new_commits},"
                f" changed={sorted(report.changed)[:3]},"
                f" served sha={served.sha if served else None}, want {sha}"
            )
        idle.append(timed(index.sync))
        baselines.append(run_quiet(["git", "rev-parse", "HEAD"], repo))
    baseline = statistics.median(baselines)
    rows = [
        Row(
            "sync after 1 commit",
            statistics.median(syncs),
            baseline,
            0.100,
            "git rev-parse HEAD",
            f"p95 {percentile(syncs, 95) * 1000:.0f} ms",
        ),
        Row("sync, nothing changed", statistics.median(idle), baseline, None, "git rev-parse HEAD"),
    ]
    return rows, problems


def bench_reads(index: Index, keys: list[str], runs: int) -> list[Row]:
    """Per-request reads the API does, on an index of this size (informational)."""
    picked = [keys[(n * 13) % len(keys)] for n in range(runs)]
    gets = [timed(lambda k=k: index.get_prompt(k)) for k in picked]
    lists = [timed(index.list_prompts) for _ in range(max(3, runs // 20))]
    return [
        Row(
            "get_prompt(key)",
            statistics.median(gets),
            None,
            None,
            note=f"p95 {percentile(gets, 95) * 1000:.1f} ms",
        ),
        Row("list_prompts()", statistics.median(lists), None, None),
    ]


# -- (c) watcher latency -------------------------------------------------------------------


def wait_served(index: Index, key: str, blob: str, timeout_s: float = SERVE_TIMEOUT_S) -> bool:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        version = index.get_prompt(key).version
        if version is not None and version.blob == blob:
            return True
        time.sleep(POLL_S)
    return False


def bench_watcher(repo: Path, index: Index, key: str, saves: int) -> tuple[list[Row], list[str]]:
    path = repo / "prompts" / f"{key}.md"
    contents = [prompt_text(key, 20_000 + i).encode() for i in range(2)]
    direct: list[float] = []
    for i in range(6):  # baseline: the same save followed by a direct sync(), no watcher
        path.write_bytes(contents[i % 2])
        direct.append(timed(index.sync))
    problems: list[str] = []
    latencies: list[float] = []
    watcher = Watcher(index, repo)
    watcher.start()
    try:
        time.sleep(0.3)  # let the observer arm its watches
        for i in range(saves):
            data = contents[i % 2]
            expected = blob_id(data)
            started = time.perf_counter()
            with open(path, "wb") as fh:
                fh.write(data)
            if wait_served(index, key, expected):
                latencies.append(time.perf_counter() - started)
            else:
                problems.append(f"save {i}: {key} not served within {SERVE_TIMEOUT_S:.0f} s")
            time.sleep(0.1)  # let trailing events of this save settle
    finally:
        watcher.stop()
    if not latencies:
        return [
            Row("watcher save->served p95", None, None, 0.250, note="no save was served")
        ], problems
    baseline = statistics.median(direct)
    rows = [
        Row(
            "watcher save->served p50",
            percentile(latencies, 50),
            baseline,
            None,
            "save + direct sync()",
            f"debounce {watcher.debounce_s * 1000:.0f} ms",
        ),
        Row(
            "watcher save->served p95",
            percentile(latencies, 95),
            baseline,
            0.250,
            "save + direct sync()",
            (
                f"max {max(latencies) * 1000:.0f} ms, {len(latencies)}/{saves} served,"
                f" {watcher.syncs} syncs"
            ),
        ),
    ]
    return rows, problems


def probe_same_size_saves(
    repo: Path, index: Index, key: str, rounds: int = 20, keep_mtime: bool = False
) -> list[str]:
    """Two saves of equal size in quick succession, each followed by sync(): the second must be
    served. A stat cache keyed on (mtime, size, inode) misses it when the file system's clock is
    coarser than the gap between the saves (git calls such files "racily clean"); `keep_mtime`
    gives the second save the first one's mtime, as such a clock would."""
    path = repo / "prompts" / f"{key}.md"
    base = prompt_text(key, 30_000)
    variants = [base.replace("revision 30000", f"revision 3{c}000").encode() for c in "ab"]
    missed = 0
    for i in range(rounds):
        first, second = variants[i % 2], variants[(i + 1) % 2]
        path.write_bytes(first)
        index.sync()
        before = path.stat()
        path.write_bytes(second)
        if keep_mtime:
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        index.sync()
        version = index.get_prompt(key).version
        if version is None or version.blob != blob_id(second):
            missed += 1
    if not missed:
        return []
    how = "with the first save's mtime (a coarse clock)" if keep_mtime else "in quick succession"
    return [f"same-size saves {how}: {missed}/{rounds} second saves not served after sync()"]


def profile_syncs(
    repo: Path, index: Index, keys: list[str], out_path: Path, runs: int = 10
) -> None:
    """cProfile of `runs` syncs, each after one new commit."""
    profiler = cProfile.Profile()
    for n in range(runs):
        key = keys[(n * 53) % len(keys)]
        commit_prompt(repo, key, prompt_text(key, 40_000 + n), f"Bench profile edit {n} of {key}")
        profiler.enable()
        index.sync()
        profiler.disable()
    write_profile(profiler, out_path, f"{runs} x Index.sync() after one commit")


# -- (d) CLI start-up ----------------------------------------------------------------------


def bench_help(runs: int) -> tuple[list[Row], str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    helps: list[float] = []
    baselines: list[float] = []
    run_quiet([sys.executable, "-m", "llmkit", "--help"], PROJECT_ROOT, env)  # warm-up
    for _ in range(runs):
        helps.append(run_quiet([sys.executable, "-m", "llmkit", "--help"], PROJECT_ROOT, env))
        baselines.append(run_quiet([sys.executable, "-c", "pass"], PROJECT_ROOT, env))
    row = Row(
        "llmkit --help (wall)",
        statistics.median(helps),
        statistics.median(baselines),
        0.4,
        "python -c pass",
    )
    return [row], import_profile(env)


def import_profile(env: dict[str, str], top: int = 12) -> str:
    """The slowest imports of `llmkit --help`, by cumulative time (python -X importtime)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "llmkit", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        env=env,
        text=True,
    )
    rows = []
    for line in proc.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if (
            not line.startswith("import time:")
            or len(fields) != 3
            or not fields[0].strip().isdigit()
        ):
            continue
        rows.append((int(fields[1]), int(fields[0]), fields[2].strip()))
    rows.sort(reverse=True)
    lines = [
        f"{cum / 1000:8.1f} ms cumulative {own / 1000:7.1f} ms self  {name}"
        for cum, own, name in rows[:top]
    ]
    return "\n".join(lines)


# -- (e) profile ---------------------------------------------------------------------------


def profile_rebuild(repo: Path, work: Path, out_path: Path) -> list[str]:
    """cProfile of a full rebuild on a fresh database; returns the top hot spots by own time."""
    index, db = open_index(repo, work / "profile")
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        index.rebuild()
        profiler.disable()
    finally:
        db.close()
    stats = write_profile(profiler, out_path, "Index.rebuild() on a fresh database")
    hot = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:8]  # type: ignore[attr-defined]
    return [
        f"{tt:7.3f} s own {ct:7.3f} s cum  {fn}:{line}({name})"
        for (fn, line, name), (_, _, tt, ct, _) in hot
    ]


def write_profile(profiler: cProfile.Profile, out_path: Path, title: str) -> pstats.Stats:
    text = io.StringIO()
    text.write(f"{title}\n\n--- by cumulative time, top 25 ---\n")
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs().sort_stats("cumulative").print_stats(25)
    text.write("\n--- by own time (tottime), top 15 ---\n")
    stats.sort_stats("tottime").print_stats(15)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text.getvalue(), encoding="utf-8")
    return stats


# -- report --------------------------------------------------------------------------------


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.1f} ms" if value >= 0.01 else f"{value * 1000:.2f} ms"


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
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(line, widths))
            )
        )
        if n == 0:
            print("  ".join("-" * width for width in widths))
    for row in rows:
        if row.baseline_name or row.note:
            print(f"  {row.figure}: baseline {row.baseline_name or '-'}; {row.note}".rstrip("; "))


def prepare_repo(args: argparse.Namespace, work: Path) -> tuple[Path, str]:
    repo = work / "repo"
    if args.repo is None:
        started = time.perf_counter()
        made = generate(repo, args.prompts, args.versions)
        return (
            repo,
            (
                f"generated {len(made.keys)} x {args.versions} ({made.commits} commits)"
                f" in {time.perf_counter() - started:.1f} s"
            ),
        )
    source = Path(args.repo).resolve()
    subprocess.run(["git", "clone", "-q", str(source), str(repo)], check=True, capture_output=True)
    commits = git(repo, "rev-list", "--count", "HEAD")
    return repo, f"cloned {source} ({commits} commits)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repo", type=Path, help="a prompt repository to clone (default: generate one)"
    )
    parser.add_argument(
        "--prompts", type=int, default=1000, help="prompts to generate (default 1000)"
    )
    parser.add_argument("--versions", type=int, default=20, help="versions per prompt (default 20)")
    parser.add_argument("--runs", type=int, default=5, help="rebuild runs (default 5)")
    parser.add_argument(
        "--sync-runs", type=int, default=20, help="incremental sync runs (default 20)"
    )
    parser.add_argument("--saves", type=int, default=50, help="watched saves (default 50)")
    parser.add_argument("--help-runs", type=int, default=10, help="llmkit --help runs (default 10)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="results folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)  # a watcher's failed sync prints its traceback

    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-"))
    rows: list[Row] = []
    problems: list[str] = []
    findings: list[str] = []
    try:
        repo, how = prepare_repo(args, work)
        print(
            f"repository: {how}; {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}", flush=True
        )

        print("(a) rebuild ...", flush=True)
        found, checks = bench_rebuild(repo, work, args.runs)
        rows += found
        problems += checks

        print("(b) incremental sync ...", flush=True)
        index, db = open_index(repo, work / "live")
        index.rebuild()
        keys = [p.key for p in index.list_prompts()]
        found, checks = bench_sync(repo, index, keys, args.sync_runs)
        rows += found
        problems += checks
        rows += bench_reads(index, keys, 200)

        print("(c) watcher ...", flush=True)
        found, checks = bench_watcher(repo, index, keys[len(keys) // 2], args.saves)
        rows += found
        problems += checks
        problems += probe_same_size_saves(repo, index, keys[len(keys) // 3])
        findings = probe_same_size_saves(repo, index, keys[len(keys) // 4], keep_mtime=True)
        git(repo, "checkout", "-q", "--", "prompts")  # drop the drafts the probes left
        profile_syncs(repo, index, keys, args.out / "index_sync_profile.txt")
        db.close()

        print("(d) llmkit --help ...", flush=True)
        found, imports = bench_help(args.help_runs)
        rows += found

        print("(e) profile ...", flush=True)
        profile_path = args.out / "index_rebuild_profile.txt"
        hot = profile_rebuild(repo, work, profile_path)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print_table(rows)
    print(
        f"\nrebuild hot spots by own time (profiles: {profile_path},"
        f" {profile_path.with_name('index_sync_profile.txt')}):"
    )
    print("\n".join(f"  {line}" for line in hot))
    print("\nslowest imports of llmkit --help:")
    print("\n".join(f"  {line}" for line in imports.splitlines()[:8]))
    print(
        "\ncorrectness checks: " + ("all passed" if not problems else f"{len(problems)} problem(s)")
    )
    for problem in problems:
        print(f"  - {problem}")
    if findings:
        print("simulated (not counted as a failure):")
        print("\n".join(f"  - {finding}" for finding in findings))
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "repository": how,
        "rows": [{**asdict(row), "ratio": row.ratio, "passed": row.passed} for row in rows],
        "problems": problems,
        "simulated_findings": findings,
        "hot_spots": hot,
        "imports": imports.splitlines(),
    }
    (args.out / "index.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    failed = any(row.passed is False for row in rows) or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
