"""Fixtures for the eval tests: prompt repositories in real git, run with the offline `echo`
model (its answer is the conversation it was sent, one `role: content` line per message), a
judge alias on the fake upstream, the runner and the app driven in-process. Registered by
`tests/conftest.py` (`eval_repo`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from llmkit.api.app import create_app
from llmkit.config import Settings
from llmkit.evals.cases import EvalCase
from llmkit.evals.records import EvalRecords
from llmkit.evals.results import CaseResult
from llmkit.evals.runner import EvalRunner, RunOptions
from llmkit.evals.spec import load_evals
from llmkit.execute import Executor
from llmkit.workspace import Workspace
from tests.helpers import Repo, git, init_repo

JUDGE_KEY_ENV = "EVAL_JUDGE_KEY"
JUDGE_KEY_VALUE = "sk-judge-fake"

# `default` answers offline; `judge` and `upstream` reach the fake upstream without retries,
# so a scripted failure fails at once.
LLMKIT_YAML = """\
models:
  default:
    model: echo
"""


def llmkit_yaml(upstream_url: str | None = None) -> str:
    if upstream_url is None:
        return LLMKIT_YAML
    return (
        LLMKIT_YAML
        + f"""\
  judge:
    model: openai/judge-model
    api_base: {upstream_url}
    api_key_env: {JUDGE_KEY_ENV}
    max_retries: 0
    timeout: 10
  upstream:
    model: openai/fake-model
    api_base: {upstream_url}
    api_key_env: {JUDGE_KEY_ENV}
    max_retries: 0
    timeout: 10
"""
    )


# A template in both sections; echo answers "system: ...\nuser: ...".
GREET_MD = """\
---
model: default
---
<!-- role:system -->
You are a {{ personality }} assistant. Always say hello.

<!-- role:user -->
{{ question }}
"""

# The same prompt on the feature branch: "hello" is gone (a regression), "goodbye" is new
# (a fix).
GREET_FEATURE_MD = """\
---
model: default
---
<!-- role:system -->
You are a {{ personality }} assistant. Say goodbye at the end.

<!-- role:user -->
{{ question }}
"""

# Both lines: every case passes.
GREET_BOTH_MD = """\
---
model: default
---
<!-- role:system -->
You are a {{ personality }} assistant. Always say hello. Say goodbye at the end.

<!-- role:user -->
{{ question }}
"""

CHAT_MD = """\
---
model: default
chat: true
---
<!-- role:system -->
You are a terse assistant.
"""

GREET_EVALS = """\
vars:
  personality: cheerful
user_vars:
  question: Who are you?
cases:
- name: says hello
  assert:
  - type: contains
    value: Always say hello.
- name: mentions goodbye
  assert:
  - type: contains
    value: Say goodbye at the end.
"""

GREET_NEW_CASE = """\
name: asks who
vars:
  personality: calm
user_vars:
  question: Who is there?
assert:
- type: contains
  value: "user: Who is there?"
"""

CHAT_EVALS = """\
name: passes the history through
messages:
- role: user
  content: first question
- role: assistant
  content: first answer
- role: user
  content: second question
assert:
- type: equals
  value: |-
    system: You are a terse assistant.
    user: first question
    assistant: first answer
    user: second question
"""

# A prompt and one case that only a judge can grade (for the judge's own calls).
JOKE_MD = """\
---
model: default
---
<!-- role:system -->
Tell a joke.
"""

JUDGED_CASE = """\
name: judged
input: about cats
assert:
- type: judge
  rubric: The answer is about cats.
"""

MAIN_FILES: dict[str, str] = {
    "llmkit.yaml": LLMKIT_YAML,
    "prompts/greet.md": GREET_MD,
    "prompts/chat.md": CHAT_MD,
    "evals/greet/cases.yaml": GREET_EVALS,
    "evals/chat/history.yaml": CHAT_EVALS,
}


# -- the repository ---------------------------------------------------------------------------


class EvalRepo(Repo):
    """A prompt repository in real git, on branch `main` after its first commit."""

    @classmethod
    def create(cls, root: Path, files: Mapping[str, str] | None = None) -> EvalRepo:
        return cls(init_repo(root, MAIN_FILES if files is None else files).root)

    def branch(self, name: str, files: Mapping[str, str], message: str) -> str:
        """A new branch from the current one, with `files` written and committed."""
        self.git("checkout", "-q", "-b", name)
        for rel, text in files.items():
            self.write(rel, text)
        return self.commit(message)

    def checkout(self, ref: str) -> None:
        self.git("checkout", "-q", ref)

    @property
    def db_path(self) -> Path:
        return self.root / ".llmkit" / "llmkit.db"

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows of the repository's SQLite file, read directly."""
        conn = sqlite3.connect(self.db_path)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in conn.execute(sql, args)]
        finally:
            conn.close()


FAREWELL_MD = """\
---
model: default
---
<!-- role:system -->
Say farewell.
"""

FAREWELL_EVALS = """\
name: says farewell
input: bye
assert:
- type: contains
  value: Say farewell.
"""


def feature_files() -> dict[str, str]:
    """The feature branch: greet loses "hello" and gains "goodbye"; greet gets a new case (run
    against the base's greet too), and a new prompt comes with its case (new: no base run)."""
    return {
        "prompts/greet.md": GREET_FEATURE_MD,
        "evals/greet/new.yaml": GREET_NEW_CASE,
        "prompts/farewell.md": FAREWELL_MD,
        "evals/farewell/basic.yaml": FAREWELL_EVALS,
    }


@pytest.fixture
def eval_repo(tmp_path: Path) -> EvalRepo:
    """The prompt repository on `main`: greet (one case passes, one fails) and chat."""
    return EvalRepo.create(tmp_path / "repo")


# -- the runner in-process --------------------------------------------------------------------


@dataclass
class RunnerEnv:
    """A Workspace on a repository, with the runner's parts; `run()` runs cases to results."""

    ws: Workspace
    records: EvalRecords

    def runner(self, **options: Any) -> EvalRunner:
        executor = Executor(self.ws, self.ws.models, self.ws.runlog)
        return EvalRunner(executor, self.records, RunOptions(**options))

    def cases(self, prompt_key: str | None = None) -> list[EvalCase]:
        cases, problems = load_evals(self.ws.settings.repo)
        errors = [p for p in problems if p.severity == "error"]
        assert not errors, errors
        return [c for c in cases if prompt_key is None or c.prompt_key == prompt_key]

    def run(
        self, cases: list[EvalCase], ref: str | None = None, **options: Any
    ) -> list[CaseResult]:
        self.ws.index.sync()
        return asyncio.run(_run_and_close(self.runner(**options), cases, ref))


async def _run_and_close(
    runner: EvalRunner, cases: list[EvalCase], ref: str | None
) -> list[CaseResult]:
    from llmkit import providers

    try:
        return await runner.run(cases, ref)
    finally:
        # Pooled clients belong to this event loop; the next asyncio.run gets a new one.
        await providers.aclose()


@contextmanager
def runner_env(root: Path) -> Iterator[RunnerEnv]:
    ws = Workspace(Settings.resolve(root, log_batch_ms=5))
    ws.index.sync()
    ws.runlog.start()
    try:
        yield RunnerEnv(ws, EvalRecords(ws.db))
    finally:
        ws.close()


# -- the app in-process -----------------------------------------------------------------------


@dataclass
class EvalApi:
    root: Path
    app: FastAPI
    client: TestClient
    admin_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", self.headers)
        return self.client.request(method, url, **kwargs)

    def commits(self) -> list[str]:
        """Commit subjects, newest first."""
        return git(self.root, "log", "--format=%s").splitlines()


@contextmanager
def eval_api(root: Path) -> Iterator[EvalApi]:
    app = create_app(Settings.resolve(root, watch=False, log_batch_ms=5))
    _, admin_key = app.state.ws.keys.create("t", "admin")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield EvalApi(root, app, client, admin_key)


def error_shape(body: Any) -> bool:
    """Whether a response body is the one error shape: {"error": {message, type, param, code}}."""
    return (
        isinstance(body, dict)
        and set(body) == {"error"}
        and isinstance(body["error"], dict)
        and set(body["error"]) == {"message", "type", "param", "code"}
        and isinstance(body["error"]["message"], str)
        and bool(body["error"]["message"])
    )
