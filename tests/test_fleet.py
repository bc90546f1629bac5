"""A fleet: three `llmkit serve --ref main --remote origin` replicas, each with its own clone of
one bare remote, sharing one PostgreSQL store. A push is served by all of them, calls spread
over them are in every replica's log, a key made on one works on all, and when one is killed
under load the others keep serving."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.helpers import Repo, clean_env, git, init_repo, poll, start_server
from tests.pg import PgServer

REF_HEADER = "x-llmkit-ref-sha"
FETCH_INTERVAL_S = 1
REPLICAS = 3
# Bounds of the load kept up while a replica is killed.
LOAD_MAX_CALLS = 300
LOAD_MAX_S = 30.0


def prompt(text: str) -> str:
    return f"---\nmodel: echo\n---\n<!-- role:system -->\n{text}\n"


def call(http: httpx.Client, url: str, key: str, model: str = "a") -> httpx.Response:
    return http.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model},
        timeout=30,
    )


def test_three_replicas_on_one_postgresql_serve_one_remote(
    tmp_path: Path, pg_server: PgServer
) -> None:
    author = init_repo(tmp_path / "author", {"prompts/a.md": prompt("Gen 1.")})
    bare = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(author.root), str(bare))
    author.git("remote", "add", "origin", str(bare))
    author.git("fetch", "-q", "origin")
    env = clean_env(LLMKIT_DATABASE_URL=pg_server.new_store())
    flags = ("--log-level", "warning", "--ref", "main", "--remote", "origin")
    flags += ("--fetch-interval", str(FETCH_INTERVAL_S))
    servers = []
    # One client for the test's own calls: each httpx.post() would build a TLS context, tens of
    # milliseconds of CPU, and the polls below make hundreds of calls.
    http = httpx.Client()
    try:
        for i in range(REPLICAS):
            clone = tmp_path / f"replica{i}"
            git(tmp_path, "clone", "-q", str(bare), str(clone))
            Repo(clone).identify()
            servers.append(start_server(clone, tmp_path, env, flags=flags))
        # The first replica made the fleet's admin key, in the shared store.
        admin = servers[0].admin_key

        # A key made on one replica works on all.
        made = http.post(
            f"{servers[1].v1}/ui/settings/api-keys",
            headers={"Authorization": f"Bearer {admin}"},
            json={"name": "app", "scope": "run"},
            timeout=30,
        )
        assert made.status_code == 201, made.text
        run_key = made.json()["key"]
        for server in servers:
            assert call(http, server.url, run_key).json()["choices"][0]["message"]["content"] == (
                "system: Gen 1."
            )

        # A push is served by every replica within its fetch interval (polled, bounded).
        author.write("prompts/a.md", prompt("Gen 2."))
        pushed = author.commit("gen 2")
        author.git("push", "-q", "origin", "main")
        for server in servers:
            poll(
                lambda s=server: call(http, s.url, run_key).headers.get(REF_HEADER) == pushed,
                f"replica on port {server.port} to serve the pushed commit",
                timeout_s=30,
            )
            health = http.get(f"{server.url}/healthz", timeout=30).json()
            assert health["head"] == pushed and health["runlog"]["store"] == "postgresql"

        # Calls spread over the replicas are in the log of each of them.
        traces = []
        for i in range(3 * REPLICAS):
            response = call(http, servers[i % REPLICAS].url, run_key)
            assert response.status_code == 200, response.text
            traces.append(response.headers["x-llmkit-trace-id"])

        def logged_everywhere() -> bool:
            return all(
                http.get(
                    f"{server.v1}/ui/logs/{trace}",
                    headers={"Authorization": f"Bearer {admin}"},
                    timeout=30,
                ).status_code
                == 200
                for server in servers
                for trace in traces
            )

        poll(logged_everywhere, "every call in every replica's log", timeout_s=30)
        listed = http.get(
            f"{servers[2].v1}/ui/logs",
            headers={"Authorization": f"Bearer {admin}"},
            params={"limit": 500},
            timeout=30,
        ).json()
        assert set(traces) <= {row["trace_id"] for row in listed}

        # SIGKILL one replica under load: the others keep answering every call.
        statuses: list[int] = []
        load_traces: list[str] = []
        stop = threading.Event()

        def load() -> None:
            deadline = time.monotonic() + LOAD_MAX_S
            with httpx.Client() as own:  # a client of the load thread's own
                for n in range(LOAD_MAX_CALLS):
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    response = call(own, servers[1 + n % 2].url, run_key)
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        load_traces.append(response.headers["x-llmkit-trace-id"])

        worker = threading.Thread(target=load)
        worker.start()
        try:
            poll(lambda: len(statuses) >= 10, "the load to start", timeout_s=30)
            servers[0].proc.kill()
            servers[0].proc.wait(timeout=30)
            after_kill = len(statuses)
            poll(
                lambda: len(statuses) >= after_kill + 20 or not worker.is_alive(),
                "calls after the kill",
                timeout_s=LOAD_MAX_S,
            )
        finally:
            stop.set()
            worker.join(timeout=LOAD_MAX_S + 30)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        assert len(statuses) > after_kill
        survivor = servers[2]
        assert call(http, survivor.url, run_key).status_code == 200

        def load_logged() -> bool:
            headers = {"Authorization": f"Bearer {admin}"}
            return all(
                http.get(f"{survivor.v1}/ui/logs/{t}", headers=headers, timeout=30).status_code
                == 200
                for t in load_traces
            )

        poll(load_logged, "the calls under load in the survivor's log", timeout_s=30)
    finally:
        http.close()
        for server in servers:
            server.kill()
