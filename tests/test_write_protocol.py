"""The git write protocol under real kills and real concurrent git commands.

Servers are real `python -m llmkit serve` processes that kill themselves with SIGKILL at a named
step of a write (`LLMKIT_FAULT_AT=<step>:2`: the second write dies, the first is acknowledged).
After a restart, the repository must pass `git fsck --strict`, `git status` must be clean, every
acknowledged write must be in HEAD and survive the author's next ordinary commit, the killed write
must either be a normal commit or have left no trace, and writes must work again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmkit.gitwrite import RECOVERY_STEPS, WRITE_STEPS
from llmkit.lint import lint_repo
from llmkit.promptfile import parse, serialize
from tests.api_fixtures import running_api, seeded_repo
from tests.exec_fixtures import server_env
from tests.helpers import (
    SERVER_START_TIMEOUT_S,
    ServerProcess,
    clean_env,
    git,
    start_server,
)

LOCK_TIMEOUT_S = "0.5"
# The steps after which the killed write is in HEAD: from the ref's move on.
LANDED = set(WRITE_STEPS[WRITE_STEPS.index("in-update-ref-committed") :])
NOT_LANDED = set(WRITE_STEPS) - LANDED


def prompt_text(tag: str) -> str:
    """The canonical file the API writes for a `content` naming `tag`."""
    return serialize(parse(f"---\nmodel: default\n---\n<!-- role:system -->\nVersion {tag}.\n"))


def put(server: ServerProcess, tag: str, key: str = "hello") -> httpx.Response:
    body = {"content": prompt_text(tag), "message": f"api write {tag}"}
    return server.http.put(
        f"{server.v1}/ui/prompts/{key}", json=body, headers=server.headers(), timeout=60
    )


def served(server: ServerProcess, key: str = "hello") -> dict[str, object]:
    response = server.http.get(f"{server.v1}/ui/prompts/{key}", headers=server.headers())
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def read(server: ServerProcess, path: str) -> Any:
    """GET /v1`path` with the admin key, as JSON."""
    response = server.http.get(server.v1 + path, headers=server.headers())
    assert response.status_code == 200, response.text
    return response.json()


def head_text(repo: Path, path: str = "prompts/hello.md", rev: str = "HEAD") -> str:
    return git(repo, "show", f"{rev}:{path}") + "\n"


def subjects(repo: Path) -> list[str]:
    """The subject of every commit reachable from any ref."""
    return git(repo, "log", "--all", "--format=%s").splitlines()


def start(repo: Path, logs: Path, **extra: str) -> ServerProcess:
    return start_server(
        repo, logs, env=server_env(LLMKIT_GIT_LOCK_TIMEOUT_S=LOCK_TIMEOUT_S, **extra)
    )


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Servers a test started; whatever is still running at the end is killed."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.kill()


def kill_during_second_write(
    repo: Path, logs: Path, step: str, servers: list[ServerProcess]
) -> str:
    """Serve with a fault at `step`, acknowledge write "A", die during write "B"; returns the
    commit of "A"."""
    server = start(repo, logs, LLMKIT_FAULT_AT=f"{step}:2")
    servers.append(server)
    first = put(server, "A")
    assert first.status_code == 200, first.text
    acknowledged = git(repo, "rev-parse", "HEAD")
    assert head_text(repo) == prompt_text("A")
    with pytest.raises(httpx.HTTPError):
        put(server, "B")
    assert server.proc.wait(30) == -signal.SIGKILL
    return acknowledged


def assert_consistent(repo: Path) -> None:
    """fsck is clean, `git status` is clean, and nothing of llmkit's or git's is left locked."""
    fsck = subprocess.run(
        ["git", "fsck", "--strict"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert not any(w in fsck.stderr.lower() for w in ("error", "missing", "broken", "bad")), (
        fsck.stderr
    )
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    git_dir = repo / ".git"
    assert sorted(p.relative_to(git_dir).as_posix() for p in git_dir.rglob("*.lock")) == []
    assert list(git_dir.glob("llmkit-*")) == []
    data = repo / ".llmkit"
    assert [p.name for p in data.iterdir() if p.name.startswith(("index-", "write.journal"))] == []


def author_commit_keeps_the_api_write(repo: Path, note: str) -> None:
    """The author's next ordinary `git add other && git commit` must not revert the prompt."""
    before = head_text(repo)
    (repo / "README.md").write_text(f"An author's edit: {note}\n", "utf-8")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", f"author: {note}")
    assert git(repo, "show", "--name-only", "--format=", "HEAD").splitlines() == ["README.md"]
    assert head_text(repo) == before
    assert (repo / "prompts/hello.md").read_text("utf-8") == before
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""


def hold_index_lock(repo: Path) -> tuple[Path, bytes]:
    """Take .git/index.lock as another git process would (exclusive create, the new index in it)."""
    lock = repo / ".git" / "index.lock"
    content = (repo / ".git" / "index").read_bytes()
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    return lock, content


# -- a kill at every step ------------------------------------------------------------------------


@pytest.mark.parametrize("step", WRITE_STEPS)
def test_a_kill_at_each_step_of_a_write_is_recovered_at_restart(
    tmp_path: Path, servers: list[ServerProcess], step: str
) -> None:
    repo = seeded_repo(tmp_path / "repo")
    acknowledged = kill_during_second_write(repo, tmp_path, step, servers)

    server = start(repo, tmp_path)
    servers.append(server)
    assert_consistent(repo)
    if step in LANDED:  # a normal commit: one parent, one file, its own message
        assert git(repo, "log", "-1", "--format=%P %s") == f"{acknowledged} api write B"
        assert git(repo, "show", "--name-only", "--format=", "HEAD").splitlines() == [
            "prompts/hello.md"
        ]
        expected = prompt_text("B")
    else:  # no trace: HEAD, the file and every ref as the acknowledged write left them
        assert git(repo, "rev-parse", "HEAD") == acknowledged
        assert "api write B" not in subjects(repo)
        expected = prompt_text("A")
    assert head_text(repo) == expected
    assert (repo / "prompts/hello.md").read_text("utf-8") == expected
    shown = served(server)
    assert shown["draft"] is False and shown["sha"] == git(repo, "rev-parse", "HEAD")

    author_commit_keeps_the_api_write(repo, "after the restart")
    again = put(server, "C")
    assert again.status_code == 200, again.text
    assert head_text(repo) == prompt_text("C")
    author_commit_keeps_the_api_write(repo, "after a new write")
    assert_consistent(repo)
    assert server.terminate() == 0


def run_until_killed(repo: Path, logs: Path, step: str) -> None:
    """Start `llmkit serve` with a fault in recovery: it must die before it serves."""
    with (logs / f"killed-{step}.stderr").open("w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmkit",
                "serve",
                "--repo",
                str(repo),
                "--port",
                "0",
                "--no-watch",
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=server_env(LLMKIT_FAULT_AT=step, LLMKIT_GIT_LOCK_TIMEOUT_S=LOCK_TIMEOUT_S),
        )
        try:
            assert proc.wait(SERVER_START_TIMEOUT_S) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)


@pytest.mark.parametrize(
    ("step", "drop_lock", "recovery_step"),
    [
        ("worktree-written", False, "recovery-locked"),
        # The author removed llmkit's stale lock by hand: recovery takes a new one.
        ("ref-moved", True, "recovery-worktree-written"),
    ],
    ids=["prepared-lock", "new-lock"],
)
def test_a_kill_during_recovery_is_recovered_by_the_next_start(
    tmp_path: Path, servers: list[ServerProcess], step: str, drop_lock: bool, recovery_step: str
) -> None:
    assert recovery_step in RECOVERY_STEPS
    repo = seeded_repo(tmp_path / "repo")
    acknowledged = kill_during_second_write(repo, tmp_path, step, servers)
    if drop_lock:
        (repo / ".git" / "index.lock").unlink()
    run_until_killed(repo, tmp_path, recovery_step)

    server = start(repo, tmp_path)
    servers.append(server)
    assert_consistent(repo)
    assert git(repo, "log", "-1", "--format=%P %s") == f"{acknowledged} api write B"
    assert (repo / "prompts/hello.md").read_text("utf-8") == prompt_text("B")
    author_commit_keeps_the_api_write(repo, "after two kills")
    assert put(server, "C").status_code == 200
    assert_consistent(repo)


@pytest.mark.parametrize("step", ["journal-begun", "ref-moved"])
def test_recovery_never_removes_another_process_index_lock(
    tmp_path: Path, servers: list[ServerProcess], step: str
) -> None:
    repo = seeded_repo(tmp_path / "repo")
    acknowledged = kill_during_second_write(repo, tmp_path, step, servers)
    ours = repo / ".git" / "index.lock"
    if ours.exists():
        ours.unlink()  # the author followed git's advice and removed the stale lock by hand
    lock, content = hold_index_lock(repo)

    server = start(repo, tmp_path)  # recovery cannot finish, but the server starts
    servers.append(server)
    assert lock.read_bytes() == content
    head = git(repo, "rev-parse", "HEAD")
    refused = put(server, "C", key="support/triage")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "repository_busy"
    assert refused.headers["retry-after"] == "1"
    assert ".git/index.lock" in refused.json()["error"]["message"]
    assert lock.read_bytes() == content
    assert git(repo, "rev-parse", "HEAD") == head
    assert "api write C" not in subjects(repo)

    lock.unlink()  # the other process is done
    accepted = put(server, "D", key="support/triage")
    assert accepted.status_code == 200, accepted.text
    assert_consistent(repo)
    if step == "ref-moved":  # recovery finished before the write: B is a normal commit
        assert git(repo, "log", "-1", "--format=%s", "HEAD^") == "api write B"
        assert git(repo, "rev-parse", "HEAD^^") == acknowledged
        assert served(server)["draft"] is False
    else:
        assert git(repo, "rev-parse", "HEAD^") == acknowledged
    author_commit_keeps_the_api_write(repo, "after the lock was released")
    assert head_text(repo, "prompts/support/triage.md") == prompt_text("D")


# -- concurrent git commands ----------------------------------------------------------------------


def test_api_writes_while_git_status_commit_and_checkout_run_in_loops(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    """API writes against an author who keeps committing other files and switching branches
    and back, and a `git status` loop. The author's commands run one at a time, as one person
    runs them: git's own commands race each other otherwise (`git commit` reads the index before
    it locks it), whatever llmkit does."""
    repo = seeded_repo(tmp_path / "repo")
    git(repo, "branch", "other")
    # With its watcher, the server's index follows the author's checkouts, so that writes are
    # refused only by the repository's state (or the lock), not by a stale view of it.
    env = server_env(LLMKIT_GIT_LOCK_TIMEOUT_S="0.3")
    server = start_server(repo, tmp_path, env=env, watch=True)
    servers.append(server)
    deadline = time.monotonic() + 180
    done = threading.Event()
    outcomes: dict[str, tuple[int, dict[str, object]]] = {}
    held_tags: list[str] = []
    counts = {"status": 0, "commit": 0, "checkout": 0}

    def run(*args: str) -> int:
        proc = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, env=clean_env(), check=False
        )
        return proc.returncode

    def api_writes() -> None:
        try:
            for i in range(24):
                if time.monotonic() > deadline:
                    break
                tag = f"w{i}"
                lock = None
                if i % 6 == 5:
                    # Hold git's index lock as another git command would, for the whole request.
                    for _ in range(200):
                        try:
                            lock, _ = hold_index_lock(repo)
                            break
                        except FileExistsError:
                            time.sleep(0.01)
                    assert lock is not None, "the index lock was never free"
                    held_tags.append(tag)
                try:
                    # A prompt no checkout changes, so that only the lock can refuse it.
                    response = put(server, tag, key="support/triage" if lock else "hello")
                finally:
                    if lock is not None:
                        lock.unlink()
                outcomes[tag] = (response.status_code, response.json())
        finally:
            done.set()

    def status_loop() -> None:
        for _ in range(3000):
            if done.is_set():
                return
            run("status", "--porcelain")
            counts["status"] += 1

    def author() -> None:
        for i in range(500):
            if done.is_set():
                return
            (repo / "notes").mkdir(exist_ok=True)
            (repo / "notes" / f"n{i}.txt").write_text(f"note {i}\n")
            if run("add", f"notes/n{i}.txt") == 0 and run("commit", "-q", "-m", f"author {i}") == 0:
                counts["commit"] += 1
            if i % 2 and run("checkout", "-q", "other") == 0:
                for _ in range(200):  # always come back, even when a lock is in the way
                    if run("checkout", "-q", "main") == 0:
                        counts["checkout"] += 1
                        break
                    time.sleep(0.01)

    threads = [threading.Thread(target=f) for f in (api_writes, status_loop, author)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads)
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "main"
    # Notes staged when a commit lost the race for the lock: the author commits them now.
    if git(repo, "status", "--porcelain"):
        git(repo, "add", "-A", "notes")
        git(repo, "commit", "-q", "-m", "author: the last notes")

    assert len(outcomes) >= 6 and all(counts.values()), (outcomes, counts)
    # 409: the file differed from HEAD mid-checkout; 404: the watcher synced while a checkout
    # had removed the file. Either way a refusal, checked below to have changed nothing.
    assert all(status in (200, 404, 409, 503) for status, _ in outcomes.values()), outcomes
    for tag in held_tags:
        status, body = outcomes[tag]
        error: Any = body["error"]
        assert status == 503 and error["code"] == "repository_busy", (tag, body)
    assert any(status == 200 for status, _ in outcomes.values())
    log = {}  # subject -> sha, for every commit on any branch
    for line in git(repo, "log", "--all", "--format=%H %s").splitlines():
        sha, subject = line.split(" ", 1)
        assert subject not in log or not subject.startswith("api write"), f"{subject} twice"
        log[subject] = sha
    for tag, (status, _) in outcomes.items():
        if status in (409, 503):
            assert f"api write {tag}" not in log  # refused writes changed nothing
            continue
        if status == 404 and f"api write {tag}" not in log:
            continue  # refused before the store, while a checkout had removed the file
        # Acknowledged, or (a 404 from re-reading the prompt after its commit, while a checkout
        # had removed the file) not acknowledged but landed: a normal commit either way.
        sha = log[f"api write {tag}"]
        assert git(repo, "branch", "--contains", sha)  # in the history of its branch
        assert git(repo, "show", "--name-only", "--format=", sha).splitlines() == [
            "prompts/hello.md"
        ]
        assert head_text(repo, rev=sha) == prompt_text(tag)
    # .git/index agrees with HEAD and the working tree for every written file.
    assert git(repo, "diff", "--cached", "--name-only", "HEAD", "--", "prompts", "evals") == ""
    assert git(repo, "diff", "--name-only", "--", "prompts", "evals") == ""
    assert_consistent(repo)
    author_commit_keeps_the_api_write(repo, "after the loops")
    for key in ("support/triage", "hello"):
        final = put(server, "final", key=key)
        assert final.status_code == 200, final.text
    assert_consistent(repo)


# -- regressions -------------------------------------------------------------------------------


def test_writes_while_git_status_runs_in_a_loop_keep_the_index_in_step(tmp_path: Path) -> None:
    """An index.lock taken by `git status` made writes skip the index update: `MM` in
    `git status`, then 409s, then the author's next commit reverted the write."""
    repo = seeded_repo(tmp_path / "repo")
    done = threading.Event()
    runs = [0]

    def status_loop() -> None:
        for _ in range(5000):
            if done.is_set():
                return
            subprocess.run(
                ["git", "status", "--porcelain"],
                cwd=repo,
                capture_output=True,
                env=clean_env(),
                check=False,
            )
            runs[0] += 1

    looper = threading.Thread(target=status_loop)
    with running_api(repo) as api:
        looper.start()
        try:
            statuses = []
            for i in range(40):
                body = {"content": prompt_text(f"s{i}"), "message": f"api write s{i}"}
                response = api.put("/v1/ui/prompts/hello", json=body)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    assert git(repo, "diff", "--cached", "--name-only", "HEAD") == ""
        finally:
            done.set()
            looper.join(timeout=60)
    assert runs[0] > 0
    assert set(statuses) <= {200, 503} and statuses.count(200) > 0, statuses
    history = git(repo, "log", "--format=%s").splitlines()
    for i, status in enumerate(statuses):  # acknowledged: in HEAD's history; refused: nowhere
        assert (f"api write s{i}" in history) == (status == 200)
    last = max(i for i, status in enumerate(statuses) if status == 200)
    assert head_text(repo) == prompt_text(f"s{last}")
    assert_consistent(repo)
    author_commit_keeps_the_api_write(repo, "after the status loop")


def test_a_long_running_git_command_holding_the_index_gets_a_retryable_refusal(
    tmp_path: Path,
) -> None:
    """`git commit -a` holds index.lock while its editor is open: a write waits a bounded time,
    then answers 503 having changed nothing, and succeeds once the editor is closed."""
    repo = seeded_repo(tmp_path / "repo")
    (repo / "README.md").write_text("an edit the author is committing\n")
    release = tmp_path / "editor-closed"
    editor = (
        f"i=0; while [ ! -e {release} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; true"
    )
    author = subprocess.Popen(
        ["git", "commit", "-a"],
        cwd=repo,
        env={**clean_env(), "GIT_EDITOR": editor},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lock = repo / ".git" / "index.lock"
        for _ in range(1200):
            if lock.exists():
                break
            time.sleep(0.05)
        assert lock.exists()
        head = git(repo, "rev-parse", "HEAD")
        with running_api(repo, git_lock_timeout_s=0.3) as api:
            body = {"content": prompt_text("X"), "message": "api write X"}
            refused = api.put("/v1/ui/prompts/hello", json=body)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "repository_busy"
            assert refused.headers["retry-after"] == "1"
            assert git(repo, "rev-parse", "HEAD") == head
            assert (repo / "prompts/hello.md").read_text() != prompt_text("X")
            assert git(repo, "status", "--porcelain") == " M README.md"
            assert lock.exists()  # still the author's

            release.touch()
            author.wait(60)  # no message was written: git aborts the commit
            accepted = api.put("/v1/ui/prompts/hello", json=body)
            assert accepted.status_code == 200, accepted.text
    finally:
        release.touch()
        author.wait(60)
    assert head_text(repo) == prompt_text("X")
    assert git(repo, "status", "--porcelain") == " M README.md"
    git(repo, "commit", "-q", "-am", "the author's README edit")
    assert head_text(repo) == prompt_text("X")
    assert_consistent(repo)


def test_a_write_killed_before_its_ref_moved_is_not_served_as_a_draft(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    """The file used to be replaced before the ref moved: a kill in between served the
    never-acknowledged text as a draft and refused every later write with 409."""
    repo = seeded_repo(tmp_path / "repo")
    acknowledged = kill_during_second_write(repo, tmp_path, "index-prepared", servers)
    server = start(repo, tmp_path)
    servers.append(server)
    shown = served(server)
    assert shown["draft"] is False and shown["sha"] == acknowledged
    assert shown["system"] == "Version A."
    assert put(server, "C").status_code == 200
    assert_consistent(repo)


def test_a_ref_lock_left_inside_update_ref_does_not_block_writes_forever(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    repo = seeded_repo(tmp_path / "repo")
    kill_during_second_write(repo, tmp_path, "in-update-ref", servers)
    assert (repo / ".git/refs/heads/main.lock").exists() and (repo / ".git/HEAD.lock").exists()
    server = start(repo, tmp_path)
    servers.append(server)
    assert put(server, "C").status_code == 200
    assert head_text(repo) == prompt_text("C")
    assert_consistent(repo)


def test_a_kill_while_the_file_is_half_replaced_leaves_no_temp_file(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    repo = seeded_repo(tmp_path / "repo")
    kill_during_second_write(repo, tmp_path, "worktree-temp", servers)
    temps = [p.name for p in (repo / "prompts").iterdir() if p.name.startswith(".")]
    assert len(temps) == 1 and temps[0].endswith(".tmp")
    server = start(repo, tmp_path)
    servers.append(server)
    assert [p.name for p in (repo / "prompts").iterdir() if p.name.startswith(".")] == []
    shown = served(server)
    assert shown["draft"] is False and shown["system"] == "Version B."
    assert_consistent(repo)


def test_someone_elses_ref_lock_is_left_alone_and_named_in_a_retryable_error(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    repo = seeded_repo(tmp_path / "repo")
    kill_during_second_write(repo, tmp_path, "objects-written", servers)
    foreign = repo / ".git" / "refs" / "heads" / "main.lock"
    foreign.write_text("")  # another git command crashed while locking the branch
    server = start(repo, tmp_path)
    servers.append(server)
    head = git(repo, "rev-parse", "HEAD")
    refused = put(server, "C")
    assert refused.status_code == 503, refused.text
    assert "refs/heads/main.lock" in refused.json()["error"]["message"]
    assert foreign.exists() and git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    foreign.unlink()
    assert put(server, "C").status_code == 200
    assert_consistent(repo)


@pytest.fixture
def outside_yaml(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    secret = folder / "secret.yaml"
    secret.write_text("name: leaked\nvars:\n  personality: secret\n")
    return secret


def test_committed_symlinks_neither_stop_the_server_nor_are_followed(
    tmp_path: Path, servers: list[ServerProcess], outside_yaml: Path
) -> None:
    repo = seeded_repo(tmp_path / "repo")
    os.symlink(".", repo / "prompts" / "loop")  # a loop: prompts/loop/loop/...
    os.symlink(outside_yaml, repo / "evals" / "hello" / "leak.yaml")
    git(repo, "add", "prompts/loop", "evals/hello/leak.yaml")
    git(repo, "commit", "-q", "-m", "links")
    server = start(repo, tmp_path)
    servers.append(server)
    keys = sorted(p["key"] for p in read(server, "/ui/prompts"))
    assert keys == ["hello", "support/triage"]
    cases = read(server, "/ui/prompts/hello/prompt-evals")
    assert [c["name"] for c in cases] == ["greets"]
    written = put(server, "L")
    assert written.status_code == 200, written.text
    assert served(server)["system"] == "Version L."
    problems = {(p.path, p.severity) for p in lint_repo(repo) if "Symbolic link" in p.message}
    assert problems == {("prompts/loop", "error"), ("evals/hello/leak.yaml", "error")}


def test_links_made_while_serving_do_not_break_writes_or_the_index(
    tmp_path: Path, servers: list[ServerProcess], outside_yaml: Path
) -> None:
    repo = seeded_repo(tmp_path / "repo")
    server = start(repo, tmp_path)
    servers.append(server)
    os.symlink(
        "..", repo / "evals" / "hello" / "up"
    )  # a parent folder: evals/hello/up/hello/up/...
    os.symlink("nowhere.md", repo / "prompts" / "gone.md")  # dangling
    os.symlink("../..", repo / "prompts" / "support" / "root")
    written = put(server, "M")
    assert written.status_code == 200, written.text
    assert served(server)["system"] == "Version M."
    keys = sorted(p["key"] for p in read(server, "/ui/prompts"))
    assert keys == ["hello", "support/triage"]
    cases = read(server, "/ui/prompts/hello/prompt-evals")
    assert [c["name"] for c in cases] == ["greets"]
    # Through a link the API refuses to write, even one that stays inside prompts/.
    body = {"key": "support/root/prompts/hello", "content": prompt_text("N")}
    through = server.http.post(f"{server.v1}/ui/prompts", json=body, headers=server.headers())
    assert through.status_code == 400 and through.json()["error"]["code"] == "invalid_key"
    assert head_text(repo) == prompt_text("M")
    paths = {p.path for p in lint_repo(repo) if "Symbolic link" in p.message}
    assert paths == {"evals/hello/up", "prompts/gone.md", "prompts/support/root"}
