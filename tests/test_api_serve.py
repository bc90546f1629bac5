"""`llmkit serve` as a real process talked to over a socket on 127.0.0.1, and `llmkit keys`
against it (in-process, and once as a real process)."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.api_fixtures import (
    SEEN_ERRORS,
    bearer,
    error_shape_problem,
    record_errors,
    scaffold_repo,
)
from tests.helpers import Repo, ServerProcess, git, invoke, poll, run_llmkit, serving

KEY_LINE = re.compile(r"^llmkit_[0-9A-Za-z]{32}$")
STOP_TIMEOUT_S = 20.0


def http(server: ServerProcess, key: str | None = None) -> httpx.Client:
    headers = bearer(key) if key else {}
    return record_errors(httpx.Client(base_url=server.url, headers=headers, timeout=10))


def served_prompt(client: httpx.Client, key: str) -> dict | None:
    response = client.get(f"/v1/ui/prompts/{key}")
    return response.json() if response.status_code == 200 else None


def test_first_start_prints_one_admin_key_a_second_start_none_and_the_watcher_serves_edits(
    tmp_path: Path,
) -> None:
    # The one real `llmkit init` process: the entry point and its exit code.
    repo = tmp_path / "repo"
    made = run_llmkit("init", repo)
    assert made.returncode == 0, made.stderr
    Repo(repo).identify()
    key_file = repo / ".llmkit" / "admin.key"

    with serving(repo, tmp_path, flags=()) as first:
        key_lines = [line for line in first.stdout().splitlines() if KEY_LINE.match(line)]
        assert len(key_lines) == 1 and first.stdout().splitlines() == key_lines, first.stdout()
        admin_key = key_lines[0]
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_text() == admin_key + "\n"
        with http(first, admin_key) as client:
            listed = client.get("/v1/ui/prompts")
            assert listed.status_code == 200
            assert [p["key"] for p in listed.json()] == ["hello"]
            assert client.get("/v1/models").json()["data"][0]["id"] == "hello"
        assert first.terminate(STOP_TIMEOUT_S) == 0, first.output()
    assert "Traceback" not in first.output()

    with serving(repo, tmp_path, watch=True, flags=()) as second:
        second_lines = second.stdout().splitlines()
        assert not any(KEY_LINE.match(line) for line in second_lines), second.stdout()
        assert key_file.read_text() == admin_key + "\n"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        listed_keys = json.loads(invoke("keys", "list", "--json", "--repo", repo).stdout)
        assert [(k["name"], k["scope"]) for k in listed_keys] == [("admin", "admin")]

        with http(second, admin_key) as client:
            (repo / "prompts" / "fresh.md").write_text("<!-- role:user -->\nSay {{ word }}.\n")
            fresh = poll(lambda: served_prompt(client, "fresh"))
            assert fresh is not None, "a new file did not reach the API"
            assert (
                fresh["draft"] is True
                and fresh["sha"] is None
                and fresh["user"] == "Say {{ word }}."
            )

            hello = repo / "prompts" / "hello.md"
            hello.write_text(hello.read_text().replace("helpful", "patient"))
            edited = poll(
                lambda: (p := served_prompt(client, "hello")) and "patient" in p["system"] and p
            )
            assert edited, "an edit to a file did not reach the API"
            assert edited["draft"] is True and edited["version_number"] == 2

            git(repo, "add", "prompts/hello.md", "prompts/fresh.md")
            git(repo, "commit", "-q", "-m", "Patient hello and a fresh prompt")
            head = git(repo, "rev-parse", "HEAD")
            committed = poll(
                lambda: (p := served_prompt(client, "hello")) and p["sha"] == head and p
            )
            assert committed, "a commit made by hand did not reach the API"
            assert committed["draft"] is False and committed["version_number"] == 2
            versions = client.get("/v1/ui/prompts/hello/versions").json()
            assert [v["message"] for v in versions][-1] == "Patient hello and a fresh prompt"
            assert served_prompt(client, "fresh")["sha"] == head
        assert second.terminate(STOP_TIMEOUT_S) == 0, second.output()
    assert "Traceback" not in second.output()


def test_keys_cli_creates_lists_and_revokes_against_a_running_server(tmp_path: Path) -> None:
    repo = scaffold_repo(tmp_path / "repo")
    with serving(repo, tmp_path, flags=()) as server:
        admin_key = server.stdout().splitlines()[0]

        # The one real `llmkit keys` process (entry point, exit code); the rest in-process.
        created = run_llmkit("keys", "create", "ci", "--repo", repo)
        assert created.returncode == 0, created.stderr
        assert len(created.stdout.splitlines()) == 1 and KEY_LINE.match(created.stdout.strip())
        run_key = created.stdout.strip()
        assert run_key not in created.stderr
        created_admin = invoke("keys", "create", "ops", "--admin", "--repo", repo)
        assert created_admin.exit_code == 0, created_admin.stderr
        ops_key = created_admin.stdout.strip()
        assert KEY_LINE.match(ops_key)

        listing = invoke("keys", "list", "--repo", repo)
        listing_json = invoke("keys", "list", "--json", "--repo", repo)
        assert listing.exit_code == listing_json.exit_code == 0
        scopes = {k["name"]: k["scope"] for k in json.loads(listing_json.stdout)}
        assert scopes == {"admin": "admin", "ci": "run", "ops": "admin"}
        for clear in (admin_key, run_key, ops_key):
            assert clear[12:] not in listing.stdout + listing.stderr
            assert clear[12:] not in listing_json.stdout
            assert clear[:12] in listing.stdout  # the display prefix, to tell keys apart

        with http(server, run_key) as as_run, http(server, ops_key) as as_ops:
            assert as_run.get("/v1/models").status_code == 200
            assert as_run.get("/v1/ui/prompts").status_code == 403
            assert as_ops.get("/v1/ui/prompts").status_code == 200

            ci_id = next(k["id"] for k in json.loads(listing_json.stdout) if k["name"] == "ci")
            revoked = invoke("keys", "revoke", str(ci_id), "--repo", repo)
            assert revoked.exit_code == 0, revoked.stderr
            refused = poll(lambda: as_run.get("/v1/models").status_code == 401)
            assert refused, "a key revoked from the CLI kept working against the server"
            assert as_ops.get("/v1/ui/prompts").status_code == 200
            assert invoke("keys", "revoke", "999", "--repo", repo).exit_code == 1

            # A chunked body over the (default 1 MiB) limit is refused over a real socket too.
            def chunks() -> Iterator[bytes]:
                for _ in range(24):
                    yield b"x" * 65536

            too_big = as_ops.post(
                "/v1/ui/prompts", content=chunks(), headers={"content-type": "application/json"}
            )
            assert too_big.status_code == 413
            assert as_ops.get("/healthz").status_code == 200

        assert server.terminate(STOP_TIMEOUT_S) == 0, server.output()
    assert "Traceback" not in server.output()
    assert server.stdout().splitlines() == [admin_key]
    for clear in (admin_key, run_key, ops_key):
        assert clear[12:] not in server.stderr()
    # Errors over a real socket have the same shape as in-process ones (403, 401, 413 above).
    assert {e.status for e in SEEN_ERRORS if e.url.startswith(server.url)} >= {401, 403, 413}
    assert [p for p in map(error_shape_problem, SEEN_ERRORS) if p] == []
