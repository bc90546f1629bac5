"""GitStore: bulk history reads, one-file commits, conflicts, rollback, path confinement, locking,
the crash-safe write protocol (real SIGKILLs of a writing process at each step) and symlinks."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import llmkit.store as store_module
from llmkit.authoring import delete_prompt, restore_version, save_prompt
from llmkit.durable import write_atomic
from llmkit.errors import BadRequest, ConfigError, Conflict, InvalidKey, NotFound, RepositoryBusy
from llmkit.evals.spec import eval_file_paths
from llmkit.gitwrite import WRITE_STEPS, _fault_plan
from llmkit.lint import lint_repo
from llmkit.promptfile import parse
from llmkit.store import (
    GitError,
    GitStore,
    blob_id,
    sanitize_identity,
    sanitize_message,
)
from llmkit.workspace import Workspace
from tests.helpers import HELLO_PROMPT, Repo

NEW_TEXT = "---\nmodel: default\n---\n<!-- role:system -->\nA new text.\n"


@pytest.fixture
def store(repo: Repo) -> Iterator[GitStore]:
    with GitStore(repo.root, repo.root / ".llmkit" / "write.lock") as store:
        yield store


class Snapshot:
    """Everything a failed write must leave as it was: HEAD, refs, index, status, file bytes."""

    def __init__(self, repo: Repo) -> None:
        self.head = repo.head()
        self.refs = repo.git("for-each-ref", "--format=%(refname) %(objectname)")
        self.index = repo.git("ls-files", "-s")
        self.status = repo.status()
        self.files = {
            p.relative_to(repo.root).as_posix(): p.read_bytes()
            for top in ("prompts", "evals")
            if (repo.root / top).is_dir()
            for p in sorted((repo.root / top).rglob("*"))
            if p.is_file() and not p.is_symlink()
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and vars(self) == vars(other)


def changed_files(repo: Repo, sha: str = "HEAD") -> list[str]:
    return repo.git("show", "--name-only", "--format=", sha).splitlines()


def fsck_clean(repo: Repo) -> None:
    proc = subprocess.run(
        ["git", "fsck", "--strict", "--no-dangling"], cwd=repo.root, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in proc.stderr.lower()


def refuse_ref_updates(repo: Repo) -> None:
    """A real git failure: a reference-transaction hook that aborts every ref update."""
    hook = repo.root / ".git" / "hooks" / "reference-transaction"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(
        '#!/bin/sh\nif [ "$1" = prepared ]; then echo "refused by hook" >&2; exit 1; fi\nexit 0\n'
    )
    hook.chmod(0o755)


# -- bulk reads --------------------------------------------------------------------------------


def test_log_changes_lists_commits_oldest_first_with_their_changes(
    repo: Repo, store: GitStore
) -> None:
    first = repo.head()
    repo.write("prompts/hello.md", HELLO_PROMPT + "\nmore\n")
    repo.write("evals/hello/a.yaml", "name: a\n")
    repo.write("README.md", "not tracked by llmkit\n")
    second = repo.commit("second")
    repo.write("README.md", "only outside prompts/\n")
    repo.commit("readme only")
    repo.remove("prompts/static.md")
    third = repo.commit("third")

    history = store.log_changes()
    assert [c.sha for c, _ in history] == [first, second, third]
    commit, changes = history[1]
    assert (commit.message, commit.author_name, commit.author_email) == (
        "second",
        "Test Author",
        "author@example.com",
    )
    assert commit.authored_at > 0 and commit.committed_at > 0
    assert sorted((c.path, c.status) for c in changes) == [
        ("evals/hello/a.yaml", "A"),
        ("prompts/hello.md", "M"),
    ]
    deleted = history[2][1]
    assert [(c.path, c.status, c.blob) for c in deleted] == [("prompts/static.md", "D", None)]
    assert [c.sha for c, _ in store.log_changes(since=first)] == [second, third]


def spawned_by_gitpython(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The command lines of the processes GitPython starts from now on."""
    import git.cmd

    spawned: list[list[str]] = []
    real_popen = git.cmd.safer_popen

    def counting_popen(args: list[str], *a: object, **kw: object) -> subprocess.Popen[bytes]:
        spawned.append(list(args))
        return real_popen(args, *a, **kw)

    monkeypatch.setattr(git.cmd, "safer_popen", counting_popen)
    return spawned


@pytest.mark.parametrize("streamed", [False, True])
def test_read_blobs_reads_many_contents_in_one_process(
    repo: Repo, store: GitStore, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    for i in range(30):
        repo.write(f"prompts/p{i % 5}.md", f"<!-- role:user -->\nversion {i}\n")
        repo.commit(f"v{i}")
    history = store.log_changes()
    blobs = [c.blob for _, changes in history for c in changes if c.blob]
    assert len(blobs) == 32
    if streamed:  # more blobs than the persistent process is asked for one by one
        monkeypatch.setattr(store_module, "PERSISTENT_READ_MAX", 8)

    spawned = spawned_by_gitpython(monkeypatch)
    for _ in range(2):
        contents = store.read_blobs(blobs + ["0" * 40, "not an id"])
        assert set(contents) == set(blobs)  # a missing object is simply absent
        for blob, data in contents.items():
            assert blob_id(data) == blob
    # Streamed: one process per call. One at a time: the persistent process, started once.
    assert [args[1:] for args in spawned] == [["cat-file", "--batch"]] * (2 if streamed else 1)


def test_resolve_ref_accepts_refs_and_refuses_option_like_or_odd_input(
    repo: Repo, store: GitStore
) -> None:
    head = repo.head()
    repo.git("tag", "v1")
    assert store.resolve_ref("main") == head
    assert store.resolve_ref("v1") == head
    assert store.resolve_ref(head[:7]) == head
    for bad in ["--all", "no-such-branch", "main..main", "HEAD:prompts/hello.md", "", "a b"]:
        assert store.resolve_ref(bad) is None


def test_a_folder_that_is_not_a_repository_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a git repository"):
        GitStore(tmp_path)


# -- writes: one file, one commit --------------------------------------------------------------


def test_write_commits_exactly_one_file_and_leaves_the_authors_work_alone(
    repo: Repo, store: GitStore
) -> None:
    repo.write("prompts/staged.md", "<!-- role:user -->\nstaged by the author\n")
    repo.git("add", "prompts/staged.md")
    repo.write("prompts/static.md", "an unstaged edit\n")
    repo.write("prompts/untracked.md", "untracked\n")
    before_head = repo.head()

    sha = store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="API edit")

    assert repo.head() == sha
    assert repo.git("rev-parse", f"{sha}^") == before_head
    assert changed_files(repo, sha) == ["prompts/hello.md"]
    assert repo.read("prompts/hello.md") == NEW_TEXT
    assert repo.git("diff", "--cached", "--name-only").splitlines() == ["prompts/staged.md"]
    assert repo.read("prompts/static.md") == "an unstaged edit\n"
    assert repo.read("prompts/untracked.md") == "untracked\n"
    assert sorted(repo.status().splitlines()) == [
        " M prompts/static.md",
        "?? prompts/untracked.md",
        "A  prompts/staged.md",
    ]
    # no temp files left behind
    assert not [p for p in (repo.root / "prompts").iterdir() if p.name.startswith(".")]


def test_create_delete_and_restore_are_commits(repo: Repo, workspace: Workspace) -> None:
    v1 = parse(NEW_TEXT)
    save_prompt(
        workspace,
        "team/new",
        v1,
        create=True,
        message="create it",
        author_name="Ann",
        author_email="ann@example.com",
    )
    assert repo.git("log", "-1", "--format=%an <%ae> %s") == "Ann <ann@example.com> create it"
    assert changed_files(repo) == ["prompts/team/new.md"]

    v2 = parse(NEW_TEXT.replace("A new text.", "Second text."))
    prompt = save_prompt(workspace, "team/new", v2)
    assert prompt.version is not None and prompt.version.number == 2

    restored = restore_version(workspace, "team/new", 1)
    assert restored.version is not None and restored.version.number == 3
    assert repo.read("prompts/team/new.md") == NEW_TEXT
    assert repo.git("log", "-1", "--format=%s").startswith("Restore team/new to version 1")

    delete_prompt(workspace, "team/new")
    assert not repo.path("prompts/team/new.md").exists()
    assert changed_files(repo) == ["prompts/team/new.md"]
    assert repo.status() == ""
    assert [v.number for v in workspace.index.versions("team/new")] == [1, 2, 3]
    assert len(repo.log("--", "prompts/team/new.md")) == 4


def test_creating_an_existing_prompt_or_updating_a_missing_one_is_refused(
    workspace: Workspace, repo: Repo
) -> None:
    head = repo.head()
    with pytest.raises(Conflict):
        save_prompt(workspace, "hello", parse(NEW_TEXT), create=True)
    with pytest.raises(NotFound):
        save_prompt(workspace, "nope", parse(NEW_TEXT))
    with pytest.raises(NotFound):
        delete_prompt(workspace, "nope")
    with pytest.raises(BadRequest, match=r"prompts/bad\.md:5: Template syntax error"):
        save_prompt(
            workspace,
            "bad",
            parse("---\nmodel: m\n---\n<!-- role:user -->\n{% if x %}\n"),
            create=True,
        )
    assert repo.head() == head
    assert not repo.path("prompts/bad.md").exists()


def test_unchanged_content_and_missing_files_are_refused(repo: Repo, store: GitStore) -> None:
    snap = Snapshot(repo)
    with pytest.raises(BadRequest, match="unchanged"):
        store.commit_file("prompts/hello.md", HELLO_PROMPT.encode(), message="noop")
    with pytest.raises(NotFound):
        store.commit_file("prompts/missing.md", None, message="delete")
    assert Snapshot(repo) == snap


# -- conflicts ---------------------------------------------------------------------------------


def test_a_file_with_working_tree_edits_is_refused(repo: Repo, store: GitStore) -> None:
    repo.write("prompts/hello.md", "the author's unsaved work\n")
    snap = Snapshot(repo)
    with pytest.raises(Conflict) as info:
        store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="API edit")
    assert info.value.status == 409
    assert "prompts/hello.md" in info.value.message
    assert Snapshot(repo) == snap


def test_a_file_with_staged_edits_is_refused(repo: Repo, store: GitStore) -> None:
    repo.write("prompts/hello.md", "staged work\n")
    repo.git("add", "prompts/hello.md")
    repo.write("prompts/hello.md", HELLO_PROMPT)  # working tree back to HEAD, index still differs
    snap = Snapshot(repo)
    with pytest.raises(Conflict, match="staged"):
        store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="API edit")
    assert Snapshot(repo) == snap


def test_an_untracked_file_is_never_overwritten(repo: Repo, store: GitStore) -> None:
    repo.write("prompts/draft.md", "an author's new file\n")
    snap = Snapshot(repo)
    with pytest.raises(Conflict):
        store.commit_file("prompts/draft.md", NEW_TEXT.encode(), message="API create")
    assert Snapshot(repo) == snap


def test_a_stale_base_is_refused_and_the_current_one_accepted(repo: Repo, store: GitStore) -> None:
    base = repo.head()
    repo.write("prompts/hello.md", HELLO_PROMPT + "\nchanged by someone else\n")
    current = repo.commit("someone else")
    snap = Snapshot(repo)
    with pytest.raises(Conflict, match="moved on"):
        store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="late", base=base[:10])
    with pytest.raises(BadRequest, match="not a commit sha"):
        store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="late", base="main")
    assert Snapshot(repo) == snap
    # an unrelated commit does not make the base stale: it is the file's latest version that counts
    repo.write("README.md", "unrelated\n")
    repo.commit("unrelated")
    sha = store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="ok", base=current[:8])
    assert repo.head() == sha


# -- rollback ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("prompts/hello.md", NEW_TEXT.encode()),
        ("prompts/brand-new.md", NEW_TEXT.encode()),
        ("prompts/new/deep/folder.md", NEW_TEXT.encode()),
        ("evals/new/case.yaml", b"name: x\n"),
        ("prompts/static.md", None),
    ],
    ids=["update", "create", "create-in-new-folders", "create-eval", "delete"],
)
def test_a_failed_commit_leaves_file_and_branch_as_they_were(
    repo: Repo, store: GitStore, path: str, content: bytes | None
) -> None:
    repo.write("prompts/other.md", "staged\n")
    repo.git("add", "prompts/other.md")
    refuse_ref_updates(repo)
    snap = Snapshot(repo)
    with pytest.raises(Conflict) as info:
        store.commit_file(path, content, message="will fail")
    assert "refused by hook" in info.value.message
    assert Snapshot(repo) == snap
    assert not repo.path("prompts/new").exists() and not repo.path("evals").exists()
    fsck_clean(repo)


# -- path confinement ------------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "victim.md").write_text("outside the repository\n")
    return folder


@pytest.mark.parametrize(
    "path",
    [
        "../x.md",
        "/etc/passwd",
        ".git/config",
        "prompts/../../etc/passwd",
        "prompts/../.git/config",
        "prompts/a\x00b.md",
        "prompts/.hidden.md",
        "prompts//a.md",
        "prompts\\a.md",
        "README.md",
        "prompts",
        "prompts/escape/victim.md",
        "prompts/link.md",
        "evals/out/victim.md",
    ],
)
def test_paths_outside_prompts_and_evals_are_refused_and_nothing_changes(
    repo: Repo, store: GitStore, outside: Path, path: str
) -> None:
    os.symlink(outside, repo.root / "prompts" / "escape")
    os.symlink(outside / "victim.md", repo.root / "prompts" / "link.md")
    (repo.root / "evals").mkdir()
    os.symlink(outside, repo.root / "evals" / "out")
    snap = Snapshot(repo)
    config = (repo.root / ".git" / "config").read_bytes()
    for content in (b"pwned\n", None):
        with pytest.raises(InvalidKey) as info:
            store.commit_file(path, content, message="escape")
        assert info.value.status == 400
    assert Snapshot(repo) == snap
    assert (outside / "victim.md").read_text() == "outside the repository\n"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.md"]
    assert (repo.root / ".git" / "config").read_bytes() == config


def test_a_prompts_folder_that_is_a_link_out_of_the_repository_is_refused(
    make_repo, outside: Path
) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo("linked")
    os.symlink(outside, repo.root / "prompts")
    store = GitStore(repo.root)
    head = repo.head()
    with pytest.raises(InvalidKey, match="leaves the repository"):
        store.commit_file("prompts/victim.md", b"x\n", message="escape")
    assert repo.head() == head
    assert (outside / "victim.md").read_text() == "outside the repository\n"
    assert store.working_files("prompts", (".md",)) == {}


@pytest.mark.parametrize("key", ["../x", "/abs", ".git/config", "a/../../b", "a@b", "a\x00b"])
def test_keys_that_escape_are_refused_by_the_authoring_layer(
    workspace: Workspace, repo: Repo, key: str
) -> None:
    snap = Snapshot(repo)
    with pytest.raises(InvalidKey):
        save_prompt(workspace, key, parse(NEW_TEXT), create=True)
    assert Snapshot(repo) == snap


def test_working_files_skip_hidden_entries_and_never_follow_links(
    repo: Repo, store: GitStore, outside: Path
) -> None:
    repo.write("prompts/.hello.md.swp", "swap")
    repo.write("prompts/.cache/x.md", "hidden folder")
    repo.write("prompts/sub/deep.md", "deep")
    os.symlink(outside, repo.root / "prompts" / "escape")
    # A link that stays inside prompts/ is not followed either: one file, one key.
    os.symlink(repo.root / "prompts" / "sub" / "deep.md", repo.root / "prompts" / "alias.md")
    found = store.working_files("prompts", (".md",))
    assert sorted(found) == ["prompts/hello.md", "prompts/static.md", "prompts/sub/deep.md"]
    assert store.symlinks() == ["prompts/alias.md", "prompts/escape"]


# -- author and message sanitizing -----------------------------------------------------------------


def test_author_and_message_are_sanitized(repo: Repo, store: GitStore) -> None:
    sha = store.commit_file(
        "prompts/hello.md",
        NEW_TEXT.encode(),
        message="\x1b[31mRed\x07 title\r\n\n\n\n\nbody\x00 text  ",
        author_name="Eve <eve@evil>\nCommitter: x",
        author_email="<eve@example.com>\x00",
    )
    name, email, body = repo.git("log", "-1", "--format=%an%x1f%ae%x1f%B", sha).split("\x1f")
    assert name == "Eve eve@evilCommitter: x"
    assert email == "eve@example.com"
    assert body.rstrip("\n") == "[31mRed title\n\nbody text"
    assert repo.git("cat-file", "commit", sha).count("\nauthor ") == 1
    fsck_clean(repo)


def test_an_empty_message_and_identity_fall_back_to_defaults(repo: Repo, store: GitStore) -> None:
    sha = store.commit_file(
        "prompts/hello.md", NEW_TEXT.encode(), message=" \x00 ", author_name="<>"
    )
    assert (
        repo.git("log", "-1", "--format=%an|%ae|%s", sha)
        == "Test Author|author@example.com|Update prompts/hello.md"
    )


def test_an_author_email_alone_is_kept_and_a_name_alone_gets_no_borrowed_address(
    repo: Repo, store: GitStore
) -> None:
    sha = store.commit_file(
        "prompts/hello.md", NEW_TEXT.encode(), message="m", author_email="ann@example.com"
    )
    assert repo.git("log", "-1", "--format=%an|%ae", sha) == "Test Author|ann@example.com"
    sha = store.commit_file("prompts/hello.md", b"other\n", message="m", author_name="Bob")
    assert repo.git("log", "-1", "--format=%an|%ae", sha) == "Bob|unknown@llmkit.invalid"


def test_refs_with_nul_or_option_syntax_resolve_to_nothing(store: GitStore) -> None:
    assert store.resolve_ref("main\x00x") is None
    assert store.resolve_ref("--output=/tmp/x") is None
    assert store.resolve_ref("main") == store.head()


def test_sanitizers() -> None:
    assert sanitize_message(None, "default") == "default"
    assert sanitize_message("a\n\n\n\nb", "d") == "a\n\nb"
    assert len(sanitize_message("x" * 20_000, "d")) == 10_000
    assert sanitize_identity("A <b>\t\x7f", limit=200) == "A b"
    assert sanitize_identity("y" * 500) == "y" * 200


def test_a_repository_without_identity_commits_as_llmkit(
    make_repo, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo("anon")
    repo.git("config", "--unset", "user.name")
    repo.git("config", "--unset", "user.email")
    for name in list(os.environ):
        if name.startswith(("GIT_AUTHOR", "GIT_COMMITTER", "EMAIL")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(repo.root))  # no global identity either
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    sha = GitStore(repo.root).commit_file("prompts/a.md", b"x\n", message="m")
    assert (
        repo.git("log", "-1", "--format=%an <%ae> / %cn <%ce>", sha)
        == "llmkit <llmkit@localhost> / llmkit <llmkit@localhost>"
    )


# -- concurrency -----------------------------------------------------------------------------------


def test_sixteen_threads_with_the_same_base_one_wins(repo: Repo, store: GitStore) -> None:
    base = repo.head()
    barrier = threading.Barrier(16)
    outcomes: list[str] = []
    lock = threading.Lock()

    def write(i: int) -> None:
        # half share one store, half open their own: the lock must hold across both
        target = store if i % 2 else GitStore(repo.root, repo.root / ".llmkit" / "write.lock")
        barrier.wait(timeout=30)
        try:
            target.commit_file(
                "prompts/hello.md", f"writer {i}\n".encode(), message=f"writer {i}", base=base
            )
            result = "ok"
        except Conflict:
            result = "conflict"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["conflict"] * 15 + ["ok"]
    assert repo.git("rev-parse", "HEAD^") == base
    winner = repo.git("log", "-1", "--format=%s")
    assert repo.read("prompts/hello.md") == winner + "\n"
    assert repo.status() == ""
    fsck_clean(repo)


def write_many(
    root: str, name: str, count: int, barrier: multiprocessing.synchronize.Barrier
) -> None:
    """Run in a separate process: `count` writes to the same file, no base."""
    store = GitStore(Path(root), Path(root) / ".llmkit" / "write.lock")
    barrier.wait(timeout=60)
    for i in range(count):
        store.commit_file("prompts/hello.md", f"{name} {i}\n".encode(), message=f"{name} {i}")


def test_another_process_is_serialized_by_the_file_lock(repo: Repo, store: GitStore) -> None:
    base = repo.head()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    child = ctx.Process(target=write_many, args=(str(repo.root), "child", 6, barrier))
    child.start()
    try:
        write_many(str(repo.root), "parent", 6, barrier)
    finally:
        child.join(timeout=60)
    assert child.exitcode == 0
    assert int(repo.git("rev-list", "--count", f"{base}..HEAD")) == 12
    assert repo.git("rev-list", "--merges", "HEAD") == ""
    messages = repo.git("log", "--format=%s", f"{base}..HEAD").splitlines()
    assert sorted(messages) == sorted(
        [f"child {i}" for i in range(6)] + [f"parent {i}" for i in range(6)]
    )
    # each writer's own commits are in order
    for name in ("child", "parent"):
        mine = [m for m in reversed(messages) if m.startswith(name)]
        assert mine == [f"{name} {i}" for i in range(6)]
    assert repo.status() == ""
    fsck_clean(repo)


def test_write_atomic_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.md"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.md"]


@pytest.fixture(autouse=True)
def _no_leftover_index_files(repo: Repo) -> Iterator[None]:
    yield
    data = repo.root / ".llmkit"
    if data.is_dir():
        assert not [p.name for p in data.iterdir() if p.name.startswith("index-")]


def test_creates_of_one_file_from_separate_stores_let_exactly_one_win(repo: Repo) -> None:
    # Separate GitStore objects share no thread lock, as two processes would not: only the
    # file lock and the existence check under it keep the second create from replacing the first.
    stores = [GitStore(repo.root) for _ in range(8)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(stores))

    def create(store: GitStore, n: int) -> None:
        barrier.wait(timeout=10)
        try:
            store.commit_file(
                "prompts/race.md", f"writer {n}\n".encode(), message=f"create {n}", create=True
            )
            outcomes.append("created")
        except Conflict as exc:
            assert exc.code == "already_exists"
            outcomes.append("conflict")

    threads = [threading.Thread(target=create, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["conflict"] * 7 + ["created"]
    assert len(repo.log("--", "prompts/race.md")) == 1
    fsck_clean(repo)


# -- the write protocol: kills, locks held by others, recovery -------------------------------------

KILLED_WRITE = """
import sys
from pathlib import Path
from llmkit.store import GitStore
content = None if sys.argv[3] == "-" else sys.argv[3].encode()
GitStore(Path(sys.argv[1])).commit_file(sys.argv[2], content, message="killed write")
"""


def kill_a_write(repo: Repo, step: str, path: str, content: str | None) -> None:
    """Run one write in a separate process that SIGKILLs itself at `step`."""
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITE, str(repo.root), path, content or "-"],
        env={**os.environ, "LLMKIT_FAULT_AT": step},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def nothing_of_llmkit_left(repo: Repo) -> None:
    git_dir = repo.root / ".git"
    assert not (git_dir / "index.lock").exists()
    assert not (git_dir / "HEAD.lock").exists() and not list((git_dir / "refs").rglob("*.lock"))
    assert not list(git_dir.glob("llmkit-*"))
    assert not (repo.root / ".llmkit" / "write.journal").exists()


KINDS = {
    "create-in-new-folders": ("prompts/new/deep/file.md", "created\n"),
    "delete": ("prompts/static.md", None),
}


@pytest.mark.parametrize("step", WRITE_STEPS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_write_killed_at_any_step_is_rolled_back_or_forward(
    repo: Repo, kind: str, step: str
) -> None:
    path, content = KINDS[kind]
    if content is None and step == "worktree-temp":
        pytest.skip("a delete writes no temp file")
    repo.write("prompts/other.md", "staged by the author\n")
    repo.git("add", "prompts/other.md")
    before = repo.head()
    kill_a_write(repo, step, path, content)

    store = GitStore(repo.root, lock_timeout_s=0.2)
    assert store.recover() is not None or step == "journal-removed"
    fsck_clean(repo)
    nothing_of_llmkit_left(repo)
    assert repo.status() == "A  prompts/other.md"  # the author's staged work is still staged
    landed = WRITE_STEPS.index(step) >= WRITE_STEPS.index("in-update-ref-committed")
    if landed:
        assert repo.git("log", "-1", "--format=%P %s") == f"{before} killed write"
        assert changed_files(repo) == [path]
        assert repo.path(path).exists() == (content is not None)
    else:
        assert repo.head() == before
        assert repo.path(path).exists() == (content is None)
        assert not repo.path("prompts/new").exists()
    if content is not None and repo.path(path).exists():
        assert repo.read(path) == content
    # The author's next ordinary commit keeps whatever HEAD holds for the path.
    repo.git("commit", "-q", "-m", "the author's own")
    assert changed_files(repo) == ["prompts/other.md"]
    store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="writes work again")
    assert repo.status() == ""


def test_a_write_refused_while_another_process_holds_the_index_changes_nothing(repo: Repo) -> None:
    lock = repo.root / ".git" / "index.lock"
    lock.write_bytes(b"another git command's new index")
    snap = Snapshot(repo)
    store = GitStore(repo.root, lock_timeout_s=0.2)
    with pytest.raises(RepositoryBusy) as info:
        store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="while locked")
    assert (info.value.status, info.value.code) == (503, "repository_busy")
    assert info.value.headers == {"Retry-After": "1"}
    assert ".git/index.lock" in info.value.message
    assert Snapshot(repo) == snap
    assert lock.read_bytes() == b"another git command's new index"
    assert store.recover() is None  # nothing of llmkit's to recover, and the lock stays
    assert lock.exists()
    lock.unlink()
    store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="after")
    assert repo.status() == ""


def test_a_lock_held_briefly_by_another_process_only_delays_the_write(repo: Repo) -> None:
    lock = repo.root / ".git" / "index.lock"
    lock.write_bytes(b"held for a moment")
    release = threading.Timer(0.2, lock.unlink)
    release.start()
    try:
        store = GitStore(repo.root, lock_timeout_s=30)
        sha = store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="m")
    finally:
        release.join()
    assert repo.head() == sha and repo.status() == ""


def test_recovery_leaves_a_lock_it_cannot_prove_is_its_own(repo: Repo) -> None:
    kill_a_write(repo, "journal-begun", "prompts/hello.md", "killed\n")
    # Between the kill and the restart, another git command took the index.
    lock = repo.root / ".git" / "index.lock"
    lock.write_bytes(b"not llmkit's")
    branch_lock = repo.root / ".git" / "refs" / "heads" / "main.lock"
    branch_lock.write_bytes(b"")
    assert GitStore(repo.root, lock_timeout_s=0.1).recover() is not None
    assert lock.read_bytes() == b"not llmkit's" and branch_lock.exists()
    assert not (repo.root / ".llmkit" / "write.journal").exists()


def test_a_ref_lock_that_blocks_the_commit_point_is_a_retryable_refusal(
    repo: Repo, store: GitStore
) -> None:
    branch_lock = repo.root / ".git" / "refs" / "heads" / "main.lock"
    branch_lock.write_bytes(b"")  # someone else's, left by a crash
    snap = Snapshot(repo)
    with pytest.raises(RepositoryBusy, match=r"\.git/refs/heads/main\.lock"):
        store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="m")
    assert Snapshot(repo) == snap and branch_lock.exists()
    nothing_of_llmkit_left_but(repo, branch_lock)


def nothing_of_llmkit_left_but(repo: Repo, allowed: Path) -> None:
    git_dir = repo.root / ".git"
    assert [p for p in git_dir.rglob("*.lock") if p != allowed] == []
    assert not list(git_dir.glob("llmkit-*"))
    assert not (repo.root / ".llmkit" / "write.journal").exists()


def test_recovery_removes_temp_files_left_by_a_kill(repo: Repo, store: GitStore) -> None:
    data = repo.root / ".llmkit"
    data.mkdir(exist_ok=True)
    for name in ("index-3f2a", "index-3f2a.lock", "index-x9", "write.journal.tmp"):
        (data / name).write_bytes(b"DIRC")
    store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="m")  # recovers first
    assert sorted(p.name for p in data.iterdir()) == ["write.lock"]


def test_an_unreadable_journal_is_named_in_a_clear_error(repo: Repo, store: GitStore) -> None:
    journal = repo.root / ".llmkit" / "write.journal"
    journal.parent.mkdir(exist_ok=True)
    journal.write_text('{"nonce": "../../etc"}')
    snap = Snapshot(repo)
    with pytest.raises(GitError, match="write.journal records an interrupted write"):
        store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="m")
    assert Snapshot(repo) == snap


def test_the_fault_plan_is_read_from_one_variable_and_checked() -> None:
    assert _fault_plan(None) is None and _fault_plan("") is None
    assert _fault_plan("ref-moved") == ("ref-moved", 1)
    assert _fault_plan("worktree-temp:3") == ("worktree-temp", 3)
    with pytest.raises(ValueError, match="expected <step>"):
        _fault_plan("no-such-step")
    with pytest.raises(ValueError):
        _fault_plan("ref-moved:x")


def test_a_write_on_a_detached_head_moves_head_and_no_branch(repo: Repo, store: GitStore) -> None:
    repo.git("checkout", "-q", "--detach")
    main = repo.git("rev-parse", "main")
    sha = store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="detached")
    assert repo.head() == sha and repo.git("rev-parse", "main") == main
    assert repo.status() == ""


def test_a_write_in_a_linked_worktree_uses_its_own_index_and_branch(
    repo: Repo, tmp_path: Path
) -> None:
    linked = Repo(tmp_path / "linked")
    repo.git("worktree", "add", "-q", "-b", "side", str(linked.root))
    sha = GitStore(linked.root).commit_file("prompts/hello.md", NEW_TEXT.encode(), message="side")
    assert linked.head() == sha and repo.git("rev-parse", "side") == sha
    assert linked.status() == "" and repo.status() == ""
    assert repo.read("prompts/hello.md") == HELLO_PROMPT


def test_an_executable_file_keeps_its_mode(repo: Repo, store: GitStore) -> None:
    repo.path("prompts/hello.md").chmod(0o755)
    repo.commit("make it executable")
    sha = store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="m")
    assert repo.git("ls-tree", sha, "--", "prompts/hello.md").split()[0] == "100755"
    assert os.access(repo.path("prompts/hello.md"), os.X_OK) and repo.status() == ""


# -- symbolic links --------------------------------------------------------------------------------


def test_link_loops_and_dangling_links_neither_crash_nor_get_followed(
    repo: Repo, store: GitStore
) -> None:
    os.symlink(".", repo.root / "prompts" / "loop")
    os.symlink("..", repo.root / "prompts" / "up")
    os.symlink("missing.md", repo.root / "prompts" / "gone.md")
    (repo.root / "prompts" / "self").symlink_to("self")  # ELOOP on any stat that follows it
    found = store.working_files("prompts", (".md",))
    assert sorted(found) == ["prompts/hello.md", "prompts/static.md"]
    assert store.symlinks() == ["prompts/gone.md", "prompts/loop", "prompts/self", "prompts/up"]
    sha = store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="still writable")
    assert repo.head() == sha


def test_eval_files_are_never_read_through_links(repo: Repo, outside: Path) -> None:
    (outside / "secret.yaml").write_text("name: leaked\n")
    repo.write("evals/hello/basic.yaml", "name: basic\n")
    os.symlink(outside / "secret.yaml", repo.root / "evals" / "hello" / "leak.yaml")
    os.symlink("../..", repo.root / "evals" / "hello" / "up")
    os.symlink("nowhere.yaml", repo.root / "evals" / "hello" / "gone.yaml")
    os.symlink(".", repo.root / "evals" / "loop")
    found = [p.relative_to(repo.root).as_posix() for p in eval_file_paths(repo.root)]
    assert found == ["evals/hello/basic.yaml"]


def test_lint_reports_symbolic_links_committed_or_not(repo: Repo, outside: Path) -> None:
    os.symlink(".", repo.root / "prompts" / "loop")
    repo.commit("a committed link")
    os.symlink(outside / "victim.md", repo.root / "prompts" / "out.md")
    paths = [p.path for p in lint_repo(repo.root) if "Symbolic link" in p.message]
    assert paths == ["prompts/loop", "prompts/out.md"]
    # Checked out without symlink support, a committed link is a plain file: still reported.
    repo.git("config", "core.symlinks", "false")
    repo.path("prompts/loop").unlink()
    repo.git("checkout", "--", "prompts/loop")
    assert not repo.path("prompts/loop").is_symlink()
    assert "prompts/loop" in [p.path for p in lint_repo(repo.root) if "Symbolic link" in p.message]


def test_a_path_through_a_link_inside_prompts_is_refused(repo: Repo, store: GitStore) -> None:
    repo.write("prompts/sub/deep.md", "deep\n")
    repo.commit("sub")
    os.symlink("sub", repo.root / "prompts" / "alias")
    snap = Snapshot(repo)
    for path in ("prompts/alias/new.md", "prompts/alias/deep.md"):
        with pytest.raises(InvalidKey, match="symbolic link prompts/alias"):
            store.commit_file(path, b"through the link\n", message="m")
    assert Snapshot(repo) == snap and not repo.path("prompts/sub/new.md").exists()


def test_a_file_where_a_folder_is_expected_is_refused_before_committing(
    repo: Repo, store: GitStore
) -> None:
    head = repo.head()
    with pytest.raises(InvalidKey, match="not a folder"):
        store.commit_file("prompts/hello.md/x.md", b"x\n", message="m")
    repo.path("prompts/dir.md").mkdir()
    with pytest.raises(Conflict, match="folder"):
        store.commit_file("prompts/dir.md", b"x\n", message="m")
    assert repo.head() == head


def test_recovery_keeps_an_edit_the_author_made_after_the_kill(repo: Repo) -> None:
    before = repo.head()
    kill_a_write(repo, "ref-moved", "prompts/hello.md", "the API's text\n")
    repo.write("prompts/hello.md", "the author's edit, made before the restart\n")
    assert GitStore(repo.root).recover() is not None
    assert repo.git("log", "-1", "--format=%P %s") == f"{before} killed write"
    assert repo.read("prompts/hello.md") == "the author's edit, made before the restart\n"
    # The index holds the commit, so the edit shows as the author's own, unstaged change.
    assert repo.status() == " M prompts/hello.md"
    nothing_of_llmkit_left(repo)
