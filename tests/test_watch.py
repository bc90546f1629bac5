"""Watcher: a running watcher brings the index in step with editor saves and git operations.

Every test changes the repository the way a person or a tool would and then polls the index
(never calling sync itself) until it reflects the change, with a deadline."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmkit.errors import LlmkitError
from llmkit.watch import Watcher
from llmkit.workspace import Workspace
from tests.helpers import HELLO_PROMPT, MakeRepo, Repo, colleague_clone, opened_workspace, poll

DEADLINE_S = 5.0

# watchdog notes a folder that appeared twice during its own recursive scan; harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")


def text(body: str) -> str:
    return f"---\nmodel: default\n---\n<!-- role:user -->\n{body}\n"


def eventually(check: Callable[[], object], what: str, timeout: float = DEADLINE_S) -> None:
    """`poll` until the index reflects `what`; NotFound and the like mean "not yet"."""
    poll(check, f"the index to reflect {what}", timeout_s=timeout, ignore=(LlmkitError,))


def served(ws: Workspace, key: str) -> str | None:
    return ws.index.version(key).content


def keys(ws: Workspace) -> list[str]:
    return [p.key for p in ws.index.list_prompts()]


def start_watcher(ws: Workspace, debounce_s: float = 0.03, max_delay_s: float = 0.2) -> Watcher:
    watcher = Watcher(ws.index, ws.settings.repo, debounce_s=debounce_s, max_delay_s=max_delay_s)
    watcher.start()
    return watcher


@pytest.fixture
def watcher(workspace: Workspace) -> Iterator[Watcher]:
    w = start_watcher(workspace)
    try:
        yield w
    finally:
        w.stop()


# -- editor save patterns --------------------------------------------------------------------------


def test_an_in_place_save(repo: Repo, workspace: Workspace, watcher: Watcher) -> None:
    new = HELLO_PROMPT.replace("assistant", "helper")
    with open(repo.path("prompts/hello.md"), "r+", encoding="utf-8") as fh:
        fh.truncate(0)
        fh.write(new)
    eventually(lambda: served(workspace, "hello") == new, "an in-place save")
    assert workspace.index.version("hello").draft


def test_write_temp_then_rename(repo: Repo, workspace: Workspace, watcher: Watcher) -> None:
    new = text("saved through a temp file")
    tmp = repo.path("prompts/.hello.md.tmp.1234")
    tmp.write_text(new)
    os.replace(tmp, repo.path("prompts/hello.md"))
    eventually(lambda: served(workspace, "hello") == new, "a temp file renamed over the prompt")
    assert keys(workspace) == ["hello", "static"]


def test_delete_and_recreate(repo: Repo, workspace: Workspace, watcher: Watcher) -> None:
    repo.remove("prompts/hello.md")
    new = text("recreated")
    repo.write("prompts/hello.md", new)
    eventually(lambda: served(workspace, "hello") == new, "a delete and recreate")


def test_vim_style_swap_and_backup_files(
    repo: Repo, workspace: Workspace, watcher: Watcher
) -> None:
    swap = repo.write("prompts/.hello.md.swp", b"\x00swap\xff")
    os.rename(repo.path("prompts/hello.md"), repo.path("prompts/hello.md~"))
    new = text("saved by vim")
    repo.write("prompts/hello.md", new)
    repo.remove("prompts/hello.md~")
    eventually(lambda: served(workspace, "hello") == new, "a vim save")
    swap.unlink()
    assert keys(workspace) == ["hello", "static"]


def test_a_new_subfolder_with_a_file(repo: Repo, workspace: Workspace, watcher: Watcher) -> None:
    folder = repo.path("prompts/team/support")
    folder.mkdir(parents=True)
    (folder / "triage.md").write_text(text("triage"))
    eventually(lambda: "team/support/triage" in keys(workspace), "a file in a new subfolder")
    (folder / "triage.md").write_text(text("triage v2"))
    eventually(
        lambda: served(workspace, "team/support/triage") == text("triage v2"),
        "an edit in the new subfolder",
    )


def test_a_deleted_file(repo: Repo, workspace: Workspace, watcher: Watcher) -> None:
    repo.remove("prompts/static.md")
    eventually(lambda: keys(workspace) == ["hello"], "a deleted file")


def test_a_renamed_file(repo: Repo, workspace: Workspace, watcher: Watcher) -> None:
    os.rename(repo.path("prompts/static.md"), repo.path("prompts/terse.md"))
    eventually(lambda: keys(workspace) == ["hello", "terse"], "a renamed file")
    assert served(workspace, "terse") == repo.read("prompts/terse.md")


def test_a_broken_file_does_not_stop_the_watcher(
    repo: Repo, workspace: Workspace, watcher: Watcher
) -> None:
    repo.write("prompts/hello.md", b"---\nmodel: m\n---\n\xff\xfe broken\n")
    eventually(
        lambda: workspace.index.version("hello").error is not None, "a file that is not UTF-8"
    )
    repo.write("prompts/hello.md", text("fixed"))
    eventually(lambda: served(workspace, "hello") == text("fixed"), "the fixed file")


def test_a_burst_of_writes_is_debounced_and_the_last_content_served(
    repo: Repo, workspace: Workspace
) -> None:
    # A long quiet interval, so the burst stays one burst even on a busy machine.
    watcher = start_watcher(workspace, debounce_s=0.5, max_delay_s=3.0)
    pokes = 0
    real_poke = watcher.poke

    def counting_poke() -> None:
        nonlocal pokes
        pokes += 1
        real_poke()

    watcher.poke = counting_poke  # type: ignore[method-assign]
    try:
        syncs_before = watcher.syncs
        path = repo.path("prompts/hello.md")
        for i in range(50):
            path.write_text(text(f"burst {i:02d}"))
        eventually(
            lambda: served(workspace, "hello") == text("burst 49"), "the last write of a burst"
        )
        syncs = watcher.syncs - syncs_before
        assert pokes >= 50, f"{pokes} events for 50 writes"
        assert 1 <= syncs <= 5, f"{syncs} syncs for {pokes} events"
    finally:
        watcher.stop()


# -- git operations --------------------------------------------------------------------------------


def test_git_commit(repo: Repo, workspace: Workspace, watcher: Watcher) -> None:
    repo.write("prompts/hello.md", text("to be committed"))
    eventually(lambda: workspace.index.version("hello").draft, "the draft")
    sha = repo.commit("commit the draft")
    eventually(lambda: workspace.index.version("hello").sha == sha, "git commit")
    version = workspace.index.version("hello")
    assert (version.number, version.draft) == (2, False)


def test_branches_checkout_and_switch(repo: Repo, workspace: Workspace, watcher: Watcher) -> None:
    repo.git("checkout", "-q", "-b", "other")
    eventually(lambda: workspace.index._state("branch") == "other", "git checkout -b")
    repo.write("prompts/hello.md", text("on other"))
    repo.write("prompts/other-only.md", text("only here"))
    other_sha = repo.commit("work on other")
    eventually(
        lambda: (
            workspace.index.head() == other_sha and served(workspace, "hello") == text("on other")
        ),
        "a commit on the branch",
    )
    assert "other-only" in keys(workspace)

    repo.git("checkout", "-q", "main")
    eventually(
        lambda: served(workspace, "hello") == HELLO_PROMPT and "other-only" not in keys(workspace),
        "git checkout main",
    )
    assert workspace.index.version("hello").number == 1

    repo.git("switch", "-q", "other")
    eventually(lambda: served(workspace, "hello") == text("on other"), "git switch other")
    assert workspace.index.version("hello").number == 2


def test_git_rebase(repo: Repo, workspace: Workspace, watcher: Watcher) -> None:
    repo.git("checkout", "-q", "-b", "feature")
    repo.write("prompts/feature.md", text("feature"))
    repo.commit("feature")
    repo.git("checkout", "-q", "main")
    repo.write("prompts/hello.md", text("main moved on"))
    repo.commit("main moves")
    repo.git("checkout", "-q", "feature")
    repo.git("rebase", "-q", "main")
    rebased = repo.head()
    eventually(
        lambda: (
            workspace.index.head() == rebased
            and served(workspace, "hello") == text("main moved on")
        ),
        "git rebase",
    )
    assert "feature" in keys(workspace)


def test_git_pull(repo: Repo, workspace: Workspace, watcher: Watcher, tmp_path: Path) -> None:
    colleague = colleague_clone(repo, tmp_path)
    colleague.write("prompts/hello.md", text("pulled"))
    colleague.write("prompts/new/from-colleague.md", text("new"))
    pushed = colleague.commit("colleague")
    colleague.git("push", "-q", "origin", "main")

    repo.git("pull", "-q", "--ff-only")
    eventually(
        lambda: workspace.index.head() == pushed and "new/from-colleague" in keys(workspace),
        "git pull",
    )
    assert served(workspace, "hello") == text("pulled")
    assert not workspace.index.version("hello").draft


def test_prompts_folder_created_after_start(make_repo: MakeRepo) -> None:
    repo = make_repo("bare-start", {"README.md": "no prompts yet\n"})
    with opened_workspace(repo.root) as ws:
        watcher = start_watcher(ws)
        try:
            repo.write("prompts/first.md", text("first"))
            eventually(lambda: keys(ws) == ["first"], "a prompts/ folder created after start")
            repo.write("prompts/first.md", text("first, edited"))
            eventually(
                lambda: served(ws, "first") == text("first, edited"),
                "an edit in the new prompts/ folder",
            )
        finally:
            watcher.stop()


def test_prompts_folder_removed_and_recreated(
    repo: Repo, workspace: Workspace, watcher: Watcher
) -> None:
    shutil.rmtree(repo.path("prompts"))
    eventually(lambda: keys(workspace) == [], "prompts/ removed")
    repo.write("prompts/hello.md", text("back"))
    eventually(lambda: served(workspace, "hello") == text("back"), "prompts/ recreated")
    repo.write("prompts/hello.md", text("back, edited"))
    eventually(
        lambda: served(workspace, "hello") == text("back, edited"),
        "an edit in the recreated prompts/",
    )


def test_stop_ends_the_thread(workspace: Workspace) -> None:
    watcher = start_watcher(workspace)
    watcher.stop()
    assert watcher._thread is not None and not watcher._thread.is_alive()


def test_relevant_paths(workspace: Workspace) -> None:
    watcher = Watcher(workspace.index, workspace.settings.repo)
    root = workspace.settings.repo
    for rel in [
        "prompts/a.md",
        "prompts/x/.a.swp",
        "evals/a/b.yaml",
        "llmkit.yaml",
        ".git/HEAD",
        ".git/refs/heads/main",
        ".git/packed-refs",
        "prompts",
    ]:
        assert watcher.relevant(root / rel), rel
    for rel in [
        ".git/objects/ab/cdef",
        ".git/index",
        ".git/refs/heads/main.lock",
        "README.md",
        "src/x.md",
        ".llmkit/llmkit.db",
    ]:
        assert not watcher.relevant(root / rel), rel
    assert not watcher.relevant(Path("/somewhere/else/prompts/a.md"))
