"""Keys, scopes, odd input, concurrent writes, and one error shape for every error response."""

from __future__ import annotations

import logging
import re
import secrets
import string
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount

from llmkit.index_schema import INDEX_TABLES
from llmkit.workspace import Workspace
from tests.api_fixtures import (
    SEEN_ERRORS,
    ApiEnv,
    MakeApi,
    app_routes,
    bearer,
    error_shape_problem,
    repo_state,
)
from tests.helpers import git

# Reachable without a key; everything else needs one. The web UI's sign-in page and its
# stylesheet and script are public: a browser needs them before it has signed in.
PUBLIC_PATHS = {
    "/v1/",
    "/healthz",
    "/docs",
    "/docs/assets",
    "/openapi.json",
    "/sign-in",
    "/static",
}
# Authenticated by a signature of the body instead of a key (a git host holds no llmkit key):
# tests/test_serve_ref.py refuses it unsigned, badly signed and with no secret configured.
SIGNED_PATHS = {"/v1/ui/hooks/git"}

BASE62 = string.digits + string.ascii_letters


def unknown_key() -> str:
    return "llmkit_" + "".join(secrets.choice(BASE62) for _ in range(32))


def plausible(name: str, api: ApiEnv) -> str:
    """A value for a path parameter that names something that exists, when we can tell."""
    values = {
        "prompt_id": "hello",
        "key": "hello",
        "version": "1",
        "key_id": str(api.run_key_id),
        "trace_id": "0" * 32,
        "run_id": "1",
        "eval_id": "1",
        "id": "1",
    }
    return values.get(name, "1")


def route_calls(api: ApiEnv) -> list[tuple[str, str]]:
    """(method, url) for every route of the app except the public ones, path params filled."""
    calls = []
    for route in app_routes(api):
        path = getattr(route, "path", None)
        if path is None or path in PUBLIC_PATHS or path in SIGNED_PATHS:
            continue
        if isinstance(route, Mount):
            path = path.rstrip("/") + "/x"
        url = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: plausible(m.group(1), api), path)
        methods = getattr(route, "methods", None) or {"GET"}
        calls.extend((method, url) for method in sorted(methods))
    return calls


def send(api: ApiEnv, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return api.client.request(method, url, headers=headers, json=body)


@pytest.fixture
def revoked(api: ApiEnv) -> Iterator[dict[str, str]]:
    """A revoked admin key and a revoked run key."""
    keys = {}
    for scope in ("admin", "run"):
        record, clear = api.ws.keys.create(f"revoked {scope}", scope)
        api.ws.keys.revoke(record.id)
        keys[scope] = clear
    yield keys


def bad_credentials(api: ApiEnv, revoked: dict[str, str]) -> dict[str, dict[str, str]]:
    return {
        "no header": {},
        "Bearer and nothing": {"Authorization": "Bearer"},
        "Bearer and a space": {"Authorization": "Bearer "},
        "Basic": {"Authorization": "Basic xyz"},
        "Basic with a valid key": {"Authorization": f"Basic {api.admin_key}"},
        "two tokens": {"Authorization": "Bearer a b"},
        "key without a scheme": {"Authorization": api.admin_key},
        "not a key": {"Authorization": "Bearer sk-not-an-llmkit-key"},
        "unknown key": bearer(unknown_key()),
        "revoked admin key": bearer(revoked["admin"]),
        "revoked run key": bearer(revoked["run"]),
    }


def test_the_route_walk_covers_the_known_routes(api: ApiEnv) -> None:
    urls = {(method, url) for method, url in route_calls(api)}
    for expected in (
        ("GET", "/v1/models"),
        ("GET", "/v1/ui/prompts"),
        ("POST", "/v1/ui/prompts"),
        ("GET", "/v1/ui/prompts/hello"),
        ("PUT", "/v1/ui/prompts/hello"),
        ("DELETE", "/v1/ui/prompts/hello"),
        ("GET", "/v1/ui/prompts/hello/versions"),
        ("GET", "/v1/ui/prompts/hello/versions/1"),
        ("PUT", "/v1/ui/prompts/hello/set-version/1"),
        ("GET", "/v1/ui/prompts/hello/diff"),
        ("GET", "/v1/ui/settings/api-keys"),
        ("POST", "/v1/ui/settings/api-keys"),
        ("DELETE", f"/v1/ui/settings/api-keys/{api.run_key_id}"),
    ):
        assert expected in urls, expected
    assert not any(url in PUBLIC_PATHS for _, url in urls)
    # Whatever route modules are installed, the walk sees every route the API documents.
    walked = {getattr(r, "path_format", None) or getattr(r, "path", None) for r in app_routes(api)}
    documented = set(api.client.get("/openapi.json").json()["paths"])
    assert documented <= walked, documented - walked


def refusal_problem(
    response: httpx.Response, method: str, status: int, error_type: str
) -> str | None:
    """What is wrong with `response` as a refusal, or None: another status, or (but for HEAD,
    which has no body) an error of another type."""
    if response.status_code != status:
        return f"{response.status_code} {response.text[:200]}"
    if method != "HEAD" and response.json()["error"]["type"] != error_type:
        return response.text
    return None


def test_every_route_but_the_public_ones_refuses_bad_credentials_with_401(
    api: ApiEnv, revoked: dict[str, str]
) -> None:
    state = repo_state(api.repo)
    failures = []
    for method, url in route_calls(api):
        for label, headers in bad_credentials(api, revoked).items():
            response = send(api, method, url, headers)
            problem = refusal_problem(response, method, 401, "authentication_error")
            if problem:
                failures.append(f"{method} {url} with {label}: {problem}")
    assert failures == []
    assert repo_state(api.repo) == state
    assert (
        api.ws.keys.get(api.run_key_id).revoked_at is None
    )  # DELETE with a bad key revoked nothing


def test_every_ui_route_refuses_a_run_key_with_403(api: ApiEnv) -> None:
    state = repo_state(api.repo)
    ui_calls = [(m, u) for m, u in route_calls(api) if u.startswith("/v1/ui/")]
    assert len(ui_calls) >= 10
    failures = []
    for method, url in ui_calls:
        problem = refusal_problem(send(api, method, url, api.run), method, 403, "permission_error")
        if problem:
            failures.append(f"{method} {url}: {problem}")
    assert failures == []
    assert repo_state(api.repo) == state
    assert api.ws.keys.get(api.run_key_id).revoked_at is None


def test_the_run_key_may_list_models_and_the_admin_key_reaches_every_read(api: ApiEnv) -> None:
    models = api.get("/v1/models", headers=api.run)
    assert models.status_code == 200
    assert {m["id"] for m in models.json()["data"]} == {"hello", "support/triage"}
    for method, url in route_calls(api):
        if method == "GET":
            response = send(api, method, url, api.admin)
            assert response.status_code not in (401, 403), (url, response.text)


def test_public_routes_need_no_key(api: ApiEnv) -> None:
    assert api.client.get("/v1/").json()["name"] == "llmkit"
    assert api.client.get("/healthz").json()["status"] == "ok"
    assert api.client.get("/openapi.json").status_code == 200
    assert api.client.get("/docs").status_code == 200


def test_keys_are_never_stored_logged_or_listed_in_clear(
    api: ApiEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = api.post("/v1/ui/settings/api-keys", json={"name": "from the api", "scope": "run"})
    assert created.status_code == 201
    api_key = created.json()["key"]
    assert api_key.startswith("llmkit_") and created.json()["prefix"] == api_key[:12]
    _, admin_two = api.ws.keys.create("second admin", "admin")
    clear_keys = [api.admin_key, api.run_key, api_key, admin_two]

    bodies: list[bytes] = []
    for headers in (api.admin, api.run, bearer(api_key), bearer(admin_two)):
        bodies.append(api.get("/v1/models", headers=headers).content)
        bodies.append(api.get("/v1/ui/prompts", headers=headers).content)
    bodies.append(api.delete(f"/v1/ui/settings/api-keys/{created.json()['id']}").content)
    bodies.append(api.get("/v1/models", headers=bearer(api_key)).content)  # revoked now: 401
    bodies.append(api.get("/v1/models", headers={"Authorization": f"Basic {api.run_key}"}).content)
    bodies.append(api.get("/v1/ui/prompts", headers=bearer(api.run_key + "x")).content)
    listing = api.get("/v1/ui/settings/api-keys", params={"include_revoked": "true"})
    assert listing.status_code == 200 and len(listing.json()) == 4
    assert all("key" not in item and "digest" not in item for item in listing.json())
    bodies.append(listing.content)
    api.ws.keys.flush()

    data_dir = api.ws.settings.data_dir
    stored = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.name.startswith("llmkit.db")}
    assert {"llmkit.db", "llmkit.db-wal"} <= set(stored)
    logged = caplog.text + "".join(repr(r.args) + r.getMessage() for r in caplog.records)
    listed = repr(api.ws.keys.list())
    for clear in clear_keys:
        secret_part = clear[12:]  # what the display prefix does not show
        for name, raw in stored.items():
            assert clear.encode() not in raw and secret_part.encode() not in raw, name
        assert secret_part not in logged
        assert secret_part not in listed
        assert not any(secret_part.encode() in body for body in bodies)


ODD_KEYS = [
    "../x",
    "%2e%2e/x",
    "/etc/passwd",
    ".git/config",
    "a@b",
    "",
    "x" * 300,
    "a\x00b",
    "123",
    "prompts/../../x",
    "a/./b",
    "a//b",
    "a\\b",
    ".hidden",
    "a/.git/config",
    "x" * 201,
    "a b",
    "a/",
]

ODD_URL_IDS = [
    "..%2Fx",
    "%2e%2e/x",
    "%2e%2e",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    ".git/config",
    ".git%2Fconfig",
    "a@b",
    "a%40b",
    "%00",
    "a%00b",
    "x" * 300,
    "a/../../../etc/passwd",
    "a%5Cb",
    "-x",
]


@pytest.mark.parametrize("key", ODD_KEYS)
def test_creating_an_odd_key_is_400_and_changes_nothing(
    api: ApiEnv, tmp_path: Path, key: str
) -> None:
    before = repo_state(api.repo, around=tmp_path)
    response = api.post("/v1/ui/prompts", json={"key": key, "system": "pwned"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "key"
    assert repo_state(api.repo, around=tmp_path) == before


def test_odd_ids_in_urls_are_400_or_404_and_change_nothing(api: ApiEnv, tmp_path: Path) -> None:
    before = repo_state(api.repo, around=tmp_path)
    failures = []
    for ident in ODD_URL_IDS:
        for method, url, body in (
            ("GET", f"/v1/ui/prompts/{ident}", None),
            ("PUT", f"/v1/ui/prompts/{ident}", {"system": "pwned"}),
            ("DELETE", f"/v1/ui/prompts/{ident}", None),
            ("GET", f"/v1/ui/prompts/{ident}/versions", None),
            ("GET", f"/v1/ui/prompts/{ident}/versions/1", None),
            ("PUT", f"/v1/ui/prompts/{ident}/set-version/1", {}),
            ("GET", f"/v1/ui/prompts/{ident}/diff?from=1", None),
            ("GET", f"/v1/ui/prompts/hello/versions/{ident}", None),
            ("PUT", f"/v1/ui/prompts/hello/set-version/{ident}", {}),
            ("GET", f"/v1/ui/prompts/hello/diff?from={ident}", None),
        ):
            response = api.request(method, url, json=body)
            if response.status_code not in (400, 404):
                failures.append(f"{method} {url}: {response.status_code} {response.text[:200]}")
    assert failures == []
    assert repo_state(api.repo, around=tmp_path) == before


def test_git_options_in_version_specs_are_not_passed_to_git(api: ApiEnv, tmp_path: Path) -> None:
    before = repo_state(api.repo, around=tmp_path)
    for spec in (
        "--output=leak.txt",
        "--all",
        "-h",
        "HEAD:prompts/hello.md",
        "main..HEAD",
        "@{-1}",
    ):
        response = api.get("/v1/ui/prompts/hello/diff", params={"from": spec})
        assert response.status_code in (400, 404), (spec, response.text)
        response = api.get(f"/v1/ui/prompts/hello/versions/{spec}")
        assert response.status_code in (400, 404), (spec, response.text)
    assert repo_state(api.repo, around=tmp_path) == before
    assert not (api.repo / "leak.txt").exists()


def test_huge_integer_ids_are_not_server_errors(api: ApiEnv) -> None:
    huge = "9" * 30
    for value in (huge, "abc"):
        response = api.delete(f"/v1/ui/settings/api-keys/{value}")
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "key_id"


def test_huge_prompt_ids_and_version_numbers_are_404(api: ApiEnv) -> None:
    huge = "9" * 30
    for url in (
        f"/v1/ui/prompts/{huge}",
        f"/v1/ui/prompts/hello/versions/{huge}",
        f"/v1/ui/prompts/hello/diff?from={huge}",
    ):
        assert api.get(url).status_code == 404, url


def index_snapshot(ws: Workspace) -> tuple[object, ...]:
    """Every index row, and what the public reads return, for comparing before and after a
    rebuild."""
    conn = ws.db.reader()
    rows = {
        table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
        for table in INDEX_TABLES
    }
    tables = {table: [tuple(r) for r in found] for table, found in rows.items()}
    prompts = [
        (p.id, p.key, p.present, astuple(p.version) if p.version else None)
        for p in ws.index.list_prompts(include_deleted=True)
    ]
    versions = {p[1]: [astuple(v) for v in ws.index.versions(p[1])] for p in prompts}
    return tables, prompts, versions


def test_concurrent_puts_from_one_base_let_exactly_one_win(api: ApiEnv) -> None:
    base = api.head()
    count = api.commit_count()
    writers = 32
    start = threading.Barrier(writers, timeout=30)

    def put(n: int) -> httpx.Response:
        start.wait()
        return api.put(
            "/v1/ui/prompts/hello",
            json={"system": f"Writer {n} was here.", "message": f"writer {n}"},
            headers={**api.admin, "If-Match": base},
        )

    with ThreadPoolExecutor(max_workers=writers) as pool:
        responses = list(pool.map(put, range(writers)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * (writers - 1), statuses
    winner = next(r for r in responses if r.status_code == 200).json()

    assert api.commit_count() == count + 1
    assert git(api.repo, "rev-parse", "HEAD^") == base
    fsck = git(api.repo, "fsck", "--no-progress", "--strict")
    assert not re.search(r"^(error|missing|broken|bad)", fsck, re.MULTILINE), fsck
    assert git(api.repo, "status", "--porcelain") == ""
    on_disk = (api.repo / "prompts/hello.md").read_text()
    assert winner["system"] in on_disk
    assert git(api.repo, "show", "HEAD:prompts/hello.md") + "\n" == on_disk
    served = api.get("/v1/ui/prompts/hello").json()
    assert served["sha"] == api.head() == winner["sha"] and served["version_number"] == 2

    before = index_snapshot(api.ws)
    api.ws.index.rebuild()
    assert index_snapshot(api.ws) == before


def test_concurrent_creates_of_one_key_let_exactly_one_win(api: ApiEnv) -> None:
    writers = 8
    start = threading.Barrier(writers, timeout=30)
    count = api.commit_count()

    def create(n: int) -> int:
        start.wait()
        return api.post(
            "/v1/ui/prompts", json={"key": "race", "system": f"Creator {n}."}
        ).status_code

    with ThreadPoolExecutor(max_workers=writers) as pool:
        statuses = sorted(pool.map(create, range(writers)))
    assert statuses == [201] + [409] * (writers - 1)
    assert api.commit_count() == count + 1
    assert git(api.repo, "status", "--porcelain") == ""


def test_unknown_route_wrong_method_and_validation_errors(api: ApiEnv) -> None:
    unknown = api.get("/v1/ui/nothing-here")
    assert unknown.status_code == 404
    assert "/v1/ui/nothing-here" in unknown.json()["error"]["message"]
    assert api.client.get("/nowhere").status_code == 404

    wrong = api.request("PATCH", "/v1/ui/prompts")
    assert wrong.status_code == 405 and "GET" in wrong.headers["allow"]
    assert api.request("POST", "/v1/models", headers=api.run).status_code == 405

    cases = [
        ({"key": "x", "system": "s", "colour": "red"}, "colour"),
        ({"key": "x", "system": "s", "temperature": "hot"}, "temperature"),
        ({"key": "x", "messages": [{"role": "robot", "content": "hi"}]}, "messages"),
        ([1, 2], "body"),
    ]
    for body, param in cases:
        response = api.post("/v1/ui/prompts", json=body)
        assert response.status_code == 422, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_error" and param in error["param"], error
    not_json = api.post(
        "/v1/ui/prompts",
        content=b'{"key": ',
        headers={**api.admin, "content-type": "application/json"},
    )
    assert not_json.status_code == 422
    assert (
        not_json.json()["error"]["param"] == "body"
        and "JSON" in not_json.json()["error"]["message"]
    )
    bad_scope = api.post("/v1/ui/settings/api-keys", json={"name": "x", "scope": "root"})
    assert bad_scope.status_code == 422


def test_a_body_over_the_limit_is_413_with_or_without_a_content_length(
    make_api: MakeApi, tmp_path: Path
) -> None:
    env = make_api(max_body_bytes=2000)
    before = repo_state(env.repo)
    big = ('{"key": "big", "system": "' + "x" * 5000 + '"}').encode()
    headers = {**env.admin, "content-type": "application/json"}

    declared = env.post("/v1/ui/prompts", content=big, headers=headers)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 700):
            yield big[start : start + 700]

    chunked = env.post("/v1/ui/prompts", content=chunks(), headers=headers)
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413, chunked.text
    assert chunked.json()["error"]["code"] == "payload_too_large"
    without_key = env.client.post(
        "/v1/ui/prompts", content=chunks(), headers={"content-type": "application/json"}
    )
    assert without_key.status_code == 413
    assert repo_state(env.repo) == before

    small = b'{"key": "small", "system": "fits"}'

    def small_chunks() -> Iterator[bytes]:
        yield small[:10]
        yield small[10:]

    fits = env.post("/v1/ui/prompts", content=small_chunks(), headers=headers)
    assert fits.status_code == 201, fits.text
    assert (env.repo / "prompts/small.md").exists()


def test_every_error_response_has_one_shape(api: ApiEnv, revoked: dict[str, str]) -> None:
    """Runs last in this module: it checks every error response the API tests have seen so far,
    plus one of each kind made here."""
    own_start = len(SEEN_ERRORS)
    api.client.get("/v1/ui/prompts")  # 401
    api.get("/v1/ui/prompts", headers=bearer(revoked["admin"]))  # 401
    api.get("/v1/ui/prompts", headers=api.run)  # 403
    api.get("/v1/ui/prompts/nothing")  # 404
    api.get("/v1/no/route")  # 404
    api.request("PATCH", "/v1/ui/prompts/hello")  # 405
    api.post("/v1/ui/prompts", json={"key": "../x", "system": "x"})  # 400
    api.post("/v1/ui/prompts", json={"key": "hello", "system": "x"})  # 409
    api.post("/v1/ui/prompts", json={"key": 5})  # 422
    api.post("/v1/ui/prompts", content=b"x" * (api.ws.settings.max_body_bytes + 1))  # 413
    own = SEEN_ERRORS[own_start:]
    assert sorted({e.status for e in own}) == [400, 401, 403, 404, 405, 409, 413, 422]

    problems = [p for p in map(error_shape_problem, list(SEEN_ERRORS)) if p]
    assert problems == []


def test_a_deleted_key_leaves_the_list_stops_working_at_once_and_stays_on_record(
    api: ApiEnv,
) -> None:
    created = api.post("/v1/ui/settings/api-keys", json={"name": "ui key"}).json()
    listed = [k["id"] for k in api.get("/v1/ui/settings/api-keys").json()]
    assert listed == [api.admin_key_id, api.run_key_id, created["id"]]
    assert api.get("/v1/models", headers=bearer(created["key"])).status_code == 200
    deleted = api.delete(f"/v1/ui/settings/api-keys/{created['id']}")
    assert deleted.status_code == 200 and deleted.json()["revoked_at"]
    assert api.get("/v1/models", headers=bearer(created["key"])).status_code == 401
    after = api.get("/v1/ui/settings/api-keys").json()
    assert [k["id"] for k in after] == [api.admin_key_id, api.run_key_id]
    everything = api.get("/v1/ui/settings/api-keys", params={"include_revoked": "true"}).json()
    [kept] = [k for k in everything if k["id"] == created["id"]]
    assert kept["revoked_at"] == deleted.json()["revoked_at"]
    # deleting it again changes nothing; an unknown id is a 404 naming it
    again = api.delete(f"/v1/ui/settings/api-keys/{created['id']}")
    assert again.status_code == 200 and again.json()["revoked_at"] == kept["revoked_at"]
    missing = api.delete("/v1/ui/settings/api-keys/9999")
    assert missing.status_code == 404 and "9999" in missing.json()["error"]["message"]
    bad = api.get("/v1/ui/settings/api-keys", params={"include_revoked": "maybe"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "include_revoked"
