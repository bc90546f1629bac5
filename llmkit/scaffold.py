"""`llmkit init`: a new prompt repository with a first commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

from llmkit.config import PROMPTS_DIR
from llmkit.errors import ConfigError
from llmkit.store import GitStore

GITIGNORE_LINE = ".llmkit/"

FILES = {
    "llmkit.yaml": """\
# Model aliases for prompts' `model:` field. `default` runs offline with the built-in echo
# model; point it at a real provider (e.g. openai/gpt-4o-mini with OPENAI_API_KEY) when ready.
models:
  default:
    model: echo
""",
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


def init_repository(directory: Path) -> list[str]:
    """Create what is missing (never overwrites a file) and commit it. Returns created paths."""
    root = directory.resolve()
    root.mkdir(parents=True, exist_ok=True)
    prompts = root / PROMPTS_DIR
    if prompts.exists() and any(prompts.iterdir()):
        raise ConfigError(f"{root} already has {PROMPTS_DIR}/; it is a prompt repository already")
    if not (root / ".git").exists():
        _git(root, "init", "-q", "-b", "main")
    created = []
    for rel, text in FILES.items():
        path = root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, "utf-8")
            created.append(rel)
    ignore = root / ".gitignore"
    lines = ignore.read_text("utf-8").splitlines() if ignore.exists() else []
    if GITIGNORE_LINE not in lines:
        ignore.write_text("\n".join([*lines, GITIGNORE_LINE]) + "\n", "utf-8")
        created.append(".gitignore")
    if created:
        with GitStore(root) as store:
            identity = store.identity_env()
        _git(root, "add", "--", *created)
        # Only the files created here: whatever the author had staged stays staged.
        _git(root, "commit", "-q", "-m", "Start a prompt repository with llmkit", "--", *created, env=identity)
    return created


def _git(root: Path, *args: str, env: dict[str, str] | None = None) -> None:
    import os

    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise ConfigError(f"git {args[0]} failed in {root}: {proc.stderr.strip()}")
