"""`llmkit serve --ref REF`: only what is committed at REF is served (never the working tree),
the served commit is named in /healthz and on every answer, REF moving swaps the whole served
set at once, a remote is followed by fetch and by a signed push webhook, and API writes are
refused. Real repositories in tmp_path (a bare remote and clones), real `llmkit serve`
processes where the behaviour spans processes, the real app in-process elsewhere."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from llmkit import cli_serve, refserve
from llmkit.api.routes.hooks import signature
from llmkit.refserve import FETCH_MIN_GAP_S, REF_HEADER, RefTarget
from llmkit.watch import Watcher
from tests.api_fixtures import ApiEnv, bearer, repo_state, running_api
from tests.helpers import Repo, clean_env, git, init_repo, invoke, poll, serving

SECRET = "s3cret-for-tests"


def prompt(text: str) -> str:
    return f"---\nmodel: echo\n---\n<!-- role:system -->\n{text}\n"


def call(url: str, key: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions", headers=bearer(key), json={"model": model}, timeout=30
    )


def answer(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def remote_and_clones(tmp_path: Path) -> tuple[Path, Repo, Repo]:
    """A bare remote, an author's clone that pushes to it, and the server's clone."""
    author = init_repo(tmp_path / "author", {"prompts/a.md": prompt("Gen 1.")})
    bare = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(author.root), str(bare))
    author.git("remote", "add", "origin", str(bare))
    author.git("fetch", "-q", "origin")
    git(tmp_path, "clone", "-q", str(bare), str(tmp_path / "server"))
    server = Repo(tmp_path / "server")
    server.identify()
    return bare, author, server


@contextmanager
def ref_api(repo: Path, ref: str = "main", **kwargs: object) -> Iterator[ApiEnv]:
    target = RefTarget(ref, **kwargs)  # type: ignore[arg-type]
    with running_api(repo, ref=target) as api:
        yield api


# -- what is served ---------------------------------------------------------------------------


def test_a_working_tree_edit_is_not_served_and_a_commit_is(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"prompts/a.md": prompt("Committed.")})
    first = repo.head()
    with serving(repo.root, tmp_path, watch=True, flags=("--ref", "main")) as server:
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["head"] == first and health["ref"]["sha"] == first
        assert answer(call(server.url, server.admin_key, "a")) == "system: Committed."
        # Every answer names the commit, errors included.
        refused = httpx.get(f"{server.v1}/models")
        assert refused.status_code == 401 and refused.headers[REF_HEADER] == first

        repo.write("prompts/a.md", prompt("Half-saved draft"))
        repo.write("prompts/new.md", prompt("Never committed."))
        # A commit of another prompt, made after the edits: once it is served, the server has
        # had every chance to see the edits too.
        repo.write("prompts/b.md", prompt("Also committed."))
        second = repo.commit("add b", "prompts/b.md")
        poll(
            lambda: server.health()["head"] == second,
            "the commit to be served",
        )
        served = call(server.url, server.admin_key, "a")
        assert answer(served) == "system: Committed."
        assert served.headers[REF_HEADER] == second
        assert answer(call(server.url, server.admin_key, "b")) == "system: Also committed."
        missing = call(server.url, server.admin_key, "new")
        assert missing.status_code == 404, missing.text
        models = httpx.get(f"{server.v1}/models", headers=server.headers()).json()
        assert sorted(m["id"] for m in models["data"]) == ["a", "b"]


def test_every_answer_is_consistent_with_exactly_one_sha_while_ref_moves(tmp_path: Path) -> None:
    """Readers call two prompts' listing and one prompt's execution while REF moves again and
    again (and `git gc` packs refs and objects under it): each answer's contents are the ones of
    the commit its header names."""

    def looped(n: int) -> str:
        # Not a plain substitution: prepared on a worker thread, which must see the snapshot
        # the request pinned as well.
        return prompt(f"{{% for _ in [1] %}}Gen {n}.{{% endfor %}}")

    repo = init_repo(
        tmp_path / "repo",
        {
            "prompts/a.md": prompt("Gen 0."),
            "prompts/b.md": prompt("Gen 0."),
            "prompts/c.md": looped(0),
        },
    )
    generation_of = {repo.head(): 0}
    moves = 20
    problems: list[str] = []
    seen: set[str] = set()
    done = threading.Event()

    with ref_api(repo.root) as api:
        reads: list[int] = []

        def read() -> None:
            try:
                read_until_done()
            except Exception as exc:  # a failed read fails the test, not only its thread
                problems.append(f"reader failed: {exc!r}")

        def read_until_done() -> None:
            while not done.is_set():
                reads.append(1)
                listing = api.get("/v1/ui/prompts")
                sha = listing.headers[REF_HEADER]
                gens = {p["key"]: p["system"] for p in listing.json()}
                want = generation_of.get(sha)
                if len(gens) != 3 or not all(f"Gen {want}." in text for text in gens.values()):
                    problems.append(f"listing at {sha[:8]} (gen {want}) showed {gens}")
                for key in ("a", "c"):
                    executed = api.post("/v1/chat/completions", json={"model": key})
                    seen.update((sha, executed.headers[REF_HEADER]))
                    want = generation_of.get(executed.headers[REF_HEADER])
                    if answer(executed) != f"system: Gen {want}.":
                        problems.append(f"{key} at gen {want} answered {answer(executed)!r}")

        # git's own writes race `git gc` (it may remove an object folder a commit is about to
        # write into), so the mover's commits take turns with gc; the server's syncs and every
        # read do not.
        writing = threading.Lock()

        def gc() -> None:
            for _ in range(20):
                if done.is_set():
                    return
                with writing:
                    repo.git("gc", "--quiet", "--prune=now")
                    repo.git("pack-refs", "--all", "--prune")

        readers = [threading.Thread(target=read) for _ in range(3)] + [threading.Thread(target=gc)]
        for thread in readers:
            thread.start()
        try:
            for n in range(1, moves + 1):
                repo.write("prompts/a.md", prompt(f"Gen {n}."))
                repo.write("prompts/b.md", prompt(f"Gen {n}."))
                repo.write("prompts/c.md", looped(n))
                with writing:
                    repo.git("add", "-A")
                    tree = repo.git("write-tree")
                    sha = repo.git("commit-tree", tree, "-p", "HEAD", "-m", f"g{n}")
                    # The mapping is known before any reader can see the commit.
                    generation_of[sha] = n
                    repo.git("update-ref", "refs/heads/main", sha)
                api.ws.index.sync()
        finally:
            done.set()
            for thread in readers:
                thread.join(60)
        assert problems == []
        assert len(reads) > moves and len(seen) >= 2, "the readers never saw REF move"
        assert api.get("/healthz").json()["head"] == repo.head()


def test_ref_moved_back_deleted_and_broken_keeps_serving_what_it_can(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"prompts/a.md": prompt("One."), "prompts/b.md": "x"})
    repo.write("prompts/b.md", prompt("B fine."))
    first = repo.commit("b fine")
    repo.git("branch", "prod")
    repo.write("prompts/a.md", prompt("Two."))
    second = repo.commit("two")
    repo.git("update-ref", "refs/heads/prod", second)
    with ref_api(repo.root, "prod") as api:
        assert api.post("/v1/chat/completions", json={"model": "a"}).json()["choices"][0][
            "message"
        ]["content"] == ("system: Two.")

        # Force-pushed backwards: the older commit is served, numbered as its own history says.
        repo.git("update-ref", "refs/heads/prod", first)
        api.ws.index.sync()
        back = api.post("/v1/chat/completions", json={"model": "a"})
        assert answer(back) == "system: One." and back.headers[REF_HEADER] == first
        assert back.headers["x-llmkit-prompt-version"] == "1"

        # A commit with a broken prompt file: the others are served, the broken one is named.
        repo.git("checkout", "-q", "prod")
        repo.write("prompts/b.md", "---\nmodel: [unclosed\n---\n<!-- role:system -->\nB.\n")
        broken = repo.commit("break b")
        api.ws.index.sync()
        health = api.get("/healthz").json()
        assert health["head"] == broken
        assert list(health["ref"]["unservable"]) == ["b"]
        assert "prompts/b.md" in health["ref"]["unservable"]["b"]
        assert answer(api.post("/v1/chat/completions", json={"model": "a"})) == "system: One."
        refused = api.post("/v1/chat/completions", json={"model": "b"})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "invalid_prompt_file"

        # REF deleted: the last commit stays served, and /healthz says REF is gone.
        repo.git("checkout", "-q", "main")
        repo.git("branch", "-D", "prod")
        api.ws.index.sync()
        health = api.get("/healthz").json()
        assert health["head"] == broken and health["ref"]["missing"] is True
        assert health["status"] == "degraded"
        assert api.get("/healthz?strict=true").status_code == 503
        assert answer(api.post("/v1/chat/completions", json={"model": "a"})) == "system: One."

        repo.git("branch", "prod", second)
        api.ws.index.sync()
        health = api.get("/healthz").json()
        assert health["head"] == second and health["ref"]["missing"] is False
        assert health["status"] == "ok"


def test_api_writes_are_refused_naming_the_ref(tmp_path: Path) -> None:
    repo = init_repo(
        tmp_path / "repo",
        {"prompts/a.md": prompt("A."), "evals/a/basic.yaml": "name: basic\n"},
    )
    before = repo_state(repo.root)
    with ref_api(repo.root) as api:
        writes = [
            ("POST", "/v1/ui/prompts", {"key": "c", "content": prompt("C.")}),
            ("PUT", "/v1/ui/prompts/a", {"content": prompt("Changed.")}),
            ("PUT", "/v1/ui/prompts/a/set-version/1", None),
            ("DELETE", "/v1/ui/prompts/a", None),
            ("POST", "/v1/ui/prompt-evals", {"prompt_key": "a", "name": "more"}),
        ]
        for method, url, body in writes:
            anonymous = api.client.request(method, url, json=body)
            assert anonymous.status_code == 401, (url, anonymous.text)
            refused = api.request(method, url, json=body)
            assert refused.status_code == 409, (url, refused.text)
            error = refused.json()["error"]
            assert error["code"] == "read_only_ref" and "--ref main" in error["message"]
        assert api.get("/v1/ui/prompts/a").status_code == 200
    assert repo_state(repo.root) == before


# -- following a remote -----------------------------------------------------------------------


def test_a_push_to_the_remote_is_served_within_the_fetch_interval(tmp_path: Path) -> None:
    _, author, server_clone = remote_and_clones(tmp_path)
    flags = ("--ref", "main", "--remote", "origin", "--fetch-interval", "1")
    with serving(server_clone.root, tmp_path, flags=flags) as server:
        assert answer(call(server.url, server.admin_key, "a")) == "system: Gen 1."
        author.write("prompts/a.md", prompt("Gen 2."))
        pushed = author.commit("gen 2")
        author.git("push", "-q", "origin", "main")
        poll(
            lambda: call(server.url, server.admin_key, "a").headers[REF_HEADER] == pushed,
            "the pushed commit to be served",
        )
        assert answer(call(server.url, server.admin_key, "a")) == "system: Gen 2."
        # Fetched into the remote-tracking branch: the clone's own branch and files are untouched.
        assert server_clone.git("rev-parse", "refs/remotes/origin/main") == pushed
        assert server_clone.head() != pushed and "Gen 1." in server_clone.read("prompts/a.md")

        # Force-pushed backwards: the older commit is served again.
        first = author.git("rev-parse", "HEAD~1")
        author.git("push", "-q", "--force", "origin", f"{first}:refs/heads/main")
        poll(
            lambda: call(server.url, server.admin_key, "a").headers[REF_HEADER] == first,
            "the force-pushed commit to be served",
        )
        assert answer(call(server.url, server.admin_key, "a")) == "system: Gen 1."


def test_a_signed_push_webhook_fetches_at_once_and_bad_ones_are_refused(tmp_path: Path) -> None:
    _, author, server_clone = remote_and_clones(tmp_path)
    first = server_clone.head()
    flags = ("--ref", "main", "--remote", "origin", "--fetch-interval", "3600")
    env = clean_env(LLMKIT_WEBHOOK_SECRET=SECRET)
    with serving(server_clone.root, tmp_path, env, flags=flags) as server:
        author.write("prompts/a.md", prompt("Gen 2."))
        pushed = author.commit("gen 2")
        author.git("push", "-q", "origin", "main")
        body = json.dumps({"ref": "refs/heads/main", "after": pushed}).encode()
        hook = f"{server.v1}/ui/hooks/git"
        headers = {"content-type": "application/json", "x-github-event": "push"}

        unsigned = httpx.post(hook, content=body, headers=headers)
        assert unsigned.status_code == 401
        assert unsigned.json()["error"]["code"] == "missing_signature"
        forged = signature(b"not the secret", body)
        bad = httpx.post(hook, content=body, headers={**headers, "x-hub-signature-256": forged})
        assert bad.status_code == 403 and bad.json()["error"]["code"] == "bad_signature"
        # A signature of another body does not pass for this one.
        other = signature(SECRET.encode(), body + b" ")
        bad = httpx.post(hook, content=body, headers={**headers, "x-hub-signature-256": other})
        assert bad.status_code == 403
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["head"] == first and health["ref"]["remote"]["fetches"] == 1

        good = signature(SECRET.encode(), body)
        accepted = httpx.post(hook, content=body, headers={**headers, "x-hub-signature-256": good})
        assert accepted.status_code == 202, accepted.text
        assert accepted.json() == {"fetch": "queued", "ref": "refs/heads/main"}
        poll(
            lambda: server.health()["head"] == pushed,
            "the hook's fetch to be served",
        )
        assert answer(call(server.url, server.admin_key, "a")) == "system: Gen 2."


def test_the_hook_is_off_without_a_secret_or_a_remote(tmp_path: Path, monkeypatch: object) -> None:
    _, _, server_clone = remote_and_clones(tmp_path)
    body = b'{"ref": "refs/heads/main"}'
    headers = {"x-hub-signature-256": signature(SECRET.encode(), body)}
    with ref_api(server_clone.root, remote="origin") as api:  # LLMKIT_WEBHOOK_SECRET unset
        off = api.client.post("/v1/ui/hooks/git", content=body, headers=headers)
        assert off.status_code == 404 and off.json()["error"]["code"] == "hook_disabled"
        assert "LLMKIT_WEBHOOK_SECRET" in off.json()["error"]["message"]
    with ref_api(server_clone.root) as api:
        api.app.state.webhook_secret = SECRET.encode()
        off = api.client.post("/v1/ui/hooks/git", content=body, headers=headers)
        assert off.status_code == 404 and "--remote" in off.json()["error"]["message"]


def test_a_flood_of_hooks_starts_a_bounded_number_of_fetches(tmp_path: Path) -> None:
    _, author, server_clone = remote_and_clones(tmp_path)
    with ref_api(server_clone.root, remote="origin", fetch_interval_s=3600.0) as api:
        api.app.state.webhook_secret = SECRET.encode()
        follower = api.app.state.follower
        author.write("prompts/a.md", prompt("Gen 2."))
        pushed = author.commit("gen 2")
        author.git("push", "-q", "origin", "main")
        body = b'{"ref": "refs/heads/main"}'
        headers = {"x-hub-signature-256": signature(SECRET.encode(), body)}
        started = time.monotonic()
        for _ in range(60):
            assert (
                api.client.post("/v1/ui/hooks/git", content=body, headers=headers).status_code
                == 202
            )
        elapsed = time.monotonic() - started
        poll(lambda: api.get("/healthz").json()["head"] == pushed, "the flood's fetch to land")
        time.sleep(2 * FETCH_MIN_GAP_S)  # let any last coalesced fetch run
        # One fetch at start, then at most one per FETCH_MIN_GAP_S while hooks kept coming,
        # and one more for the hooks that came during the last.
        bound = 1 + math.ceil(elapsed / FETCH_MIN_GAP_S) + 2
        assert 2 <= follower.fetches <= bound, (follower.fetches, elapsed)
        other = b'{"ref": "refs/heads/feature"}'
        ignored = api.client.post(
            "/v1/ui/hooks/git",
            content=other,
            headers={"x-hub-signature-256": signature(SECRET.encode(), other)},
        )
        assert ignored.status_code == 200 and ignored.json()["fetch"] == "ignored"


def test_a_failing_fetch_keeps_serving_and_says_so(tmp_path: Path) -> None:
    bare, _, server_clone = remote_and_clones(tmp_path)
    first = server_clone.head()
    with ref_api(server_clone.root, remote="origin") as api:
        server_clone.git("remote", "set-url", "origin", str(tmp_path / "gone.git"))
        assert api.app.state.follower.fetch_now() is False
        health = api.get("/healthz").json()
        assert health["head"] == first and health["status"] == "degraded"
        assert health["ref"]["remote"]["error"]
        assert answer(api.post("/v1/chat/completions", json={"model": "a"})) == "system: Gen 1."
        server_clone.git("remote", "set-url", "origin", str(bare))
        assert api.app.state.follower.fetch_now() is True
        assert api.get("/healthz").json()["status"] == "ok"


# -- the command line -----------------------------------------------------------------------


def test_serve_refuses_bad_ref_options(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"prompts/a.md": prompt("A.")})
    cases = [
        (("--remote", "origin"), "--remote needs --ref"),
        (("--ref", "main", "--fetch-interval", "5"), "--fetch-interval needs --remote"),
        (("--ref", "main", "--remote", "origin", "--fetch-interval", "0"), "1.0<=x<=3600.0"),
        (("--ref", "nope"), "no branch, tag or remote-tracking branch"),
        (("--ref", "main", "--remote", "origin"), "is not a remote"),
        (("--ref", "bad..name"), "not a valid git ref name"),
    ]
    for flags, message in cases:
        result = invoke("serve", "--repo", repo.root, *flags)
        assert result.exit_code == 2, (flags, result.output)
        assert message in result.stderr, (flags, result.stderr)
    # With a remote, a ref the clone lacks is fetched first; one the remote lacks is named.
    _, _, server_clone = remote_and_clones(tmp_path)
    result = invoke("serve", "--repo", server_clone.root, "--ref", "nope", "--remote", "origin")
    assert result.exit_code == 2, result.output
    assert "refs/remotes/origin/nope does not exist; fetching it failed" in result.stderr
    assert "couldn't find remote ref refs/heads/nope" in result.stderr


def test_the_fetch_interval_bounds_agree() -> None:
    assert cli_serve.FETCH_INTERVAL_DEFAULT_S == refserve.FETCH_INTERVAL_DEFAULT_S
    assert cli_serve.FETCH_INTERVAL_MIN_S == refserve.FETCH_INTERVAL_MIN_S
    assert cli_serve.FETCH_INTERVAL_MAX_S == refserve.FETCH_INTERVAL_MAX_S


def test_the_watcher_of_a_ref_looks_at_git_refs_only(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"prompts/a.md": prompt("A.")})
    with ref_api(repo.root) as api:
        watcher = Watcher(api.ws.index, repo.root, files=False)
        assert not watcher.relevant(repo.root / "prompts" / "a.md")
        assert not watcher.relevant(repo.root / "llmkit.yaml")
        assert watcher.relevant(repo.root / ".git" / "refs" / "heads" / "main")
        assert watcher.relevant(repo.root / ".git" / "packed-refs")


@pytest.mark.parametrize("ref", ["main", "v1"])
def test_a_tag_or_a_branch_is_served(tmp_path: Path, ref: str) -> None:
    repo = init_repo(tmp_path / "repo", {"prompts/a.md": prompt("Tagged.")})
    repo.git("tag", "-a", "v1", "-m", "release")
    with ref_api(repo.root, ref) as api:
        assert api.get("/healthz").json()["head"] == repo.head()
        assert answer(api.post("/v1/chat/completions", json={"model": "a"})) == "system: Tagged."
        streamed = api.post("/v1/chat/completions", json={"model": "a", "stream": True})
        assert streamed.status_code == 200 and "Tagged." in streamed.text
        assert streamed.headers[REF_HEADER] == repo.head()


def test_llmkit_yaml_comes_from_the_ref_too(tmp_path: Path) -> None:
    committed = "models:\n  fast:\n    model: echo\n"
    repo = init_repo(tmp_path / "repo", {"prompts/a.md": prompt("A."), "llmkit.yaml": committed})
    repo.write("llmkit.yaml", committed + "  drafted:\n    model: echo\n")  # never committed

    def aliases(api: ApiEnv) -> set[str]:
        data = api.get("/v1/ui/models").json()
        return {row["name"] for row in data}

    with ref_api(repo.root) as api:
        assert "fast" in aliases(api) and "drafted" not in aliases(api)
        repo.write("llmkit.yaml", committed + "  shipped:\n    model: echo\n")
        repo.commit("ship an alias", "llmkit.yaml")
        api.ws.index.sync()
        assert {"fast", "shipped"} <= aliases(api) and "drafted" not in aliases(api)


def test_fetches_racing_a_users_git_fetch_end_served(tmp_path: Path) -> None:
    """Someone runs `git fetch` in the server's clone while the server fetches: either may find
    the ref locked and fail, the server keeps serving, and what lands is served."""
    _, author, server_clone = remote_and_clones(tmp_path)
    with ref_api(server_clone.root, remote="origin") as api:
        follower = api.app.state.follower
        pushed = ""
        for n in range(2, 6):
            author.write("prompts/a.md", prompt(f"Gen {n}."))
            pushed = author.commit(f"gen {n}")
            author.git("push", "-q", "origin", "main")
            user = threading.Thread(
                target=lambda: server_clone.git("fetch", "-q", "origin", check=False)
            )
            user.start()
            follower.fetch_now()
            user.join(60)
            assert answer(api.post("/v1/chat/completions", json={"model": "a"})).startswith(
                "system: Gen "
            )
        assert follower.fetch_now() is True
        health = api.get("/healthz").json()
        assert health["head"] == pushed and health["status"] == "ok"
        assert answer(api.post("/v1/chat/completions", json={"model": "a"})) == "system: Gen 5."


def test_the_prompt_list_and_the_models_follow_the_snapshot_not_the_rows(tmp_path: Path) -> None:
    """What is computed from the listing (the web UI's prompt list, the models in use) is kept
    by snapshot: the index's rows move before the snapshot is swapped, and a request between
    the two must not keep the old listing under the new rows."""
    repo = init_repo(tmp_path / "repo", {"prompts/a.md": prompt("A.")})
    with ref_api(repo.root) as api:
        index = api.ws.index
        assert isinstance(index, refserve.RefIndex)
        pages = {**api.admin, "Accept": "text/html"}
        assert 'href="/prompts/b"' not in api.client.get("/", headers=pages).text
        before = index.generation()
        repo.write("prompts/b.md", prompt("B.").replace("model: echo", "model: echo-b"))
        index.store.pinned = repo.commit("add b", "prompts/b.md")
        refserve.Index.sync(index)  # the rows move, as RefIndex.sync does before its swap
        assert index.counts()[0] == 2 and index.current().sha != index.store.pinned
        assert index.generation() == before
        assert 'href="/prompts/b"' not in api.client.get("/", headers=pages).text
        assert "echo-b" not in index.models_in_use()
        index.sync()  # the swap
        assert index.generation() != before
        assert 'href="/prompts/b"' in api.client.get("/", headers=pages).text
        assert index.models_in_use()["echo-b"] == ["b"]
