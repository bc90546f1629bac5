"""Shared fixtures: real git repositories in tmp_path, and a Workspace opened on one.

    def test_something(repo, workspace):
        repo.write("prompts/a.md", "<!-- role:user -->\\nhi\\n")
        sha = repo.commit("add a")
        workspace.index.sync()

`make_repo(name, files)` builds further repositories (a second clone's origin, a fresh
scaffold target, ...). Every repository gets a local identity, no signing, and a `.gitignore`
for `.llmkit/`, so `git status --porcelain` is empty right after the first commit.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from llmkit.config import Settings
from llmkit.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent

HELLO_PROMPT = """\
---
model: default
temperature: 0.7
---
<!-- role:system -->
You are a {{ personality }} assistant.

<!-- role:user -->
{{ question }}
"""

STATIC_PROMPT = """\
---
model: default
---
<!-- role:system -->
You are terse.
"""

DEFAULT_FILES: dict[str, str] = {
    "prompts/hello.md": HELLO_PROMPT,
    "prompts/static.md": STATIC_PROMPT,
}

# Git must not read the developer's own hooks or templates, nor ask for anything.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}


class Repo:
    """A real git repository in a temporary folder, with a few conveniences for tests."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def git(self, *args: str, check: bool = True, input: str | None = None) -> str:
        """Run git in the repository; returns stdout without the trailing newline."""
        proc = subprocess.run(
            ["git", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            input=input,
            env={**os.environ, **GIT_ENV},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout.rstrip("\n")

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write(self, rel: str, text: str | bytes) -> Path:
        """Write a file (creating folders); bytes are written as they are."""
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            target.write_bytes(text)
        else:
            target.write_bytes(text.encode("utf-8"))
        return target

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text("utf-8")

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink()

    def commit(self, message: str = "change", *paths: str) -> str:
        """Stage `paths` (everything when none are given), commit, and return the new HEAD."""
        self.git("add", "-A", "--", *(paths or (".",)))
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def status(self) -> str:
        return self.git("status", "--porcelain", "--untracked-files=all")

    def log(self, *args: str) -> list[str]:
        out = self.git("log", "--format=%H", *args)
        return out.splitlines() if out else []


MakeRepo = Callable[..., Repo]


def init_repo(root: Path, files: Mapping[str, str | bytes] | None = None, commit: bool = True) -> Repo:
    """`git init -b main` in `root` with a local identity, optional files and a first commit."""
    root.mkdir(parents=True, exist_ok=True)
    repo = Repo(root)
    repo.git("init", "-q", "-b", "main", "--template=")  # no sample hooks to copy: faster
    repo.git("config", "user.name", "Test Author")
    repo.git("config", "user.email", "author@example.com")
    repo.git("config", "commit.gpgsign", "false")
    repo.git("config", "core.hooksPath", ".git/hooks")
    repo.write(".gitignore", ".llmkit/\n")
    for rel, text in (files or {}).items():
        repo.write(rel, text)
    if commit:
        repo.commit("Initial commit")
    return repo


@pytest.fixture
def make_repo(tmp_path: Path) -> MakeRepo:
    """A factory: make_repo(name="repo", files=None, commit=True) -> Repo in tmp_path/name."""

    def make(name: str = "repo", files: Mapping[str, str | bytes] | None = None, commit: bool = True) -> Repo:
        return init_repo(tmp_path / name, files, commit)

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
