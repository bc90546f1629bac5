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

# The files that start real servers, browsers or PostgreSQL, or wait on real timeouts, longest
# first. xdist hands out whole files (`--dist loadfile`) in collection order, so these go out
# first and the short files fill in around them; sent last, the longest one alone would run on
# after every other worker is done. The rest follow by their number of tests, as xdist orders
# them by default (pyproject's `--no-loadscope-reorder` leaves the order to this list).
LONG_RUNNING = (
    "test_write_protocol.py",
    "test_import_llmkit.py",
    "test_store.py",
    "test_stream_clients.py",
    "test_concurrent_serving.py",
    "test_providers.py",
    "test_runlog_rollups.py",
    "test_api_budgets.py",
    "test_adoption.py",
    "test_promptfile.py",
    "test_serve_ref.py",
    "test_runlog_kill.py",
    "test_workflows.py",
    "test_fleet.py",
    "test_web_playground_browser.py",
    "test_otlp.py",
    "test_openai_sdk.py",
    "test_web_access.py",
    "test_web_ui.py",
    "test_api_serve.py",
    "test_web_traces_browser.py",
    "test_web_numbers_browser.py",
    "test_web_evals_browser.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order whole files: LONG_RUNNING first, in its order, then by number of tests."""
    files: dict[Path, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.path, []).append(item)

    def cost(path: Path) -> tuple[int, int]:
        name = path.name
        rank = LONG_RUNNING.index(name) if name in LONG_RUNNING else len(LONG_RUNNING)
        return rank, -len(files[path])

    items[:] = [item for path in sorted(files, key=cost) for item in files[path]]


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
