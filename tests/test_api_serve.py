"""`llmkit serve` and `llmkit keys` as real processes, talked to over a socket on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import httpx

from tests.api_fixtures import (
    PROJECT_ROOT,
    SEEN_ERRORS,
    bearer,
    clean_env,
    error_shape_problem,
    git,
    init_repo,
    record_errors,
)

KEY_LINE = re.compile(r"^llmkit_[0-9A-Za-z]{32}$")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
CHANGE_TIMEOUT_S = 10.0

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(check: Callable[[], T], timeout_s: float = CHANGE_TIMEOUT_S, every_s: float = 0.05) -> T:
    """Call `check` until it returns something truthy or the deadline passes; its last result."""
    deadline = time.monotonic() + timeout_s
    result = check()
    while not result and time.monotonic() < deadline:
        time.sleep(every_s)
        result = check()
    return result


def llmkit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmkit", *map(str, args)],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=PROJECT_ROOT,
        timeout=60,
    )


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str | None = None) -> httpx.Client:
        headers = bearer(key) if key else {}
        return record_errors(httpx.Client(base_url=self.url, headers=headers, timeout=10))

    def stop(self) -> int:
        """SIGTERM, then the exit code; a server that does not stop in time is killed and fails."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the server did not stop within {STOP_TIMEOUT_S} s of SIGTERM") from None

    def output(self) -> str:
        return "\n".join(self.stdout + self.stderr)


def _collect(stream: IO[str], into: list[str]) -> None:
    for line in stream:
        into.append(line.rstrip("\n"))


def _ready(server: Server) -> bool:
    if server.process.poll() is not None:
        return True  # it exited; the caller looks at why
    try:
        return httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def serve(repo: Path, *flags: str) -> Iterator[Server]:
    """`python -m llmkit serve` on a free port, ready to answer; stopped (SIGTERM) at the end."""
    server = None
    for _ in range(3):  # another process may take the free port before the server binds it
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "llmkit", "serve", "--repo", str(repo), "--port", str(port), *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
            cwd=PROJECT_ROOT,
        )
        server = Server(process, port)
        for stream, into in ((process.stdout, server.stdout), (process.stderr, server.stderr)):
            threading.Thread(target=_collect, args=(stream, into), daemon=True).start()
        poll(lambda: _ready(server), timeout_s=START_TIMEOUT_S)
        if process.poll() is None:
            break
        process.wait()
        if "address already in use" not in server.output().lower():
            raise AssertionError(f"llmkit serve exited with {process.returncode}:\n{server.output()}")
    assert server is not None and server.process.poll() is None, "llmkit serve did not start"
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def served_prompt(client: httpx.Client, key: str) -> dict | None:
    response = client.get(f"/v1/ui/prompts/{key}")
    return response.json() if response.status_code == 200 else None


def test_first_start_prints_one_admin_key_a_second_start_none_and_the_watcher_serves_edits(
    tmp_path: Path,
) -> None:
    repo = init_repo(tmp_path / "repo")
    key_file = repo / ".llmkit" / "admin.key"

    with serve(repo, "--no-watch") as first:
        key_lines = [line for line in first.stdout if KEY_LINE.match(line)]
        assert len(key_lines) == 1 and first.stdout == key_lines, first.stdout
        admin_key = key_lines[0]
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_text() == admin_key + "\n"
        with first.client(admin_key) as client:
            listed = client.get("/v1/ui/prompts")
            assert listed.status_code == 200
            assert [p["key"] for p in listed.json()] == ["hello"]
            assert client.get("/v1/models").json()["data"][0]["id"] == "hello"
        assert first.stop() == 0, first.output()
    assert "Traceback" not in first.output()

    with serve(repo) as second:
        assert not any(KEY_LINE.match(line) for line in second.stdout), second.stdout
        assert key_file.read_text() == admin_key + "\n"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        listed_keys = json.loads(llmkit("keys", "list", "--json", "--repo", repo).stdout)
        assert [(k["name"], k["scope"]) for k in listed_keys] == [("admin", "admin")]

        with second.client(admin_key) as client:
            (repo / "prompts" / "fresh.md").write_text("<!-- role:user -->\nSay {{ word }}.\n")
            fresh = poll(lambda: served_prompt(client, "fresh"))
            assert fresh is not None, "a new file did not reach the API"
            assert fresh["draft"] is True and fresh["sha"] is None and fresh["user"] == "Say {{ word }}."

            hello = repo / "prompts" / "hello.md"
            hello.write_text(hello.read_text().replace("helpful", "patient"))
            edited = poll(lambda: (p := served_prompt(client, "hello")) and "patient" in p["system"] and p)
            assert edited, "an edit to a file did not reach the API"
            assert edited["draft"] is True and edited["version_number"] == 2

            git(repo, "add", "prompts/hello.md", "prompts/fresh.md")
            git(repo, "commit", "-q", "-m", "Patient hello and a fresh prompt")
            head = git(repo, "rev-parse", "HEAD")
            committed = poll(lambda: (p := served_prompt(client, "hello")) and p["sha"] == head and p)
            assert committed, "a commit made by hand did not reach the API"
            assert committed["draft"] is False and committed["version_number"] == 2
            versions = client.get("/v1/ui/prompts/hello/versions").json()
            assert [v["message"] for v in versions][-1] == "Patient hello and a fresh prompt"
            assert served_prompt(client, "fresh")["sha"] == head
        assert second.stop() == 0, second.output()
    assert "Traceback" not in second.output()


def test_keys_cli_creates_lists_and_revokes_against_a_running_server(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    with serve(repo, "--no-watch") as server:
        admin_key = server.stdout[0]

        created = llmkit("keys", "create", "ci", "--repo", repo)
        assert created.returncode == 0, created.stderr
        assert len(created.stdout.splitlines()) == 1 and KEY_LINE.match(created.stdout.strip())
        run_key = created.stdout.strip()
        assert run_key not in created.stderr
        created_admin = llmkit("keys", "create", "ops", "--admin", "--repo", repo)
        assert created_admin.returncode == 0, created_admin.stderr
        ops_key = created_admin.stdout.strip()
        assert KEY_LINE.match(ops_key)

        listing = llmkit("keys", "list", "--repo", repo)
        listing_json = llmkit("keys", "list", "--json", "--repo", repo)
        assert listing.returncode == listing_json.returncode == 0
        scopes = {k["name"]: k["scope"] for k in json.loads(listing_json.stdout)}
        assert scopes == {"admin": "admin", "ci": "run", "ops": "admin"}
        for clear in (admin_key, run_key, ops_key):
            assert clear[12:] not in listing.stdout + listing.stderr
            assert clear[12:] not in listing_json.stdout
            assert clear[:12] in listing.stdout  # the display prefix, to tell keys apart

        with server.client(run_key) as as_run, server.client(ops_key) as as_ops:
            assert as_run.get("/v1/models").status_code == 200
            assert as_run.get("/v1/ui/prompts").status_code == 403
            assert as_ops.get("/v1/ui/prompts").status_code == 200

            ci_id = next(k["id"] for k in json.loads(listing_json.stdout) if k["name"] == "ci")
            revoked = llmkit("keys", "revoke", str(ci_id), "--repo", repo)
            assert revoked.returncode == 0, revoked.stderr
            refused = poll(lambda: as_run.get("/v1/models").status_code == 401)
            assert refused, "a key revoked from the CLI kept working against the server"
            assert as_ops.get("/v1/ui/prompts").status_code == 200
            assert llmkit("keys", "revoke", "999", "--repo", repo).returncode == 1

            # A chunked body over the (default 1 MiB) limit is refused over a real socket too.
            def chunks() -> Iterator[bytes]:
                for _ in range(24):
                    yield b"x" * 65536

            too_big = as_ops.post("/v1/ui/prompts", content=chunks(), headers={"content-type": "application/json"})
            assert too_big.status_code == 413
            assert as_ops.get("/healthz").status_code == 200

        assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()
    assert server.stdout == [admin_key]
    for clear in (admin_key, run_key, ops_key):
        assert clear[12:] not in "\n".join(server.stderr)
    # Errors over a real socket have the same shape as in-process ones (403, 401, 413 above).
    assert {e.status for e in SEEN_ERRORS if e.url.startswith(server.url)} >= {401, 403, 413}
    assert [p for p in map(error_shape_problem, SEEN_ERRORS) if p] == []
