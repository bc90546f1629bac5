"""How GitStore runs git through GitPython: errors carry git's stderr; blobs come from one
persistent `cat-file` shared safely by threads and stopped when the store closes; refs are read
from their files exactly as git reads them, or asked of git when they are not in files."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmkit.store import PERSISTENT_READ_MAX, GitError, GitStore, blob_id
from llmkit.workspace import Workspace
from tests.helpers import Repo


@pytest.fixture
def store(repo: Repo) -> Iterator[GitStore]:
    with GitStore(repo.root, repo.root / ".llmkit" / "write.lock") as store:
        yield store


def git_children() -> dict[int, str]:
    """This process's child processes that run git, by pid, with their command lines."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # it ended meanwhile
        # The command name is in parentheses and may hold spaces; the parent pid follows it.
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == os.getpid() and state != "Z" and cmdline.startswith("git"):
            found[int(entry.name)] = cmdline
    return found


def history_of(repo: Repo, versions: int) -> list[tuple[str, str, bytes]]:
    """Commit `versions` changes over three files; returns (commit, path, content) of each."""
    made = []
    for n in range(versions):
        path = f"prompts/p{n % 3}.md"
        content = f"<!-- role:user -->\nversion {n}\n".encode() + b"x" * (n * 97 % 5000)
        repo.write(path, content)
        made.append((repo.commit(f"v{n}"), path, content))
    return made


# -- errors -------------------------------------------------------------------------------------


def test_a_failing_git_command_raises_git_error_with_gits_stderr(
    repo: Repo, store: GitStore
) -> None:
    with pytest.raises(GitError) as info:
        store.log_changes(since="0123456789" * 4)
    assert info.value.message.startswith("git log failed: ")
    assert "0123456789" * 4 in info.value.message  # git's own words name the bad revision
    assert info.value.status == 500
    # A command fed on stdin reports its stderr the same way.
    with pytest.raises(GitError, match="git hash-object failed: .*no-such-option"):
        store.git("hash-object", "--no-such-option", "--stdin", input=b"data\n")
    # Without `check`, the caller gets the status and stderr instead.
    result = store.git("rev-parse", "--verify", "no-such-branch", check=False)
    assert result.returncode != 0 and "Needed a single revision" in result.stderr


def test_command_output_and_input_pass_through_byte_for_byte(repo: Repo, store: GitStore) -> None:
    data = b"\n\nno newline at the end, bytes \xff\xfe\r\n\n"
    blob = store.out("hash-object", "-w", "--stdin", input=data)
    assert blob == blob_id(data)
    assert store.git("cat-file", "blob", blob).stdout == data
    assert store.read_blobs([blob]) == {blob: data}


# -- blob reads ---------------------------------------------------------------------------------


def test_file_at_reads_a_file_at_a_commit_or_ref(repo: Repo, store: GitStore) -> None:
    made = history_of(repo, 4)
    for commit, path, content in made:
        assert store.file_at(commit, path) == content
    assert store.file_at("main", made[-1][1]) == made[-1][2]  # a ref is resolved first
    assert store.file_at(made[0][0], "prompts/nothing-here.md") is None
    assert store.file_at(made[0][0], "prompts") is None  # a folder is not a file
    assert store.file_at(made[0][0], "prompts/p0.md\nHEAD") is None
    assert store.file_at("no-such-ref", "prompts/p0.md") is None


def test_blob_reads_from_many_threads_at_once_are_each_correct(repo: Repo, store: GitStore) -> None:
    """The persistent `cat-file` answers in order: without the store's lock, threads would
    read one another's answers (or half of one)."""
    made = history_of(repo, 24)
    by_blob = {blob_id(content): content for _, _, content in made}
    blobs = sorted(by_blob)
    assert len(blobs) <= PERSISTENT_READ_MAX  # every read goes through the persistent process
    threads, rounds = 8, 25
    start = threading.Barrier(threads, timeout=30)
    wrong: list[str] = []

    def reader(n: int) -> None:
        start.wait()
        for i in range(rounds):
            commit, path, content = made[(n * 7 + i) % len(made)]
            if store.file_at(commit, path) != content:
                wrong.append(f"thread {n}: {path} at {commit[:7]}")
            chosen = blobs[(n + i) % len(blobs) :][: 1 + (n + i) % 5]
            if store.read_blobs(chosen) != {b: by_blob[b] for b in chosen}:
                wrong.append(f"thread {n}: blobs {[b[:7] for b in chosen]}")

    workers = [threading.Thread(target=reader, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers)
    assert wrong == []


def test_a_cat_file_process_that_died_is_replaced(repo: Repo, store: GitStore) -> None:
    commit, path, content = history_of(repo, 2)[-1]
    before = git_children()
    assert store.file_at(commit, path) == content
    started = {pid: cmd for pid, cmd in git_children().items() if pid not in before}
    assert list(started.values()) == ["git cat-file --batch"]
    os.kill(next(iter(started)), signal.SIGKILL)
    assert store.file_at(commit, path) == content
    assert store.read_blobs([blob_id(content)]) == {blob_id(content): content}


def test_the_persistent_reader_sees_objects_written_or_repacked_after_it_started(
    repo: Repo, store: GitStore
) -> None:
    """A server's cat-file lives for hours: commits and `git gc` happen under it."""
    first, path, content = history_of(repo, 1)[0]
    assert store.file_at(first, path) == content
    later_content = content + b"later\n"
    repo.write(path, later_content)
    later = repo.commit("later")
    assert store.file_at(later, path) == later_content  # a loose object written since
    repo.git("gc", "-q", "--prune=now")  # every object moves into a new pack
    assert not list((repo.root / ".git" / "objects").glob("[0-9a-f][0-9a-f]/*"))
    assert store.file_at(first, path) == content
    assert store.read_blobs([blob_id(later_content)]) == {blob_id(later_content): later_content}


def test_closing_the_store_stops_its_git_processes(repo: Repo) -> None:
    commit, path, content = history_of(repo, 2)[-1]
    before = git_children()
    store = GitStore(repo.root)
    assert store.file_at(commit, path) == content
    assert [cmd for pid, cmd in git_children().items() if pid not in before] == [
        "git cat-file --batch"
    ]
    store.close()
    assert [pid for pid in git_children() if pid not in before] == []
    # A closed store still reads; it starts what it needs again, and stops it on close again.
    assert store.file_at(commit, path) == content
    store.close()
    assert [pid for pid in git_children() if pid not in before] == []


def test_closing_a_workspace_stops_its_git_processes(repo: Repo) -> None:
    history_of(repo, 3)
    before = git_children()
    ws = Workspace.open(str(repo.root))
    ws.index.sync()  # a first sync reads every blob of a small history one by one
    assert ws.index.get_prompt("p2").version is not None
    assert [pid for pid in git_children() if pid not in before]
    ws.close()
    assert [pid for pid in git_children() if pid not in before] == []


# -- refs ---------------------------------------------------------------------------------------


def refs_as_git_says(repo: Repo) -> tuple[str | None, str | None, str, str | None]:
    """(head, branch, head ref, the main branch's commit) as git itself answers."""
    head = repo.git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False) or None
    ref = repo.git("symbolic-ref", "--quiet", "HEAD", check=False)
    main = repo.git("rev-parse", "--verify", "--quiet", "refs/heads/main", check=False) or None
    return head, ref.removeprefix("refs/heads/") or None, ref or "HEAD", main


def refs_as_store_says(store: GitStore) -> tuple[str | None, str | None, str, str | None]:
    return store.head(), store.branch(), store.head_ref(), store.ref_value("refs/heads/main")


@pytest.mark.parametrize("declared_storage", [None, "reftable"])
def test_refs_read_as_git_reads_them(repo: Repo, declared_storage: str | None) -> None:
    """Loose and packed, on a branch, on a branch with a slash, detached and unborn. A repository
    that declares another ref storage is asked through git (git before 2.45 ignores the
    declaration in a version-0 repository, so both paths can be compared here)."""
    if declared_storage:
        repo.git("config", "extensions.refStorage", declared_storage)
    history_of(repo, 2)
    with GitStore(repo.root) as store:
        assert store._refs_in_files is (declared_storage is None)

        def same() -> None:
            assert refs_as_store_says(store) == refs_as_git_says(repo)

        same()
        repo.git("pack-refs", "--all")  # refs/heads/main now lives in packed-refs only
        assert not (repo.root / ".git" / "refs" / "heads" / "main").exists()
        same()
        repo.git("checkout", "-q", "-b", "feature/x")
        repo.commit("on a branch with a slash")
        same()
        assert store.branch() == "feature/x"
        repo.git("checkout", "-q", "--detach", "main")
        same()
        assert (store.branch(), store.head_ref()) == (None, "HEAD")
        repo.git("checkout", "-q", "--orphan", "unborn")
        same()
        assert (store.head(), store.branch(), store.head_ref()) == (
            None,
            "unborn",
            "refs/heads/unborn",
        )
        assert store.ref_value("refs/heads/no-such-branch") is None


def test_a_linked_worktree_reads_its_own_head(repo: Repo, tmp_path: Path) -> None:
    main_head = repo.head()
    linked = Repo(tmp_path / "linked")
    repo.git("worktree", "add", "-q", "-b", "side", str(linked.root))
    linked.write("prompts/side.md", "<!-- role:user -->\nside\n")
    side_head = linked.commit("side")
    with GitStore(linked.root) as store:
        assert (store.head(), store.branch()) == (side_head, "side")
        assert store.ref_value("refs/heads/main") == main_head
