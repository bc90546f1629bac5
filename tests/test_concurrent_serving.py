"""Serving while other processes write: the store's lock held elsewhere, two servers on one
repository, `llmkit index --rebuild` running beside a server, and index syncs that fail.

Everything is real: git repositories in tmp_path, SQLite files, `python -m llmkit serve`
subprocesses on 127.0.0.1, and the CLI as a subprocess. Waits are bounded; assertions are on
outcomes (statuses, versions served, commits in git), never on durations.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmkit.errors import IndexUnavailable
from llmkit.workspace import Workspace
from tests.api_fixtures import ApiEnv, running_api
from tests.helpers import (
    ServerProcess,
    git,
    init_repo,
    opened_workspace,
    poll,
    run_llmkit,
    start_server,
)

REQUEST_TIMEOUT_S = 30.0  # a healthy server answers far sooner; a stalled loop never does
WAIT_S = 15.0
WRITES = 40
REBUILDS = 8
MAX_REBUILD_WRITES = 400

LLMKIT_YAML = "models:\n  default:\n    model: echo\n"


def live_md(n: int) -> str:
    return f"---\nmodel: default\n---\n<!-- role:system -->\nVersion {n} speaking.\n"


FILES = {
    "prompts/live.md": live_md(1),
    "prompts/other.md": live_md(1),
    "evals/live/basic.yaml": "name: basic\nassert:\n- type: contains\n  value: Version\n",
    "llmkit.yaml": LLMKIT_YAML,
}


def client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=server.headers(), timeout=REQUEST_TIMEOUT_S)


def served(http: httpx.Client, key: str = "live") -> tuple[str, str]:
    """The version a completion of `key` ran (from its header) and what the echo model got."""
    response = http.post("/v1/chat/completions", json={"model": key, "messages": []})
    assert response.status_code == 200, response.text
    answer = response.json()["choices"][0]["message"]["content"]
    return response.headers["x-llmkit-prompt-version"], answer


def rebuild_cli(repo: Path) -> subprocess.CompletedProcess[str]:
    """`llmkit index --rebuild` in a process of its own."""
    return run_llmkit("index", "--rebuild", "--json", "--repo", repo, timeout=120)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start `llmkit serve` processes over one repository; all are stopped at the end."""
    started: list[ServerProcess] = []
    repo = init_repo(tmp_path / "repo", FILES).root

    def start(watch: bool = True) -> ServerProcess:
        server = start_server(repo, tmp_path, watch=watch)
        started.append(server)
        return server

    yield start
    for server in started:
        server.terminate()


# -- a write waiting for the store's lock does not stall the server ----------------------


@contextmanager
def store_lock_held(repo: Path) -> Iterator[Path]:
    """Hold the store's write lock (`.llmkit/write.lock`, flock) from this process."""
    path = repo / ".llmkit" / "write.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def waits_for_flock(pid: int, path: Path) -> bool:
    """Whether process `pid` is blocked in flock on `path` (a `->` entry in /proc/locks)."""
    inode = path.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" not in fields or "FLOCK" not in fields:
            continue
        rest = fields[fields.index("->") + 1 :]
        # FLOCK ADVISORY WRITE <pid> <major:minor:inode> <start> <end>
        if len(rest) >= 5 and rest[3] == str(pid) and rest[4].rsplit(":", 1)[-1] == str(inode):
            return True
    return False


def _eval_id(http: httpx.Client) -> int:
    cases = http.get("/v1/ui/prompts/live/prompt-evals").json()
    return int(next(c["id"] for c in cases if c["name"] == "basic"))


# Each leaves `live` as it is, so the three share one server.
WRITES_THAT_WAIT: dict[str, Callable[[httpx.Client], httpx.Response]] = {
    "create eval case": lambda http: http.post(
        "/v1/ui/prompt-evals", json={"prompt_key": "live", "name": "fresh", "input": "hi"}
    ),
    "update prompt": lambda http: http.put("/v1/ui/prompts/other", json={"content": live_md(2)}),
    "delete eval case": lambda http: http.delete(f"/v1/ui/prompt-evals/{_eval_id(http)}"),
}


@pytest.fixture(scope="module")
def lone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `llmkit serve` without a watcher, for the tests that hold the store's lock."""
    base = tmp_path_factory.mktemp("lone")
    server = start_server(init_repo(base / "repo", FILES).root, base)
    try:
        yield server
    finally:
        server.terminate()


@pytest.mark.parametrize("write", sorted(WRITES_THAT_WAIT))
def test_a_write_waiting_for_the_store_lock_leaves_completions_and_health_answered(
    lone_server: ServerProcess, write: str
) -> None:
    server = lone_server
    with client(server) as http:
        assert served(http)[0] == "1"
        eval_id = _eval_id(http) if write == "delete eval case" else None
        before = git(server.repo, "rev-parse", "HEAD")
        indexed = http.get("/healthz").json()["head"]
        outcome: dict[str, Any] = {}

        def send() -> None:
            try:
                outcome["response"] = WRITES_THAT_WAIT[write](http)
            except Exception as exc:
                outcome["error"] = exc

        with store_lock_held(server.repo) as lock_path:
            writer = threading.Thread(target=send, daemon=True)
            writer.start()
            assert poll(lambda: waits_for_flock(server.proc.pid, lock_path), timeout_s=WAIT_S), (
                "the write never reached the store's lock"
            )
            # The server is now blocked on the lock for the write: everything else still answers.
            assert served(http) == ("1", "system: Version 1 speaking.")
            health = http.get("/healthz")
            assert health.status_code == 200 and health.json()["head"] == indexed
            listed = http.get("/v1/ui/prompts")
            assert listed.status_code == 200
            assert {p["key"] for p in listed.json()} == {"live", "other"}
            assert writer.is_alive() and "response" not in outcome, "the write did not wait"
            assert git(server.repo, "rev-parse", "HEAD") == before
        writer.join(REQUEST_TIMEOUT_S)
        assert "error" not in outcome, outcome.get("error")
        response = outcome["response"]
        assert response.status_code in (200, 201), response.text
        assert git(server.repo, "rev-parse", "HEAD") != before
        assert git(server.repo, "status", "--porcelain") == ""
        if write == "update prompt":
            assert served(http, "other") == ("2", "system: Version 2 speaking.")
        elif write == "delete eval case":
            assert http.get(f"/v1/ui/prompt-evals/{eval_id}").status_code == 404
        else:
            names = {c["name"] for c in http.get("/v1/ui/prompts/live/prompt-evals").json()}
            assert "fresh" in names
    assert "Traceback" not in server.stderr(), server.stderr()


# -- two servers on one repository serve each other's writes -------------------------------


def test_two_servers_on_one_repository_serve_each_others_writes(
    servers: Callable[..., ServerProcess],
) -> None:
    first, second = servers(), servers()
    with client(first) as a, client(second) as b:
        assert served(a)[0] == served(b)[0] == "1"
        for n in range(2, WRITES + 2):
            writer = (a, b)[n % 2]
            response = writer.put("/v1/ui/prompts/live", json={"content": live_md(n)})
            assert response.status_code == 200, f"write {n}: {response.status_code} {response.text}"
            body = response.json()
            assert body["version_number"] == n
            assert body["sha"] == git(first.repo, "rev-parse", "HEAD")
            expected = (str(n), f"system: Version {n} speaking.")
            for name, http in (("first", a), ("second", b)):
                seen = poll(lambda h=http, e=expected: served(h) == e and e, timeout_s=WAIT_S)
                assert seen == expected, f"write {n}: the {name} server serves {served(http)}"
        for name, server in (("first", first), ("second", second)):
            assert "Traceback" not in server.stderr(), f"{name} server:\n{server.stderr()}"


# -- `llmkit index --rebuild` beside a serving server -------------------------------------


def test_rebuilding_the_index_while_writes_go_on_fails_no_write_and_serves_each(
    servers: Callable[..., ServerProcess],
) -> None:
    server = servers()
    rebuilds: list[subprocess.CompletedProcess[str]] = []

    def rebuild_in_a_loop() -> None:
        for _ in range(REBUILDS):
            rebuilds.append(rebuild_cli(server.repo))

    rebuilder = threading.Thread(target=rebuild_in_a_loop, daemon=True)
    written: dict[str, tuple[int, str]] = {}
    shas: list[str] = []
    with client(server) as http:
        rebuilder.start()
        # Writes go on for as long as the rebuilds do, and at least as many (bounded in count).
        for n in range(2, MAX_REBUILD_WRITES + 2):
            if not rebuilder.is_alive() and len(shas) >= REBUILDS:
                break
            key = ("live", "other")[n % 2]
            response = http.put(f"/v1/ui/prompts/{key}", json={"content": live_md(n)})
            assert response.status_code == 200, f"write {n}: {response.status_code} {response.text}"
            number, sha = response.json()["version_number"], response.json()["sha"]
            shas.append(sha)
            written[key] = (n, sha)
            # Once acknowledged, the write is what runs, at once.
            assert served(http, key) == (str(number), f"system: Version {n} speaking.")
        rebuilder.join(REBUILDS * 120)
        assert not rebuilder.is_alive()
        history = git(server.repo, "log", "--format=%H").split()
        assert [sha for sha in shas if sha not in history] == []
        # Served afterwards too, through every rebuild that ran after the last write.
        for key, (n, sha) in written.items():
            assert served(http, key)[1] == f"system: Version {n} speaking."
            assert http.get(f"/v1/ui/prompts/{key}").json()["sha"] == sha
    assert len(rebuilds) == REBUILDS
    failed = [r for r in rebuilds if r.returncode != 0]
    assert not failed, failed[0].stderr
    assert "Traceback" not in server.stderr(), server.stderr()


# -- syncs that fail ------------------------------------------------------------------------


@contextmanager
def database_write_locked(db_path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding a write transaction on the database (as another process's
    rebuild or run-log batch would); committed when the block ends, unless done before."""
    conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        if conn.in_transaction:
            conn.execute("COMMIT")
    finally:
        conn.close()


class _ReleaseOnRetry(logging.Handler):
    """Commits the blocking transaction when the index reports a failed attempt, so the
    retry is what succeeds."""

    def __init__(self, blocker: sqlite3.Connection) -> None:
        super().__init__(logging.WARNING)
        self.blocker = blocker
        self.failures: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "attempt" in message and "failed" in message:
            self.failures.append(message)
            if self.blocker.in_transaction:
                self.blocker.execute("COMMIT")


@contextmanager
def index_log(handler: logging.Handler) -> Iterator[None]:
    logger = logging.getLogger("llmkit.index")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def test_a_sync_that_fails_once_is_retried_and_serves_the_new_version(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", FILES).root
    with opened_workspace(repo) as ws:
        ws.index.sync()
        assert ws.index.version("live").content == live_md(1)  # now cached for serving
        (repo / "prompts/live.md").write_text(live_md(2))
        git(repo, "commit", "-q", "-am", "live v2")
        ws.index.busy_timeout_s = 0.05
        with database_write_locked(ws.settings.db_path) as blocker:
            handler = _ReleaseOnRetry(blocker)
            with index_log(handler):
                report = ws.index.sync()
        assert len(handler.failures) == 1 and "locked" in handler.failures[0], handler.failures
        assert report.new_commits == 1
        served_now = ws.index.version("live")
        assert (served_now.number, served_now.content) == (2, live_md(2))


def test_a_sync_that_keeps_failing_raises_and_leaves_no_stale_cache(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", FILES).root
    # `other` is another server's view of the same database.
    with opened_workspace(repo) as ws, opened_workspace(repo) as other:
        ws.index.sync()
        assert ws.index.version("live").number == 1
        (repo / "prompts/live.md").write_text(live_md(2))
        git(repo, "commit", "-q", "-am", "live v2")
        ws.index.busy_timeout_s = 0.01
        ws.index.sync_attempts = 2
        with database_write_locked(ws.settings.db_path) as blocker:
            with pytest.raises(IndexUnavailable, match="2 times"):
                ws.index.sync()
            blocker.execute("COMMIT")
        other.index.sync()  # the other process catches up; this one never synced successfully
        served_now = ws.index.version("live")
        assert (served_now.number, served_now.content) == (2, live_md(2))


def test_a_watcher_whose_sync_failed_tries_again_without_another_change(tmp_path: Path) -> None:
    from llmkit.watch import Watcher

    repo = init_repo(tmp_path / "repo", FILES).root
    with opened_workspace(repo) as ws:
        ws.index.sync()
        ws.index.busy_timeout_s = 0.01
        ws.index.sync_attempts = 1
        watcher = Watcher(ws.index, repo)
        watcher.start()
        try:
            with database_write_locked(ws.settings.db_path) as blocker:
                handler = _ReleaseOnRetry(blocker)  # released once the watcher's sync has failed
                with index_log(handler):
                    (repo / "prompts/live.md").write_text(live_md(2))
                    # The only change: the sync it calls for fails, and nothing else happens.
                    assert poll(lambda: handler.failures, timeout_s=WAIT_S)
                    served_v2 = poll(
                        lambda: ws.index.version("live").content == live_md(2), timeout_s=WAIT_S
                    )
                    assert served_v2
            assert ws.index.version("live").draft
        finally:
            watcher.stop()


def test_a_rebuild_by_another_process_is_served_without_a_sync_here(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", FILES).root
    with opened_workspace(repo) as ws:
        ws.index.sync()
        assert ws.index.version("live").number == 1
        assert ws.index.version("live", "main").number == 1  # a ref, cached too
        (repo / "prompts/live.md").write_text(live_md(2))
        git(repo, "commit", "-q", "-am", "live v2")
        proc = rebuild_cli(repo)
        assert proc.returncode == 0, proc.stderr
        assert ws.index.version("live").content == live_md(2)
        assert ws.index.version("live", "main").content == live_md(2)


def test_syncs_from_two_processes_interleave_into_the_rows_of_a_rebuild(tmp_path: Path) -> None:
    """Two views of one database (as two servers have) sync in threads while commits land."""
    repo = init_repo(tmp_path / "repo", FILES).root
    views = [Workspace.open(str(repo)) for _ in range(2)]
    errors: list[BaseException] = []
    done = threading.Event()

    def keep_syncing(ws: Workspace) -> None:
        while not done.is_set():
            try:
                ws.index.sync()
            except Exception as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=keep_syncing, args=(ws,), daemon=True) for ws in views]
    try:
        for thread in threads:
            thread.start()
        for n in range(2, 22):
            (repo / f"prompts/p{n % 5}.md").write_text(live_md(n))
            git(repo, "add", "prompts")
            git(repo, "commit", "-q", "-m", f"p{n % 5} at {n}")
        done.set()
        for thread in threads:
            thread.join(60)
        assert errors == []
        for ws in views:
            ws.index.sync()
        rows = _index_rows(views[0])
        views[1].index.rebuild()
        assert _index_rows(views[1]) == rows
        for ws in views:
            assert ws.index.head() == git(repo, "rev-parse", "HEAD")
            assert ws.index.version("p1").content == live_md(21)
    finally:
        done.set()
        for ws in views:
            ws.close()


def _index_rows(ws: Workspace) -> dict[str, list[tuple[object, ...]]]:
    from llmkit.index_schema import INDEX_TABLES

    conn = ws.db.reader()
    return {
        table: sorted((tuple(r) for r in conn.execute(f"SELECT * FROM {table}")), key=repr)
        for table in INDEX_TABLES
    }


# -- an acknowledged write when the index cannot catch up ------------------------------------


@pytest.fixture
def locked_out(tmp_path: Path) -> Iterator[ApiEnv]:
    """The app in-process, its index giving up quickly on a locked database."""
    repo = init_repo(tmp_path / "repo", FILES).root
    with running_api(repo) as env:
        env.ws.index.busy_timeout_s = 0.01
        env.ws.index.sync_attempts = 2
        yield env


def test_a_committed_write_the_index_cannot_catch_up_with_says_it_is_committed(
    locked_out: ApiEnv,
) -> None:
    api = locked_out
    before = api.head()
    with database_write_locked(api.ws.settings.db_path):
        response = api.put("/v1/ui/prompts/live", json={"content": live_md(2)})
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    sha = api.head()
    assert sha != before
    assert git(api.repo, "show", f"{sha}:prompts/live.md") == live_md(2).rstrip("\n")
    assert error["code"] == "committed_not_indexed"
    assert sha in error["message"] and "committed" in error["message"]
    assert response.headers["x-llmkit-commit"] == sha
    # Sent again once the database is free: nothing new to commit, and it is served.
    again = api.put("/v1/ui/prompts/live", json={"content": live_md(2)})
    assert again.status_code == 200, again.text
    assert again.json()["sha"] == sha and api.head() == sha
    ran = api.post("/v1/chat/completions", json={"model": "live", "messages": []})
    assert ran.headers["x-llmkit-prompt-version"] == "2"


def test_a_delete_answers_with_its_commit_even_when_the_index_lags(locked_out: ApiEnv) -> None:
    api = locked_out
    with database_write_locked(api.ws.settings.db_path):
        response = api.delete("/v1/ui/prompts/other")
    assert response.status_code == 200, response.text
    assert response.json()["sha"] == api.head()
    assert git(api.repo, "ls-files", "prompts/other.md") == ""
    api.ws.index.sync()
    assert api.get("/v1/ui/prompts/other").status_code == 404


def test_a_brief_write_and_a_new_reader_do_not_queue_behind_a_write_waiting_on_another_process(
    tmp_path: Path,
) -> None:
    """A write in this process waiting (up to 30 s) for another process's lock holds the
    writer connection. A write allowed to wait only briefly (an index sync) fails as "locked"
    instead of waiting behind it, and a thread's first read is not held up by it at all."""
    from llmkit.db import Database

    db = Database(tmp_path / "app.db")
    with db.write() as conn:
        conn.execute("CREATE TABLE t (n INTEGER)")
    with database_write_locked(db.path):
        waiting = threading.Thread(target=lambda: db.execute_write("INSERT INTO t VALUES (1)"))
        waiting.start()

        def held_in_this_process() -> bool:
            try:
                with db.write(busy_timeout_s=0):
                    return False
            except sqlite3.OperationalError as exc:
                return "in this process" in str(exc)

        poll(held_in_this_process, "the first write to hold the writer connection")
        brief = db.write(busy_timeout_s=0.2)
        with pytest.raises(sqlite3.OperationalError, match="another write in this process"):
            brief.__enter__()
        assert waiting.is_alive()
        read: list[Any] = []
        reader = threading.Thread(
            target=lambda: read.append(db.reader().execute("SELECT count(*) FROM t").fetchone()[0])
        )
        reader.start()
        reader.join(WAIT_S)
        assert read == [0] and waiting.is_alive()
    waiting.join(WAIT_S)
    assert not waiting.is_alive()
    assert [row[0] for row in db.reader().execute("SELECT n FROM t")] == [1]
    db.close()
