"""The one fixture layer: the fixtures below, plus those of the modules in `pytest_plugins`,
reach every test by name (no test module imports a fixture). Plain helper functions are in
`tests/helpers.py`.

    def test_something(repo, workspace):
        repo.write("prompts/a.md", "<!-- role:user -->\\nhi\\n")
        sha = repo.commit("add a")
        workspace.index.sync()

`make_repo(name, files)` builds further repositories (a second clone's origin, a fresh
scaffold target, ...). Every repository gets a local identity, no signing, and a `.gitignore`
for `.llmkit/`, so `git status --porcelain` is empty right after the first commit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from llmkit.config import Settings
from llmkit.workspace import Workspace
from tests.helpers import HELLO_PROMPT, STATIC_PROMPT, MakeRepo, Repo, init_repo

pytest_plugins = [
    "tests.fake_upstream",
    "tests.api_fixtures",
    "tests.exec_fixtures",
    "tests.eval_fixtures",
    "tests.fake_github",
    "tests.otlp_fixtures",
    "tests.browser_fixtures",
    "tests.pg",
]

DEFAULT_FILES: dict[str, str] = {
    "prompts/hello.md": HELLO_PROMPT,
    "prompts/static.md": STATIC_PROMPT,
}


@pytest.fixture
def make_repo(tmp_path: Path) -> MakeRepo:
    """A factory: make_repo(name="repo", files=None, commit=True) -> Repo in tmp_path/name."""

    def make(
        name: str = "repo", files: Mapping[str, str | bytes] | None = None, commit: bool = True
    ) -> Repo:
        return init_repo(tmp_path / name, files, commit=commit)

    return make


@pytest.fixture
def repo(make_repo: MakeRepo) -> Repo:
    """A repository with prompts/hello.md (a template) and prompts/static.md, committed."""
    return make_repo("repo", DEFAULT_FILES)


@pytest.fixture
def workspace(repo: Repo) -> Iterator[Workspace]:
    """A Workspace on `repo` (database under repo/.llmkit), synced once, closed afterwards."""
    ws = Workspace(Settings.resolve(repo.root))
    ws.index.sync()
    try:
        yield ws
    finally:
        ws.close()
