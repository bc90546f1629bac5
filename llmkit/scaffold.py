"""`llmkit init`: a prompt repository, new or existing, set up the way teams work with llmkit.

It writes what is missing and never touches a file that exists: llmkit.yaml, a first prompt
with its eval case (only when `prompts/` holds no prompt yet), the eval workflow on the GitHub
Action pinned to this version's tag, the pre-commit hook pinned the same way, and a page on the
team's workflow. It commits only the files it created, so whatever an author had staged stays
staged.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from llmkit import __version__
from llmkit.config import PROMPTS_DIR
from llmkit.errors import ConfigError
from llmkit.store import GitStore

# Where llmkit's source, its GitHub Action and its pre-commit hooks live. `<org>` is the
# README's placeholder too; `llmkit init --llmkit-repo OWNER/NAME` writes the real one.
SOURCE_REPOSITORY = "<org>/llmkit"
GITIGNORE_LINE = ".llmkit/"
WORKFLOW_PATH = ".github/workflows/llmkit.yml"
PRE_COMMIT_PATH = ".pre-commit-config.yaml"
# The team's workflow has a page of its own, so an existing README is never edited.
DOC_PATH = "LLMKIT.md"
PINNED_FILES = (WORKFLOW_PATH, PRE_COMMIT_PATH, DOC_PATH)
_REPOSITORY = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")

LLMKIT_YAML = """\
# Model aliases for prompts' `model:` field. `default` runs offline with the built-in echo
# model; point it at a real provider (e.g. openai/gpt-4o-mini with OPENAI_API_KEY) when ready.
models:
  default:
    model: echo
"""

EXAMPLE_FILES = {
    "prompts/hello.md": """\
---
model: default
description: A first prompt; edit it, commit it, and each commit is a version.
temperature: 0.7
---
<!-- role:system -->
You are a helpful assistant with a {{ personality }} personality.

<!-- role:user -->
{{ question }}
""",
    "evals/hello/basic.yaml": """\
name: answers the question
vars:
  personality: cheerful
user_vars:
  question: What is the capital of France?
assert:
- type: contains
  value: capital of France
""",
}


README_MD = f"""\
# Prompts

Prompts as code, served by llmkit. How we change a prompt, from edit to serving, is in
[{DOC_PATH}]({DOC_PATH}).
"""


def release_tag(version: str = __version__) -> str:
    """The git tag a release of `version` carries, which the action and the hook are pinned to."""
    return f"v{version}"


def workflow_yaml(repository: str, version: str = __version__) -> str:
    return f"""\
name: Prompt evals

# On every pull request that touches prompts: lint them, run the eval cases against the
# pull request and against the base branch, and keep one comment with the before/after table.
on:
  pull_request:
    paths:
      - "prompts/**"
      - "evals/**"
      - "llmkit.yaml"
      - "{WORKFLOW_PATH}"

permissions:
  contents: read
  pull-requests: write  # the eval comment

jobs:
  evals:
    runs-on: ubuntu-latest
    timeout-minutes: 30
    env:
      # Keys of the providers your prompts use; prompts on the offline `echo` model need none.
      OPENAI_API_KEY: ${{{{ secrets.OPENAI_API_KEY }}}}
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0  # prompt versions are commits, and the base branch is compared
      - uses: {repository}@{release_tag(version)}
        with:
          token: ${{{{ secrets.GITHUB_TOKEN }}}}
"""


def pre_commit_yaml(repository: str, version: str = __version__) -> str:
    return f"""\
# `pre-commit install` once; then `llmkit lint` checks prompts, evals and llmkit.yaml before
# each commit that touches them.
repos:
  - repo: https://github.com/{repository}
    rev: {release_tag(version)}
    hooks:
      - id: llmkit-lint
"""


def workflow_doc(repository: str, version: str = __version__) -> str:
    return f"""\
# Prompts

The prompts of this repository are served by [llmkit](https://github.com/{repository})
{release_tag(version)}: each prompt is a file in `prompts/` (its key is the path without `.md`),
its eval cases are in `evals/<prompt key>/`, and every commit that changes a prompt is a version.

## How we change a prompt

1. **Edit** the prompt (and its cases) on a branch. `llmkit render KEY --var name=value` shows
   the messages it sends; `llmkit eval` runs the cases, `llmkit lint` checks every file.
2. **Open a pull request.** The *Prompt evals* workflow lints the files and runs every case
   against this branch's prompts and against the base branch's.
3. **Read the eval comment.** One comment on the pull request shows each case before -> after,
   regressions first, and is updated on every push. A regression (a case that passed on the
   base branch and fails now) fails the check; the reports are the run's artifacts.
4. **Merge** when the check is green and the diff is reviewed: the commit on `main` is the
   prompt's new version.
5. **Serve.** `llmkit serve` in a clone of `main` serves the prompts behind an
   OpenAI-compatible endpoint and picks up each `git pull`; applications call
   `POST /v1/chat/completions` with the prompt key as `model` (`KEY@3` pins version 3).

## Setup

```bash
pip install "llmkit @ git+https://github.com/{repository}@{release_tag(version)}"
pre-commit install      # llmkit lint before each commit (.pre-commit-config.yaml)
```
"""


@dataclass
class InitReport:
    """What `init` did: the files it created, and the ones it left alone with the reason."""

    created: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # Existing files a line was appended to, left for the author to commit.
    appended: list[str] = field(default_factory=list)
    committed: bool = False
    # The created files name SOURCE_REPOSITORY's placeholder, to be replaced by the real one.
    placeholder: bool = False


def init_repository(directory: Path, repository: str = SOURCE_REPOSITORY) -> InitReport:
    """Create what is missing (never overwriting a file) and commit only that."""
    if repository != SOURCE_REPOSITORY and not _REPOSITORY.fullmatch(repository):
        raise ConfigError(f"--llmkit-repo {repository!r} is not OWNER/NAME of a GitHub repository")
    root = directory.resolve()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} is a file, not a folder")
    root.mkdir(parents=True, exist_ok=True)
    if not (root / ".git").exists():
        _git(root, "init", "-q", "-b", "main")
    report = InitReport()
    files = {"llmkit.yaml": LLMKIT_YAML}
    if _has_prompts(root):
        report.skipped += [(rel, "prompts/ already holds prompts") for rel in EXAMPLE_FILES]
    else:
        files.update(EXAMPLE_FILES)
    files[WORKFLOW_PATH] = workflow_yaml(repository)
    files[PRE_COMMIT_PATH] = pre_commit_yaml(repository)
    files[DOC_PATH] = workflow_doc(repository)
    files["README.md"] = README_MD
    for rel, text in files.items():
        path = root / rel
        if _exists(path):
            report.skipped.append((rel, "exists; left as it is"))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: a file that appeared since the check is still never overwritten.
        with open(path, "x", encoding="utf-8") as fh:
            fh.write(text)
        report.created.append(rel)
    _ignore_llmkit_folder(root, report)
    if report.created:
        with GitStore(root) as store:
            identity = store.identity_env()
        _git(root, "add", "--", *report.created)
        _git(
            root,
            "commit",
            "-q",
            "-m",
            "Set up the prompt repository for llmkit",
            "--",
            *report.created,
            env=identity,
        )
        report.committed = True
    report.placeholder = repository == SOURCE_REPOSITORY and any(
        rel in PINNED_FILES for rel in report.created
    )
    return report


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _has_prompts(root: Path) -> bool:
    prompts = root / PROMPTS_DIR
    return prompts.is_dir() and any(prompts.rglob("*.md"))


def _ignore_llmkit_folder(root: Path, report: InitReport) -> None:
    """Add `.llmkit/` to .gitignore: appended, never rewritten, and committed only when the
    file was new (an author's own edits to it are theirs to commit)."""
    ignore = root / ".gitignore"
    if ignore.is_symlink():
        report.skipped.append((".gitignore", "a symbolic link; add .llmkit/ to it yourself"))
        return
    text = ignore.read_text("utf-8") if ignore.exists() else None
    lines = (text or "").splitlines()
    if GITIGNORE_LINE in lines or "/" + GITIGNORE_LINE in lines:
        return
    if text is None:
        ignore.write_text(GITIGNORE_LINE + "\n", "utf-8")
        report.created.append(".gitignore")
        return
    with open(ignore, "a", encoding="utf-8") as fh:
        fh.write(("" if text.endswith("\n") or not text else "\n") + GITIGNORE_LINE + "\n")
    report.appended.append(".gitignore")


def _git(root: Path, *args: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(
        ["git", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise ConfigError(f"git {args[0]} failed in {root}: {proc.stderr.strip()}")
