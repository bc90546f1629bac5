"""Fixtures for the HTTP API tests: a real git repository in tmp_path, the real app driven
in-process through `TestClient`, an admin and a run key, and a record of every error response
the tests see (so one test can check that they all share one shape). Registered by
`tests/conftest.py`: a test names `api` or `make_api` and gets it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from llmkit.api.app import create_app
from llmkit.config import Settings
from llmkit.refserve import RefTarget
from llmkit.workspace import Workspace
from tests.helpers import Repo, git, init_repo, invoke

HELLO_MD = """\
---
model: default
description: Greets people.
temperature: 0.7
---
<!-- role:system -->
You are a helpful assistant with a {{ personality }} personality.

<!-- role:user -->
{{ question }}
"""

TRIAGE_MD = """\
---
model: default
max_tokens: 200
---
<!-- role:system -->
Sort the ticket into billing, bug or other.

<!-- role:user -->
Ticket: {{ ticket }}
"""

SEED_FILES = {
    "prompts/hello.md": HELLO_MD,
    "prompts/support/triage.md": TRIAGE_MD,
    "evals/hello/basic.yaml": "name: greets\nvars:\n  personality: cheerful\n",
    "README.md": "A prompt repository.\n",
}


def seeded_repo(root: Path) -> Path:
    """A prompt repository holding the seed files, committed."""
    return init_repo(root, SEED_FILES).root


def scaffold_repo(root: Path) -> Path:
    """A prompt repository made by `llmkit init`, with a local identity."""
    result = invoke("init", root)
    assert result.exit_code == 0, result.stderr
    Repo(root).identify()
    return root


@dataclass(frozen=True)
class RepoState:
    head: str
    status: str
    files: dict[str, str]  # path relative to the folder -> sha256 of the content


def repo_state(repo: Path, around: Path | None = None) -> RepoState:
    """What a refused request must not change: HEAD, `git status`, and every file under
    `around` (default: the repository), except .git internals and llmkit's own data folder."""
    base = around or repo
    files: dict[str, str] = {}
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if ".git" in rel.parts or ".llmkit" in rel.parts or not path.is_file():
            continue
        files[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return RepoState(
        head=git(repo, "rev-parse", "HEAD"),
        status=git(repo, "status", "--porcelain", "--untracked-files=all"),
        files=files,
    )


# -- error responses ------------------------------------------------------------------------


@dataclass(frozen=True)
class SeenError:
    method: str
    url: str
    status: int
    content_type: str
    body: bytes


SEEN_ERRORS: list[SeenError] = []
_seen_lock = threading.Lock()


def record_errors(client: httpx.Client) -> httpx.Client:
    """Keep every response with status >= 400 that `client` receives, for the shape test."""

    def keep(response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        response.read()
        seen = SeenError(
            method=response.request.method,
            url=str(response.request.url),
            status=response.status_code,
            content_type=response.headers.get("content-type", ""),
            body=response.content,
        )
        with _seen_lock:
            SEEN_ERRORS.append(seen)

    hooks = client.event_hooks
    client.event_hooks = {"request": hooks["request"], "response": [*hooks["response"], keep]}
    return client


ERROR_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "conflict_error",
    "rate_limit_error",
    "server_error",
    "api_error",
    "timeout_error",
}


def error_shape_problem(seen: SeenError) -> str | None:
    """Why an error response is not `{"error": {"message", "type", "param", "code"}}`, or None."""
    import json

    where = f"{seen.method} {seen.url} -> {seen.status}"
    if seen.method == "HEAD":
        return None  # a HEAD response has no body by definition
    if urlsplit(seen.url).path == "/healthz":
        return None  # a health report, 503 when degraded, read by probes rather than SDKs
    if not seen.content_type.startswith("application/json"):
        return f"{where}: content-type {seen.content_type!r}"
    try:
        data = json.loads(seen.body)
    except ValueError:
        return f"{where}: body is not JSON: {seen.body[:200]!r}"
    if not isinstance(data, dict) or set(data) != {"error"} or not isinstance(data["error"], dict):
        return f"{where}: not an error object: {data!r}"
    error = data["error"]
    if set(error) != {"message", "type", "param", "code"}:
        return f"{where}: fields {sorted(error)}"
    if not isinstance(error["message"], str) or not error["message"]:
        return f"{where}: empty message"
    if error["type"] not in ERROR_TYPES:
        return f"{where}: unknown type {error['type']!r}"
    for name in ("param", "code"):
        if error[name] is not None and not isinstance(error[name], str):
            return f"{where}: {name} is {error[name]!r}"
    return None


# -- the app --------------------------------------------------------------------------------


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class ApiEnv:
    repo: Path
    app: FastAPI
    client: TestClient
    admin_key: str
    admin_key_id: int
    run_key: str
    run_key_id: int

    @property
    def ws(self) -> Workspace:
        return self.app.state.ws  # type: ignore[no-any-return]

    @property
    def admin(self) -> dict[str, str]:
        return bearer(self.admin_key)

    @property
    def run(self) -> dict[str, str]:
        return bearer(self.run_key)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """A request with the admin key unless headers are given."""
        kwargs.setdefault("headers", self.admin)
        return self.client.request(method, url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def git(self, *args: str) -> str:
        return git(self.repo, *args)

    def head(self) -> str:
        return git(self.repo, "rev-parse", "HEAD")

    def commit_count(self) -> int:
        return int(git(self.repo, "rev-list", "--count", "HEAD"))


# What a browser sends: it asks for HTML, and its forms' Origin is the app's own (TestClient's).
HTML = {"Accept": "text/html,application/xhtml+xml"}
ORIGIN = "http://testserver"


@dataclass
class Browser:
    """A browser without JavaScript signed in to the app: a session cookie and its CSRF token.
    Its client is its own, so that its HTML error pages stay out of the API client's one-shape
    check of JSON errors."""

    api: ApiEnv
    client: TestClient
    csrf: str

    @classmethod
    def sign_in(cls, api: ApiEnv, client: TestClient | None = None) -> Self:
        """Sign in with the admin key, on `client` or a new client of the app."""
        client = client or TestClient(api.app, raise_server_exceptions=False)
        signed = client.post("/v1/ui/auth/login", json={"key": api.admin_key})
        assert signed.status_code == 200, signed.text
        return cls(api, client, signed.json()["csrf_token"])

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(url, headers=HTML, follow_redirects=False, **kwargs)

    def post(self, url: str, data: dict[str, str], **headers: str) -> httpx.Response:
        """A form as the browser posts it (the CSRF token is the caller's to put in `data`)."""
        sent = {**HTML, "Origin": ORIGIN, **headers}
        return self.client.post(url, data=data, headers=sent, follow_redirects=False)


@contextmanager
def running_api(repo: Path, ref: RefTarget | None = None, **settings: Any) -> Iterator[ApiEnv]:
    """The app over `repo` (no watcher unless asked), started and stopped with its lifespan;
    with `ref`, serving that ref as `llmkit serve --ref` does."""
    settings.setdefault("watch", False)
    app = create_app(workspace=Workspace(Settings.resolve(repo, **settings), ref))
    ws: Workspace = app.state.ws
    admin_record, admin_key = ws.keys.create("test admin", "admin")
    run_record, run_key = ws.keys.create("test run", "run")
    with TestClient(app, raise_server_exceptions=False) as client:
        record_errors(client)
        yield ApiEnv(repo, app, client, admin_key, admin_record.id, run_key, run_record.id)


def app_routes(api: ApiEnv) -> list[Any]:
    """Every route of the app, flattened (newer FastAPI keeps included routers as a tree)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:
        return list(api.app.routes)
    return list(iter_route_contexts(api.app.routes))


MakeApi = Callable[..., ApiEnv]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiEnv]:
    """The app over a fresh repository holding `prompts/hello.md` and
    `prompts/support/triage.md`."""
    repo = seeded_repo(tmp_path / "repo")
    with running_api(repo) as env:
        yield env


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[MakeApi]:
    """Build further apps: `make_api(files=..., max_body_bytes=...)`; each gets its own repo."""
    stack: list[Any] = []

    def build(files: dict[str, str] | None = None, **settings: Any) -> ApiEnv:
        root = tmp_path / f"repo{len(stack)}"
        # An empty `files` leaves the branch unborn.
        if files is None:
            repo = seeded_repo(root)
        else:
            repo = init_repo(root, files, commit=bool(files)).root
        manager = running_api(repo, **settings)
        env = manager.__enter__()
        stack.append(manager)
        return env

    yield build
    for manager in reversed(stack):
        manager.__exit__(None, None, None)
