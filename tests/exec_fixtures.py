"""Fixtures for the execution tests: a prompt repository whose model aliases point at the fake
upstream, the app in-process over it, and a real `llmkit serve` subprocess. Registered by
`tests/conftest.py` (`fake`, `exec_api`, `exec_server` and their module-wide sources).

The repository holds one prompt of each kind (chat, dynamic_both, dynamic_system, static,
JSON mode, tools), prompts on aliases with a short timeout, retries and a missing key, and
`pinned`, an echo prompt with three versions: v1 tagged `v1.0`, v2 the tip of branch `stable`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_fixtures import ApiEnv, running_api
from tests.fake_upstream import FakeUpstream
from tests.helpers import ServerProcess, clean_env, git, init_repo, start_server

FAKE_KEY_ENV = "FAKE_KEY"
FAKE_KEY_VALUE = "sk-fake-upstream-key"
MISSING_KEY_ENV = "FAKE_KEY_NOT_SET"


def llmkit_yaml(upstream_url: str) -> str:
    """Aliases: `default` is echo; the `fake*` aliases reach the fake upstream."""
    return f"""\
models:
  default:
    model: echo
  fake:
    model: openai/fake-model
    api_base: {upstream_url}
    api_key_env: {FAKE_KEY_ENV}
    max_retries: 0
  fake_retry:
    model: openai/fake-model
    api_base: {upstream_url}
    api_key_env: {FAKE_KEY_ENV}
    max_retries: 1
  fake_slow:
    model: openai/fake-model
    api_base: {upstream_url}
    api_key_env: {FAKE_KEY_ENV}
    max_retries: 0
    timeout: 0.5
  fake_nokey:
    model: openai/fake-model
    api_base: {upstream_url}
    api_key_env: {MISSING_KEY_ENV}
"""


CHAT_MD = """\
---
model: fake
temperature: 0.5
max_tokens: 100
chat: true
---
<!-- role:system -->
You are {{ persona }}.

<!-- role:user -->
What is 2+2?

<!-- role:assistant -->
4
"""

BOTH_MD = """\
---
model: fake
temperature: 0.2
top_p: 0.9
---
<!-- role:system -->
You answer as {{ persona }}.

<!-- role:user -->
Question: {{ question }}
"""

SYSTEM_MD = """\
---
model: fake
---
<!-- role:system -->
Translate into {{ language }}.
"""

STATIC_MD = """\
---
model: fake
max_tokens: 50
---
<!-- role:system -->
You are terse.
"""

JSON_MD = """\
---
model: fake
json_mode: true
json_schema:
  type: object
  required:
  - answer
  properties:
    answer:
      type: string
---
<!-- role:system -->
Answer as a JSON object with an "answer" string.
"""

TOOLS_MD = """\
---
model: fake
tools:
- type: function
  function:
    name: get_weather
    description: Weather for a city
    parameters:
      type: object
      properties:
        city:
          type: string
tool_choice: auto
---
<!-- role:system -->
You can look up the weather.
"""

ECHO_MD = """\
---
model: default
---
<!-- role:system -->
Translate into {{ language }}.
"""

SLOW_MD = """\
---
model: fake_slow
---
<!-- role:system -->
You are slow.
"""

RETRY_MD = """\
---
model: fake_retry
---
<!-- role:system -->
You are retried.
"""

NOKEY_MD = """\
---
model: fake_nokey
---
<!-- role:system -->
You have no key.
"""


LOGGED_MD = """\
---
model: default
---
<!-- role:system -->
Only the run log tests call this prompt.
"""


def pinned_md(n: int) -> str:
    return f"---\nmodel: default\n---\n<!-- role:system -->\nVersion {n} speaking.\n"


PROMPTS = {
    "prompts/chat.md": CHAT_MD,
    "prompts/both.md": BOTH_MD,
    "prompts/system.md": SYSTEM_MD,
    "prompts/static.md": STATIC_MD,
    "prompts/json.md": JSON_MD,
    "prompts/tools.md": TOOLS_MD,
    "prompts/echo.md": ECHO_MD,
    "prompts/slow.md": SLOW_MD,
    "prompts/retry.md": RETRY_MD,
    "prompts/nokey.md": NOKEY_MD,
    "prompts/logged.md": LOGGED_MD,
    "prompts/bare.md": (
        "---\nmodel: anthropic/claude-3-5-haiku-latest\n---\n<!-- role:system -->\nNever run.\n"
    ),
    "prompts/team/greet.md": ECHO_MD,
    "prompts/pinned.md": pinned_md(1),
}


@dataclass(frozen=True)
class PinnedShas:
    v1: str
    v2: str
    v3: str


def build_exec_repo(root: Path, upstream_url: str) -> PinnedShas:
    """The execution repository in `root`: every prompt, llmkit.yaml, and the history of
    `pinned` (tag v1.0 at v1, branch stable at v2, main at v3)."""
    init_repo(root, {**PROMPTS, "llmkit.yaml": llmkit_yaml(upstream_url)})
    v1 = git(root, "rev-parse", "HEAD")
    git(root, "tag", "v1.0")
    shas = [v1]
    for n in (2, 3):
        (root / "prompts/pinned.md").write_text(pinned_md(n), "utf-8")
        git(root, "commit", "-q", "-am", f"pinned v{n}")
        shas.append(git(root, "rev-parse", "HEAD"))
        if n == 2:
            git(root, "branch", "stable")
    return PinnedShas(*shas)


def server_env(**extra: str) -> dict[str, str]:
    """A clean environment with the fake upstream's key set."""
    return clean_env(**{FAKE_KEY_ENV: FAKE_KEY_VALUE, **extra})


def read_run_log(db_path: Path) -> list[dict[str, Any]]:
    """Every run log row, straight from the SQLite file."""
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM run_log ORDER BY id")]
    finally:
        conn.close()


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_fake() -> Iterator[FakeUpstream]:
    """One fake upstream for a whole module (starting servers once per module keeps tests fast)."""
    upstream = FakeUpstream().start()
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture
def fake(module_fake: FakeUpstream) -> FakeUpstream:
    """The module's fake upstream with an empty queue and history."""
    module_fake.reset()
    return module_fake


@dataclass
class ExecApi:
    """The app in-process over the execution repository."""

    env: ApiEnv
    fake: FakeUpstream
    shas: PinnedShas

    def complete(
        self, body: dict[str, Any], *, key: str | None = None, path: str = "/v1/chat/completions"
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.env.run_key}"}
        return self.env.client.post(path, json=body, headers=headers)

    def stream_events(
        self, body: dict[str, Any], *, key: str | None = None, path: str = "/v1/chat/completions"
    ) -> tuple[httpx.Response, list[Any]]:
        """The response and its SSE events in order: dicts, or the string "[DONE]"."""
        headers = {"Authorization": f"Bearer {key or self.env.run_key}"}
        with self.env.client.stream("POST", path, json=body, headers=headers) as response:
            response.read()
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            return response, []
        return response, sse_events(response.text)

    def log_row(self, trace_id: str) -> dict[str, Any]:
        response = self.env.get(f"/v1/ui/logs/{trace_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def upstream_bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.fake.chat_requests]


def sse_events(text: str) -> list[Any]:
    events: list[Any] = []
    for block in text.split("\n\n"):
        block = block.strip()
        if not block:
            continue
        assert block.startswith("data: "), f"not an SSE data event: {block!r}"
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


@contextmanager
def exec_app(repo: Path, fake: FakeUpstream, **settings: Any) -> Iterator[ExecApi]:
    """The app in-process over a new execution repository at `repo` on `fake`, with `settings`,
    FAKE_KEY set and the missing key unset for as long as the block runs."""
    shas = build_exec_repo(repo, fake.url)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FAKE_KEY_ENV, FAKE_KEY_VALUE)
        mp.delenv(MISSING_KEY_ENV, raising=False)
        with running_api(repo, **settings) as env:
            yield ExecApi(env, fake, shas)


@pytest.fixture(scope="module")
def module_exec_api(
    module_fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExecApi]:
    """The app over the execution repository, with FAKE_KEY set, for the whole module."""
    with exec_app(tmp_path_factory.mktemp("exec") / "repo", module_fake) as api:
        yield api


@pytest.fixture
def exec_api(module_exec_api: ExecApi, fake: FakeUpstream) -> ExecApi:
    """The module's app, with a fresh fake upstream."""
    return module_exec_api


@dataclass
class ExecServer:
    server: ServerProcess
    fake: FakeUpstream
    shas: PinnedShas


@pytest.fixture(scope="module")
def module_exec_server(
    module_fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExecServer]:
    """A real `llmkit serve` subprocess over the execution repository, for the whole module."""
    base = tmp_path_factory.mktemp("serve")
    repo = base / "repo"
    shas = build_exec_repo(repo, module_fake.url)
    env = server_env()
    env.pop(MISSING_KEY_ENV, None)
    server = start_server(repo, base, env)
    try:
        yield ExecServer(server, module_fake, shas)
    finally:
        server.terminate()


@pytest.fixture
def exec_server(module_exec_server: ExecServer, fake: FakeUpstream) -> ExecServer:
    """The module's server, with a fresh fake upstream."""
    return module_exec_server
