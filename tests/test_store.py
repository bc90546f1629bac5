"""GitStore: bulk history reads, one-file commits, conflicts, rollback, path confinement, locking."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmkit.authoring import delete_prompt, restore_version, save_prompt
from llmkit.errors import BadRequest, ConfigError, Conflict, InvalidKey, NotFound
from llmkit.promptfile import parse
from llmkit.store import GitStore, blob_id, sanitize_identity, sanitize_message, write_atomic
from llmkit.workspace import Workspace
from tests.conftest import HELLO_PROMPT, Repo

NEW_TEXT = "---\nmodel: default\n---\n<!-- role:system -->\nA new text.\n"


@pytest.fixture
def store(repo: Repo) -> GitStore:
    return GitStore(repo.root, repo.root / ".llmkit" / "write.lock")


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
    proc = subprocess.run(["git", "fsck", "--strict", "--no-dangling"], cwd=repo.root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in proc.stderr.lower()


def refuse_ref_updates(repo: Repo) -> None:
    """A real git failure: a reference-transaction hook that aborts every ref update."""
    hook = repo.root / ".git" / "hooks" / "reference-transaction"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text('#!/bin/sh\nif [ "$1" = prepared ]; then echo "refused by hook" >&2; exit 1; fi\nexit 0\n')
    hook.chmod(0o755)


# -- bulk reads --------------------------------------------------------------------------------


def test_log_changes_lists_commits_oldest_first_with_their_changes(repo: Repo, store: GitStore) -> None:
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
    assert (commit.message, commit.author_name, commit.author_email) == ("second", "Test Author", "author@example.com")
    assert commit.authored_at > 0 and commit.committed_at > 0
    assert sorted((c.path, c.status) for c in changes) == [("evals/hello/a.yaml", "A"), ("prompts/hello.md", "M")]
    deleted = history[2][1]
    assert [(c.path, c.status, c.blob) for c in deleted] == [("prompts/static.md", "D", None)]
    assert [c.sha for c, _ in store.log_changes(since=first)] == [second, third]


def test_read_blobs_reads_many_contents_in_one_process(repo: Repo, store: GitStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(30):
        repo.write(f"prompts/p{i % 5}.md", f"<!-- role:user -->\nversion {i}\n")
        repo.commit(f"v{i}")
    history = store.log_changes()
    blobs = [c.blob for _, changes in history for c in changes if c.blob]
    assert len(blobs) == 32

    spawned: list[list[str]] = []
    real_popen = subprocess.Popen

    def counting_popen(args: list[str], *a: object, **kw: object) -> subprocess.Popen[bytes]:
        spawned.append(list(args))  # subprocess.run goes through here too
        return real_popen(args, *a, **kw)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(subprocess, "Popen", counting_popen)
    contents = store.read_blobs(blobs + ["0" * 40])
    assert len(spawned) == 1
    assert set(contents) == set(blobs)  # the missing object is simply absent
    for blob, data in contents.items():
        assert blob_id(data) == blob


def test_resolve_ref_accepts_refs_and_refuses_option_like_or_odd_input(repo: Repo, store: GitStore) -> None:
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


def test_write_commits_exactly_one_file_and_leaves_the_authors_work_alone(repo: Repo, store: GitStore) -> None:
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
    save_prompt(workspace, "team/new", v1, create=True, message="create it", author_name="Ann", author_email="ann@example.com")
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


def test_creating_an_existing_prompt_or_updating_a_missing_one_is_refused(workspace: Workspace, repo: Repo) -> None:
    head = repo.head()
    with pytest.raises(Conflict):
        save_prompt(workspace, "hello", parse(NEW_TEXT), create=True)
    with pytest.raises(NotFound):
        save_prompt(workspace, "nope", parse(NEW_TEXT))
    with pytest.raises(NotFound):
        delete_prompt(workspace, "nope")
    with pytest.raises(BadRequest, match=r"prompts/bad\.md:5: Template syntax error"):
        save_prompt(workspace, "bad", parse("---\nmodel: m\n---\n<!-- role:user -->\n{% if x %}\n"), create=True)
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


def test_a_prompts_folder_that_is_a_link_out_of_the_repository_is_refused(make_repo, outside: Path) -> None:  # type: ignore[no-untyped-def]
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
def test_keys_that_escape_are_refused_by_the_authoring_layer(workspace: Workspace, repo: Repo, key: str) -> None:
    snap = Snapshot(repo)
    with pytest.raises(InvalidKey):
        save_prompt(workspace, key, parse(NEW_TEXT), create=True)
    assert Snapshot(repo) == snap


def test_working_files_skip_hidden_entries_and_never_follow_links(repo: Repo, store: GitStore, outside: Path) -> None:
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
    sha = store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message=" \x00 ", author_name="<>")
    assert repo.git("log", "-1", "--format=%an|%ae|%s", sha) == "Test Author|author@example.com|Update prompts/hello.md"


def test_an_author_email_alone_is_kept_and_a_name_alone_gets_no_borrowed_address(
    repo: Repo, store: GitStore
) -> None:
    sha = store.commit_file("prompts/hello.md", NEW_TEXT.encode(), message="m", author_email="ann@example.com")
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


def test_a_repository_without_identity_commits_as_llmkit(make_repo, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo("anon")
    repo.git("config", "--unset", "user.name")
    repo.git("config", "--unset", "user.email")
    for name in list(os.environ):
        if name.startswith(("GIT_AUTHOR", "GIT_COMMITTER", "EMAIL")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(repo.root))  # no global identity either
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    sha = GitStore(repo.root).commit_file("prompts/a.md", b"x\n", message="m")
    assert repo.git("log", "-1", "--format=%an <%ae> / %cn <%ce>", sha) == "llmkit <llmkit@localhost> / llmkit <llmkit@localhost>"


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
            target.commit_file("prompts/hello.md", f"writer {i}\n".encode(), message=f"writer {i}", base=base)
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


def write_many(root: str, name: str, count: int, barrier: "multiprocessing.synchronize.Barrier") -> None:
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
    assert sorted(messages) == sorted([f"child {i}" for i in range(6)] + [f"parent {i}" for i in range(6)])
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
            store.commit_file("prompts/race.md", f"writer {n}\n".encode(), message=f"create {n}", create=True)
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
