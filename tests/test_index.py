"""Index: rebuild and incremental sync give identical rows; drafts; version resolution."""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import pytest

from llmkit.db import Database
from llmkit.errors import InvalidKey, NotFound, PromptFormatError
from llmkit.index import Index
from llmkit.index_schema import INDEX_TABLES
from llmkit.prompt_views import iso_time, prompt_fields, version_fields, version_performance
from llmkit.store import GitStore
from llmkit.versions import unified_diff
from llmkit.workspace import Workspace
from tests.helpers import HELLO_PROMPT, MakeRepo, Repo, colleague_clone, opened_workspace

_fresh = itertools.count()


def text(body: str, model: str = "default") -> str:
    return f"---\nmodel: {model}\n---\n<!-- role:user -->\n{body}\n"


def dump(db: Database) -> dict[str, list[tuple[object, ...]]]:
    conn = db.reader()
    return {
        table: sorted((tuple(row) for row in conn.execute(f"SELECT * FROM {table}")), key=repr)
        for table in INDEX_TABLES
    }


def rebuilt(root: Path, tmp_path: Path) -> dict[str, list[tuple[object, ...]]]:
    """The rows a full rebuild into a brand-new database gives."""
    db = Database(tmp_path / "fresh" / f"{next(_fresh)}.db")
    try:
        Index(GitStore(root), db).rebuild()
        return dump(db)
    finally:
        db.close()


def assert_sync_equals_rebuild(ws: Workspace, tmp_path: Path) -> None:
    ws.index.sync()
    incremental = dump(ws.db)
    fresh = rebuilt(ws.settings.repo, tmp_path)
    for table in INDEX_TABLES:
        assert incremental[table] == fresh[table], f"{table} differs between sync and rebuild"
    # a rebuild of the same database gives the same rows too
    ws.index.rebuild()
    assert dump(ws.db) == incremental


def listing(ws: Workspace) -> list[tuple[int, str, int | None, bool]]:
    return [
        (p.id, p.key, p.version.number if p.version else None, bool(p.version and p.version.draft))
        for p in ws.index.list_prompts()
    ]


# -- sync == rebuild across everything an author does --------------------------------------------


def test_sync_equals_rebuild_across_commits_drafts_deletes_and_renames(
    repo: Repo, workspace: Workspace, tmp_path: Path
) -> None:
    ws = workspace
    assert listing(ws) == [(1, "hello", 1, False), (2, "static", 1, False)]
    assert_sync_equals_rebuild(ws, tmp_path)

    # new commits
    repo.write("prompts/b.md", text("b1"))
    repo.write("prompts/a.md", text("a1"))
    repo.commit("add a and b")
    repo.write("prompts/hello.md", HELLO_PROMPT + "\nv2\n")
    repo.commit("hello v2")
    assert_sync_equals_rebuild(ws, tmp_path)
    assert listing(ws) == [
        (1, "hello", 2, False),
        (2, "static", 1, False),
        (3, "a", 1, False),
        (4, "b", 1, False),
    ]

    # a working-tree edit is a draft: number last + 1, no sha
    repo.write("prompts/hello.md", HELLO_PROMPT + "\nv3 draft\n")
    assert_sync_equals_rebuild(ws, tmp_path)
    draft = ws.index.version("hello")
    assert (draft.number, draft.sha, draft.draft) == (3, None, True)
    assert draft.content is not None and draft.content.endswith("v3 draft\n")
    assert ws.index.get_prompt("hello").latest_committed == 2

    # untracked new files: ids after every prompt with history, in key order
    repo.write("prompts/zeta.md", text("z"))
    repo.write("prompts/sub/alpha.md", text("alpha"))
    assert_sync_equals_rebuild(ws, tmp_path)
    assert listing(ws)[4:] == [(5, "sub/alpha", 1, True), (6, "zeta", 1, True)]

    # the draft changes again, then an unrelated draft appears that sorts first
    repo.write("prompts/hello.md", HELLO_PROMPT + "\nv3 draft, edited\n")
    repo.write("prompts/0first.md", text("first"))
    assert_sync_equals_rebuild(ws, tmp_path)
    assert [key for _, key, _, _ in listing(ws)[4:]] == ["0first", "sub/alpha", "zeta"]

    # committing drafts turns them into versions; uncommitted ones keep following
    repo.commit("commit hello and zeta", "prompts/hello.md", "prompts/zeta.md")
    assert_sync_equals_rebuild(ws, tmp_path)
    hello = ws.index.version("hello")
    assert (hello.number, hello.draft, hello.sha) == (3, False, repo.head())
    assert listing(ws)[4:] == [
        (5, "zeta", 1, False),
        (6, "0first", 1, True),
        (7, "sub/alpha", 1, True),
    ]

    # a draft that is thrown away disappears
    repo.remove("prompts/0first.md")
    repo.write("prompts/hello.md", "scratch\n")
    repo.git("checkout", "--", "prompts/hello.md")
    assert_sync_equals_rebuild(ws, tmp_path)
    assert "0first" not in [key for _, key, _, _ in listing(ws)]

    # a deleted file is not listed, its history stays readable
    repo.git("rm", "-q", "prompts/b.md")
    repo.commit("delete b")
    assert_sync_equals_rebuild(ws, tmp_path)
    assert "b" not in [key for _, key, _, _ in listing(ws)]
    assert [v.number for v in ws.index.versions("b")] == [1]
    assert ws.index.version("b", 1).content == text("b1")
    with pytest.raises(NotFound, match="deleted"):
        ws.index.version("b")
    assert ws.index.get_prompt("b").present is False

    # a renamed file: the new key starts at version 1, the old one is deleted
    repo.path("prompts/renamed").mkdir()
    repo.git("mv", "prompts/a.md", "prompts/renamed/a.md")
    repo.commit("rename a")
    assert_sync_equals_rebuild(ws, tmp_path)
    assert [v.number for v in ws.index.versions("renamed/a")] == [1]
    assert ws.index.get_prompt("a").present is False

    # a file deleted in the working tree only is not served
    repo.remove("prompts/static.md")
    assert_sync_equals_rebuild(ws, tmp_path)
    assert "static" not in [key for _, key, _, _ in listing(ws)]
    repo.git("checkout", "--", "prompts/static.md")
    assert_sync_equals_rebuild(ws, tmp_path)
    assert "static" in [key for _, key, _, _ in listing(ws)]


def test_sync_equals_rebuild_across_branches_amend_and_rebase(
    repo: Repo, workspace: Workspace, tmp_path: Path
) -> None:
    ws = workspace
    start = repo.head()
    repo.write("prompts/hello.md", HELLO_PROMPT + "\nmain 2\n")
    repo.commit("main 2")
    repo.write("prompts/main-only.md", text("m"))
    repo.commit("main 3")
    assert_sync_equals_rebuild(ws, tmp_path)

    # a branch from an older commit: not an ancestor of what was indexed, so a rebuild
    repo.git("checkout", "-q", "-b", "other", start)
    repo.write("prompts/other-only.md", text("o"))
    repo.commit("other 1")
    report = ws.index.sync()
    assert report.rebuilt
    assert_sync_equals_rebuild(ws, tmp_path)
    assert [key for _, key, _, _ in listing(ws)] == ["hello", "static", "other-only"]
    assert ws.index.version("hello").number == 1

    # back on main
    repo.git("checkout", "-q", "main")
    assert_sync_equals_rebuild(ws, tmp_path)
    assert ws.index.version("hello").number == 2
    assert [key for _, key, _, _ in listing(ws)] == ["hello", "static", "main-only"]

    # a new branch at the same commit: only the branch name changes
    repo.git("checkout", "-q", "-b", "feature")
    assert not ws.index.sync().rebuilt
    assert ws.index._state("branch") == "feature"
    assert_sync_equals_rebuild(ws, tmp_path)

    # amend rewrites the last commit
    repo.write("prompts/main-only.md", text("m amended"))
    repo.git("commit", "-q", "-a", "--amend", "-m", "main 3 amended")
    assert ws.index.sync().rebuilt
    assert_sync_equals_rebuild(ws, tmp_path)
    assert ws.index.version("main-only").content == text("m amended")
    assert ws.index.version("main-only").number == 1

    # rebase feature onto other
    repo.write("prompts/feature.md", text("f"))
    repo.commit("feature 1")
    repo.git("rebase", "-q", "other")
    assert_sync_equals_rebuild(ws, tmp_path)
    assert sorted(key for _, key, _, _ in listing(ws)) == [
        "feature",
        "hello",
        "main-only",
        "other-only",
        "static",
    ]
    assert ws.index.head() == repo.head()


def test_sync_equals_rebuild_across_pulls_from_a_second_clone(
    repo: Repo, workspace: Workspace, tmp_path: Path
) -> None:
    ws = workspace
    colleague = colleague_clone(repo, tmp_path)
    repo.git("config", "pull.rebase", "false")
    colleague.write("prompts/hello.md", HELLO_PROMPT + "\nfrom the colleague\n")
    colleague.write("prompts/pulled.md", text("pulled"))
    colleague.commit("colleague's work")
    colleague.git("push", "-q", "origin", "main")

    # fast-forward pull
    repo.git("pull", "-q")
    report = ws.index.sync()
    assert not report.rebuilt and report.new_commits == 1
    assert_sync_equals_rebuild(ws, tmp_path)
    assert ws.index.version("hello").commit.author_name == "Colleague"  # type: ignore[union-attr]
    assert ws.index.version("pulled").number == 1

    # a pull that merges: both sides changed the same file in different places
    colleague.write(
        "prompts/hello.md", "colleague's first line\n" + HELLO_PROMPT + "\nfrom the colleague\n"
    )
    colleague.commit("colleague edits the top")
    colleague.git("push", "-q", "origin", "main")
    repo.write("prompts/hello.md", HELLO_PROMPT + "\nfrom the colleague\nmine at the bottom\n")
    repo.commit("I edit the bottom")
    ws.index.sync()
    repo.git("pull", "-q", "--no-edit")
    assert repo.read("prompts/hello.md").startswith("colleague's first line\n")
    assert repo.read("prompts/hello.md").endswith("mine at the bottom\n")
    assert_sync_equals_rebuild(ws, tmp_path)
    served = ws.index.version("hello")
    assert not served.draft, "a clean checkout after a merge serves no draft"
    assert served.content == repo.read("prompts/hello.md")
    assert served.sha == repo.head()


# -- drafts and the working tree -------------------------------------------------------------------


def test_a_rewrite_within_one_timestamp_tick_is_still_seen(
    repo: Repo, workspace: Workspace
) -> None:
    path = repo.path("prompts/hello.md")
    path.write_text(HELLO_PROMPT.replace("assistant", "assistent"))
    workspace.index.sync()
    st = path.stat()
    # Same size, same inode, same mtime: what a second save within a coarse clock tick looks like.
    with open(path, "r+b") as fh:
        fh.write(b"---\nmodel: dafault")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_ino == st.st_ino
    workspace.index.sync()
    assert workspace.index.version("hello").content == path.read_text()


def test_every_listing_serves_the_version_its_history_ends_with(
    repo: Repo, workspace: Workspace
) -> None:
    """list_prompts, page_prompts and get_prompt read the served versions of many prompts in
    one query; each must be the Version (content, error, commit, id, draft) that versions()
    reads one at a time, and latest_committed its highest committed number."""
    repo.write("prompts/a.md", text("a1"))
    repo.write("prompts/gone.md", text("gone"))
    repo.write("prompts/latin1.md", b"---\nmodel: m\n---\ncaf\xe9\n")
    repo.commit("add a, gone and latin1")
    repo.write("prompts/a.md", text("a2"))
    repo.git("rm", "-q", "prompts/gone.md")
    repo.commit("a2, delete gone")
    repo.write("prompts/a.md", text("a3 draft"))  # a draft served over committed a2
    repo.write("prompts/new.md", text("never committed"))
    index = workspace.index
    index.sync()

    def expected(key: str) -> tuple[object, int]:
        versions = index.versions(key)
        committed = [v.number for v in versions if not v.draft and v.number is not None]
        served = versions[-1] if index.get_prompt(key).present else None
        return served, max(committed, default=0)

    listed = index.list_prompts(include_deleted=True)
    assert {p.key for p in listed} == {"hello", "static", "a", "gone", "latin1", "new"}
    paged = {p.key: p for p in index.page_prompts(limit=100)}
    assert set(paged) == {p.key for p in listed if p.present}
    for prompt in listed:
        served, committed = expected(prompt.key)
        for seen in (prompt, index.get_prompt(prompt.key), paged.get(prompt.key, prompt)):
            assert (seen.version, seen.latest_committed) == (served, committed), prompt.key
    a = index.get_prompt("a")
    assert a.version is not None and a.version.draft and a.latest_committed == 2
    assert a.version.commit is None and a.version.content == text("a3 draft")
    assert index.get_prompt("gone").version is None
    latin1 = index.get_prompt("latin1").version
    assert latin1 is not None and latin1.content is None and "UTF-8" in str(latin1.error)
    assert latin1.commit is not None and latin1.commit.message == "add a, gone and latin1"


def test_files_that_cannot_be_read_keep_the_rest_indexing(
    repo: Repo, workspace: Workspace, tmp_path: Path
) -> None:
    repo.write("prompts/latin1.md", b"---\nmodel: m\n---\ncaf\xe9\n")
    repo.write("prompts/unknown-key.md", "---\nmodel: m\ncolour: red\n---\nhi\n")
    repo.write("prompts/bad name.md", "a key with a space is skipped\n")
    repo.write("prompts/good.md", text("fine"))
    repo.commit("mixed bag")
    assert_sync_equals_rebuild(workspace, tmp_path)
    keys = [key for _, key, _, _ in listing(workspace)]
    assert keys == ["hello", "static", "good", "latin1", "unknown-key"]

    latin1 = workspace.index.version("latin1")
    assert latin1.content is None and latin1.error is not None and "UTF-8" in latin1.error
    with pytest.raises(PromptFormatError) as info:
        latin1.prompt()
    assert str(info.value).startswith("prompts/latin1.md:1: ")
    with pytest.raises(PromptFormatError) as info:
        workspace.index.version("unknown-key").prompt()
    assert str(info.value).startswith("prompts/unknown-key.md:3: Unknown frontmatter key 'colour'")
    fields = prompt_fields(workspace.index.get_prompt("unknown-key"))
    assert "colour" in str(fields["error"])
    assert workspace.index.version("good").prompt().user == "fine"


def test_prompt_files_over_the_size_limit_are_errors_never_read_into_the_index(
    repo: Repo, workspace: Workspace, tmp_path: Path
) -> None:
    huge = text("x" * 300_000)
    repo.write("prompts/huge.md", huge)
    repo.commit("a huge prompt")
    repo.write("prompts/draft.md", text("y" * 300_000))
    assert_sync_equals_rebuild(workspace, tmp_path)
    for key in ("huge", "draft"):
        version = workspace.index.version(key)
        assert version.content is None
        assert version.error is not None
        assert "over the limit of 262,144 for a prompt file" in version.error
        with pytest.raises(PromptFormatError, match=f"^prompts/{key}.md:1: file is 300,0"):
            version.prompt()
        fields = prompt_fields(workspace.index.get_prompt(key))
        assert len(str(fields)) < 1000, "a listing carries the error, never the text"
    reader = workspace.db.reader()
    stored = reader.execute("SELECT MAX(LENGTH(content)) FROM ix_blobs").fetchone()[0]
    assert stored < 1000

    # A new limit in llmkit.yaml rebuilds the index at the next sync, and the file is served.
    repo.write("llmkit.yaml", "limits:\n  prompt_file_bytes: 400000\n")
    workspace.index.sync()
    assert workspace.index.version("huge").prompt().user == "x" * 300_000
    assert workspace.index.version("draft").prompt().user == "y" * 300_000
    repo.write("llmkit.yaml", "limits:\n  prompt_file_bytes: 1000\n")
    workspace.index.sync()
    assert workspace.index.version("huge").content is None
    assert workspace.index.version("hello").prompt().system


# -- versions --------------------------------------------------------------------------------------


@pytest.fixture
def history(repo: Repo, workspace: Workspace) -> list[str]:
    """hello has versions 1..4; v2 is tagged v2, branch 'stable' points at v3."""
    shas = [repo.log("--", "prompts/hello.md")[0]]
    for n in (2, 3, 4):
        repo.write("prompts/hello.md", HELLO_PROMPT + f"\nversion {n}\n")
        repo.write("prompts/static.md", f"static {n}\n")
        shas.append(repo.commit(f"hello v{n}"))
        if n == 2:
            repo.git("tag", "v2")
        if n == 3:
            repo.git("branch", "stable")
    repo.write("README.md", "unrelated\n")
    repo.commit("unrelated commit")
    workspace.index.sync()
    return shas


def test_versions_are_numbered_from_one_per_file(workspace: Workspace, history: list[str]) -> None:
    versions = workspace.index.versions("hello")
    assert [v.number for v in versions] == [1, 2, 3, 4]
    assert [v.sha for v in versions] == history
    assert [v.commit.message for v in versions if v.commit] == [
        "Initial commit",
        "hello v2",
        "hello v3",
        "hello v4",
    ]
    assert all(v.commit and v.commit.author_name == "Test Author" for v in versions)
    assert [v.number for v in workspace.index.versions("static")] == [1, 2, 3, 4]
    assert [v.number for v in workspace.index.versions(1)] == [1, 2, 3, 4]  # by integer id


@pytest.mark.parametrize(
    ("spec", "number"),
    [
        ("2", 2),
        (2, 2),
        ("v2", 2),
        ("stable", 3),
        ("main", 4),
        ("HEAD", 4),
        ("HEAD~1", 4),
        ("HEAD~2", 3),
        (None, 4),
    ],
)
def test_versions_by_number_ref_and_default(
    workspace: Workspace, history: list[str], spec: object, number: int
) -> None:
    version = workspace.index.version("hello", spec)  # type: ignore[arg-type]
    assert version.number == number
    assert version.sha == history[number - 1]
    assert version.content == (
        HELLO_PROMPT if number == 1 else HELLO_PROMPT + f"\nversion {number}\n"
    )


def test_versions_by_sha_prefix(workspace: Workspace, history: list[str]) -> None:
    for n, sha in enumerate(history, start=1):
        for prefix in (sha[:7], sha[:12], sha, sha[:8].upper()):
            assert workspace.index.version("hello", prefix).number == n


def test_a_sha_prefix_of_digits_only_is_not_taken_for_a_missing_number(
    repo: Repo, workspace: Workspace
) -> None:
    repo.write("prompts/digits.md", text("digits"))
    repo.git("add", "prompts/digits.md")
    tree, parent = repo.git("write-tree"), repo.head()
    for attempt in range(1000):  # about one commit in 27 has a 7-digit numeric prefix
        sha = repo.git("commit-tree", tree, "-p", parent, "-m", f"attempt {attempt}")
        if sha[:7].isdigit():
            break
    else:
        pytest.skip("no commit with an all-digit prefix came up")
    repo.git("update-ref", "HEAD", sha)
    workspace.index.sync()
    version = workspace.index.version("digits", sha[:7])
    assert (version.sha, version.number) == (sha, 1)


def test_a_ref_at_a_commit_that_did_not_touch_the_file_gives_the_version_in_force(
    workspace: Workspace, history: list[str], repo: Repo
) -> None:
    unrelated = repo.head()
    version = workspace.index.version("hello", unrelated[:10])
    assert (version.number, version.sha) == (4, history[3])


@pytest.mark.parametrize(
    "spec", ["99", "0", "deadbeef", "no-such-branch", "--all", "HEAD~50", "v2..main"]
)
def test_unknown_versions_are_not_found(
    workspace: Workspace, history: list[str], spec: str
) -> None:
    with pytest.raises(NotFound) as info:
        workspace.index.version("hello", spec)
    assert info.value.status == 404
    assert "hello" in info.value.message


def test_unknown_prompts_are_not_found_and_bad_keys_invalid(workspace: Workspace) -> None:
    with pytest.raises(NotFound, match="'nope'"):
        workspace.index.get_prompt("nope")
    with pytest.raises(NotFound, match="'99'"):
        workspace.index.get_prompt(99)
    with pytest.raises(InvalidKey):
        workspace.index.get_prompt("../etc/passwd")


def test_a_version_at_a_ref_where_the_file_is_absent_is_not_found(
    workspace: Workspace, repo: Repo
) -> None:
    first = repo.head()
    repo.write("prompts/later.md", text("later"))
    repo.commit("later")
    workspace.index.sync()
    with pytest.raises(NotFound):
        workspace.index.version("later", first)


def test_diff_between_versions(workspace: Workspace, history: list[str]) -> None:
    diff = workspace.index.diff("hello", 1, 2)
    assert diff.startswith("--- prompts/hello.md@1\n+++ prompts/hello.md@2\n")
    assert "+version 2\n" in diff
    assert workspace.index.diff("hello", 2, 2) == ""
    assert unified_diff("a\n", "b\n") == "--- a\n+++ b\n@@ -1 +1 @@\n-a\n+b\n"


def test_a_diff_of_texts_without_a_final_newline_keeps_their_last_lines_apart() -> None:
    marker = "\\ No newline at end of file\n"
    assert unified_diff("x\nold", "x\nnew") == (
        f"--- a\n+++ b\n@@ -1,2 +1,2 @@\n x\n-old\n{marker}+new\n{marker}"
    )
    assert unified_diff("same\n", "same") == f"--- a\n+++ b\n@@ -1 +1 @@\n-same\n+same\n{marker}"
    assert unified_diff("a", "a") == ""


def test_version_fields_use_llmkit_names(workspace: Workspace, history: list[str]) -> None:
    index = workspace.index
    fields = version_fields(index.version("hello", 4), previous=index.version("hello", 3))
    assert fields["version_number"] == 4
    assert fields["sha"] == history[3]
    assert fields["version_id"] == index.version("hello", 4).id == 7
    assert fields["prompt_type"] == "dynamic_both"
    assert fields["user"] == "{{ question }}\n\nversion 4"
    assert "+version 4" in str(fields["user_version_diff"])
    assert fields["system_version_diff"] == ""
    assert str(fields["updated_at"]).endswith("Z")


# -- ids, schema, bulk reads -----------------------------------------------------------------------


def version_ids(ws: Workspace) -> dict[tuple[str, int | None], int | None]:
    return {
        (v.key, v.number): v.id
        for p in ws.index.list_prompts(include_deleted=True)
        for v in ws.index.versions(p.key)
    }


def test_version_ids_follow_commit_order_then_key_and_survive_sync_and_rebuild(
    repo: Repo, workspace: Workspace, tmp_path: Path
) -> None:
    ws = workspace
    assert version_ids(ws) == {("hello", 1): 1, ("static", 1): 2}
    # two prompts changed in one commit: numbered by key, whatever order git lists them in
    repo.write("prompts/zz.md", text("z"))
    repo.write("prompts/a-b.md", text("ab"))  # its path sorts before prompts/a.md, its key after
    repo.write("prompts/a.md", text("a"))
    repo.commit("three at once")
    repo.write("prompts/hello.md", HELLO_PROMPT + "\nv2\n")
    repo.commit("hello v2")
    ws.index.sync()  # incremental
    expected = {
        ("hello", 1): 1,
        ("static", 1): 2,
        ("a", 1): 3,
        ("a-b", 1): 4,
        ("zz", 1): 5,
        ("hello", 2): 6,
    }
    assert version_ids(ws) == expected
    # a draft is not a version yet: no id, and committing it gives the next one
    repo.write("prompts/static.md", "static draft\n")
    ws.index.sync()
    draft = ws.index.version("static")
    assert (draft.draft, draft.id) == (True, None)
    assert prompt_fields(ws.index.get_prompt("static"))["version_id"] is None
    repo.commit("static v2", "prompts/static.md")
    assert_sync_equals_rebuild(ws, tmp_path)  # incremental, fresh and in-place rebuild agree
    assert version_ids(ws) == {**expected, ("static", 2): 7}
    # a rebuild from scratch into a new database gives the same ids
    assert [r[-1] for r in sorted(rebuilt(repo.root, tmp_path)["ix_versions"])] == [
        r[-1] for r in sorted(dump(ws.db)["ix_versions"])
    ]
    # resolved by id, by number, by sha and by ref alike
    by_id = ws.index.version_by_id(6)
    assert (by_id.key, by_id.number, by_id.sha) == ("hello", 2, ws.index.version("hello").sha)
    assert ws.index.version("hello", by_id.sha or "").id == 6
    assert ws.index.version("hello", "HEAD").id == 6
    assert ws.index.version_by_id(6, key="hello").number == 2


def test_a_version_id_is_never_taken_for_another_prompts_or_a_number(
    workspace: Workspace, history: list[str]
) -> None:
    index = workspace.index
    # hello's versions are ids 1, 3, 5, 7; static's 2, 4, 6, 8
    assert [v.id for v in index.versions("hello")] == [1, 3, 5, 7]
    assert index.version("hello", 3).id == 5  # a spec number is a number, never an id
    assert index.version_by_id(3).number == 2
    for vid, key in ((2, "hello"), (0, None), (9, None), (-1, None), (2**70, None)):
        with pytest.raises(NotFound, match=f"version_id {vid}"):
            index.version_by_id(vid, key=key)


def test_an_index_from_before_version_ids_numbers_them_as_a_rebuild_would(
    workspace: Workspace, history: list[str], tmp_path: Path
) -> None:
    path = workspace.settings.repo / "old-index.db"
    db = Database(path)
    try:
        Index(GitStore(workspace.settings.repo), db).rebuild()
        numbered = dump(db)["ix_versions"]
        # the database as the index kept it before version ids: no column, no m003 recorded
        with db.write() as conn:
            conn.execute("DROP INDEX ix_versions_id")
            conn.execute("ALTER TABLE ix_versions DROP COLUMN id")
            conn.execute("DELETE FROM _migrations WHERE name = 'm003_version_ids'")
    finally:
        db.close()
    db = Database(path)
    try:
        Index(GitStore(workspace.settings.repo), db)  # opening it migrates, without a sync
        assert dump(db)["ix_versions"] == numbered
        assert sorted(r[-1] for r in numbered) == list(range(1, len(numbered) + 1))
    finally:
        db.close()


def test_ids_follow_first_appearance_then_key(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo("ids", {"prompts/m.md": text("m"), "prompts/c.md": text("c")})
    repo.write("prompts/a.md", text("a"))
    repo.write("prompts/z.md", text("z"))
    repo.commit("second")
    repo.write("prompts/c.md", text("c2"))  # a later change does not move c
    repo.commit("third")
    repo.write("prompts/b.md", text("b"))  # working tree only
    with opened_workspace(repo.root) as ws:
        ws.index.rebuild()
        assert [(p.id, p.key) for p in ws.index.list_prompts()] == [
            (1, "c"),
            (2, "m"),
            (3, "a"),
            (4, "z"),
            (5, "b"),
        ]
        assert ws.index.get_prompt(3).key == "a"
    assert rebuilt(repo.root, tmp_path) == rebuilt(repo.root, tmp_path)


def test_a_rebuild_reads_history_with_a_few_git_processes(
    repo: Repo, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(40):
        repo.write(f"prompts/p{i % 8}.md", text(f"version {i}"))
        repo.commit(f"v{i}")
    calls: list[str] = []
    real_popen = subprocess.Popen

    def popen(
        args: list[str], *a: object, **kw: object
    ) -> object:  # subprocess.run goes through here too
        calls.append(" ".join(args[3:5]))
        return real_popen(args, *a, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "Popen", popen)
    workspace.index.rebuild()
    assert len(calls) <= 5, calls
    assert [v.number for v in workspace.index.versions("p3")] == [1, 2, 3, 4, 5]


def test_an_empty_repository_indexes_to_nothing(make_repo: MakeRepo) -> None:
    repo = make_repo("empty", commit=False)
    with opened_workspace(repo.root) as ws:
        assert ws.index.rebuild().new_commits == 0
        assert ws.index.list_prompts() == []
        repo.write("prompts/first.md", text("first"))
        ws.index.sync()
        assert listing(ws) == [(1, "first", 1, True)]


def test_a_reader_never_sees_a_new_commit_without_its_files(
    repo: Repo, workspace: Workspace
) -> None:
    import threading

    problems: list[str] = []
    for i in range(25):
        repo.write(f"prompts/n{i:02d}.md", text(f"n{i}"))
        sha = repo.commit(f"add n{i}")
        done = threading.Event()

        def read(
            expected_sha: str = sha, key: str = f"n{i:02d}", done: threading.Event = done
        ) -> None:
            for _ in range(100_000):
                if done.is_set():
                    return
                if workspace.index.head() == expected_sha and key not in {
                    p.key for p in workspace.index.list_prompts()
                }:
                    problems.append(f"head {expected_sha[:8]} indexed without {key}")
                    return

        reader = threading.Thread(target=read)
        reader.start()
        workspace.index.sync()
        done.set()
        reader.join(timeout=30)
    assert problems == []


def test_a_draft_blob_dropped_while_a_commit_is_read_is_read_again(
    repo: Repo, workspace: Workspace
) -> None:
    """A sync skips reading a committed blob the index already holds as a draft's; if another
    process drops that draft's blob before this sync writes, the blob is read from git again."""
    draft = HELLO_PROMPT + "\nA draft that gets committed.\n"
    repo.write("prompts/hello.md", draft)
    workspace.index.sync()
    assert workspace.index.version("hello").draft
    before = workspace.index.head()
    after = repo.commit("Commit the draft")
    index = workspace.index
    apply = index._append(before, after, "main")  # reads git; skips the draft's blob it holds
    with index._write() as conn:
        # What another process's sync does once it saw the draft go: the blob is unused.
        conn.execute(
            "DELETE FROM ix_blobs WHERE id NOT IN (SELECT blob FROM ix_versions"
            " WHERE seq IS NOT NULL)"
        )
        report = apply(conn)
    assert report.changed == {"hello"}
    workspace.index.sync()
    version = workspace.index.version("hello")
    assert not version.draft and version.sha == after
    assert version.content == draft and version.error is None


def test_performance_lists_every_version_then_drafts_and_rewritten_history_with_figures(
    workspace: Workspace, history: list[str], repo: Repo
) -> None:
    repo.write("prompts/hello.md", HELLO_PROMPT + "\ndraft\n")
    workspace.index.sync()
    versions = workspace.index.versions("hello")
    figures = [
        {"version_id": history[1], "version_number": 2, "draft": False, "run_count": 3},
        {"version_id": None, "version_number": None, "draft": True, "run_count": 1},
        {
            "version_id": "f" * 40,
            "version_number": 9,
            "draft": False,
            "run_count": 2,
            "last_run_at": "2026-01-02T03:04:05Z",
        },
    ]
    rows = version_performance(versions, figures)
    assert [(r["version_number"], r["version_id"], r["run_count"]) for r in rows] == [
        (1, 1, 0),
        (2, 3, 3),
        (3, 5, 0),
        (4, 7, 0),
        (None, None, 1),  # the draft: no id until it is committed
        (9, None, 2),  # a version a force-push took out of history keeps its figures
    ]
    commit = versions[1].commit
    assert commit is not None and rows[1]["version_date"] == iso_time(commit.committed_at)
    assert rows[-1]["version_date"] == "2026-01-02T03:04:05Z" and rows[-1]["sha"] == "f" * 40
    assert rows[0]["avg_score"] is None and rows[0]["sha"] == history[0]


def test_models_in_use_follow_every_change_even_another_processs(
    repo: Repo, workspace: Workspace, tmp_path: Path
) -> None:
    """models_in_use is kept for one generation of the index: a commit, a draft and a sync by
    another Index on the same database must each show at the next read."""
    index = workspace.index
    index.sync()
    before = index.models_in_use()
    assert "echo-two" not in before
    repo.write("prompts/two.md", text("two", model="echo-two"))
    repo.commit("add two")
    index.sync()
    assert index.models_in_use()["echo-two"] == ["two"]
    repo.write("prompts/two.md", text("two", model="echo-three"))  # a draft
    other = Index(GitStore(repo.root), workspace.db)  # another process's sync, in effect
    other.sync()
    used = index.models_in_use()
    assert "echo-two" not in used and used["echo-three"] == ["two"]
    assert used == other.models_in_use()
