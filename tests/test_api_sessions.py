"""Signing in from a browser over HTTP: the cookie's flags, sign-in by JSON, form and bearer
header, the bound on attempts, who is signed in, CSRF on cookie-authenticated writes, bearer
keys beside cookies, signing out, ending with the key, expiry, the admin's session routes, every
/v1/ui route walked with each kind of caller, and no token ever stored or logged in clear."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from llmkit.sessions import CSRF_COOKIE, SESSION_COOKIE, SessionStore, csrf_token_for
from tests.api_fixtures import ApiEnv, MakeApi, app_routes, bearer, running_api
from tests.helpers import FakeClock, init_repo

ORIGIN = "http://testserver"
LOGIN = "/v1/ui/auth/login"
ME = "/v1/ui/auth/me"
LOGOUT = "/v1/ui/auth/logout"
ECHO_PROMPT = """\
---
model: echo
---
<!-- role:user -->
Hello {{ name }}
"""


@dataclass(frozen=True)
class Browser:
    """A signed-in browser: its session token (the cookie) and the session's CSRF token."""

    token: str
    csrf: str

    @property
    def cookie(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.token}"}

    @property
    def writes(self) -> dict[str, str]:
        """What a page of ours sends with a write: the cookie, the CSRF token, its origin."""
        return {**self.cookie, "X-CSRF-Token": self.csrf, "Origin": ORIGIN}


def sign_in(api: ApiEnv, client: TestClient | None = None, **kwargs: Any) -> Browser:
    client = client or api.client
    kwargs.setdefault("json", {"key": api.admin_key})
    response = client.post(LOGIN, **kwargs)
    assert response.status_code == 200, response.text
    token = response.cookies[SESSION_COOKIE]
    # The tests send cookies explicitly, so that no request carries one by accident.
    client.cookies.clear()
    assert response.json()["csrf_token"] == response.cookies[CSRF_COOKIE] == csrf_token_for(token)
    return Browser(token, response.json()["csrf_token"])


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Cookie name -> its whole Set-Cookie header."""
    return {h.split("=", 1)[0]: h for h in response.headers.get_list("set-cookie")}


def flags(header: str) -> set[str]:
    return {part.strip().lower() for part in header.split(";")[1:]}


# -- signing in ------------------------------------------------------------------------------


def test_the_session_cookie_is_httponly_samesite_strict_path_root_and_not_secure_over_http(
    api: ApiEnv,
) -> None:
    response = api.client.post(LOGIN, json={"key": api.admin_key})
    api.client.cookies.clear()
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    cookies = set_cookies(response)
    assert flags(cookies[SESSION_COOKIE]) == {
        "httponly",
        "samesite=strict",
        "path=/",
        "max-age=43200",
    }
    # The CSRF cookie is for the page's script to read: not HttpOnly, otherwise the same.
    assert flags(cookies[CSRF_COOKIE]) == {"samesite=strict", "path=/", "max-age=43200"}
    body = response.json()
    assert body["key_id"] == api.admin_key_id and body["scope"] == "admin"
    assert body["via"] == "session" and body["session_id"] >= 1


def test_the_cookies_are_secure_over_https(api: ApiEnv) -> None:
    https = TestClient(api.app, base_url="https://testserver")
    response = https.post(LOGIN, json={"key": api.admin_key})
    assert response.status_code == 200, response.text
    for header in set_cookies(response).values():
        assert "secure" in flags(header), header
    # Signing out over https clears them with the same attributes.
    browser = Browser(response.cookies[SESSION_COOKIE], response.json()["csrf_token"])
    https.cookies.clear()
    out = https.post(LOGOUT, headers={**browser.writes, "Origin": "https://testserver"})
    assert out.status_code == 200, out.text
    for header in set_cookies(out).values():
        assert {"secure", "httponly"} & flags(header) and "max-age=0" in flags(header), header


def test_x_forwarded_proto_is_believed_only_from_a_trusted_proxy(
    api: ApiEnv, make_api: MakeApi
) -> None:
    forwarded = {"X-Forwarded-Proto": "https"}
    untrusted = TestClient(api.app, client=("10.1.2.3", 40000))
    response = untrusted.post(LOGIN, json={"key": api.admin_key}, headers=forwarded)
    assert "secure" not in flags(set_cookies(response)[SESSION_COOKIE])

    behind = make_api(trusted_proxies="10.0.0.0/8, 192.0.2.1")
    proxy = TestClient(behind.app, client=("10.1.2.3", 40000))
    response = proxy.post(LOGIN, json={"key": behind.admin_key}, headers=forwarded)
    assert "secure" in flags(set_cookies(response)[SESSION_COOKIE])
    # The proxy next to llmkit sets the last value; an earlier one is the client's word.
    response = proxy.post(
        LOGIN, json={"key": behind.admin_key}, headers={"X-Forwarded-Proto": "https, http"}
    )
    assert "secure" not in flags(set_cookies(response)[SESSION_COOKIE])
    stranger = TestClient(behind.app, client=("203.0.113.5", 40000))
    response = stranger.post(LOGIN, json={"key": behind.admin_key}, headers=forwarded)
    assert "secure" not in flags(set_cookies(response)[SESSION_COOKIE])


def test_a_bad_proxy_or_origin_setting_is_a_configuration_error(make_api: MakeApi) -> None:
    from llmkit.errors import ConfigError

    with pytest.raises(ConfigError, match="LLMKIT_TRUSTED_PROXIES.*'nonsense' is not an IP"):
        make_api(trusted_proxies="10.0.0.1,nonsense")
    with pytest.raises(ConfigError, match="LLMKIT_TRUSTED_ORIGINS.*'ui.example.com'"):
        make_api(trusted_origins="ui.example.com")


def test_sign_in_with_the_bearer_header_or_an_html_form(api: ApiEnv) -> None:
    by_header = api.client.post(LOGIN, headers=api.admin)
    assert by_header.status_code == 200 and SESSION_COOKIE in by_header.cookies
    api.client.cookies.clear()

    form = api.client.post(
        LOGIN,
        data={"key": api.admin_key, "next": "/prompts/hello"},
        headers={"Origin": ORIGIN},
        follow_redirects=False,
    )
    assert form.status_code == 303, form.text
    assert form.headers["location"] == "/prompts/hello"
    browser = Browser(form.cookies[SESSION_COOKIE], form.cookies[CSRF_COOKIE])
    api.client.cookies.clear()
    assert api.get(ME, headers=browser.cookie).json()["session_id"] is not None
    for elsewhere in ("//evil.example/x", "https://evil.example", "/\\evil.example", "x"):
        response = api.client.post(
            LOGIN, data={"key": api.admin_key, "next": elsewhere}, follow_redirects=False
        )
        assert response.headers["location"] == "/", elsewhere
        api.client.cookies.clear()


def test_a_wrong_key_a_run_key_or_no_key_signs_no_one_in(api: ApiEnv) -> None:
    revoked, revoked_key = api.ws.keys.create("old", "admin")
    api.ws.keys.revoke(revoked.id)
    for body, status, code, message in (
        ({"key": "llmkit_" + "x" * 32}, 401, "invalid_api_key", "Invalid API key"),
        ({"key": revoked_key}, 401, "invalid_api_key", "unknown or revoked"),
        ({"key": "not a key"}, 401, "invalid_api_key", "Invalid API key"),
        ({"key": api.run_key}, 403, "insufficient_scope", "Only an admin key can sign in"),
        ({}, 401, "missing_api_key", "Missing API key"),
        ({"key": 7}, 400, "bad_request", "key must be a string"),
        ({"key": api.admin_key, "password": "x"}, 400, "bad_request", "password"),
    ):
        response = api.client.post(LOGIN, json=body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == code and message in error["message"], (body, error)
        assert "set-cookie" not in response.headers
    assert "scope 'run'" in api.client.post(LOGIN, headers=api.run).json()["error"]["message"]
    assert api.get("/v1/ui/auth/sessions").json() == []


def test_signing_in_from_another_site_is_refused(api: ApiEnv, make_api: MakeApi) -> None:
    for headers in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/x"}):
        response = api.client.post(LOGIN, json={"key": api.admin_key}, headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "csrf_origin_mismatch"
        assert "set-cookie" not in response.headers
    ui = make_api(trusted_origins="http://localhost:3000")
    allowed = ui.client.post(
        LOGIN, json={"key": ui.admin_key}, headers={"Origin": "http://localhost:3000"}
    )
    assert allowed.status_code == 200, allowed.text


def test_sign_in_attempts_are_limited_per_client_address(make_api: MakeApi) -> None:
    api = make_api(login_attempts=3, trusted_proxies="10.0.0.1")
    wrong = {"key": "llmkit_" + "0" * 32}
    for _ in range(3):
        assert api.client.post(LOGIN, json=wrong).status_code == 401
    for body in (wrong, {"key": api.admin_key}):  # the right key too, once the bound is reached
        response = api.client.post(LOGIN, json=body)
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "too_many_login_attempts"
        assert "Too many sign-in attempts from testclient: 3 within 5 min" in response.text
        assert int(response.headers["retry-after"]) == 300
    # Bearer keys are not sign-ins: they keep working from that address.
    assert api.get("/v1/ui/prompts").status_code == 200

    # Behind the trusted proxy, each client behind it has its own count.
    proxy = TestClient(api.app, client=("10.0.0.1", 40000))
    for client in ("198.51.100.1", "198.51.100.2"):
        headers = {"X-Forwarded-For": f"1.2.3.4, {client}"}
        for _ in range(3):
            assert proxy.post(LOGIN, json=wrong, headers=headers).status_code == 401
        assert proxy.post(LOGIN, json=wrong, headers=headers).status_code == 429
    fresh = proxy.post(LOGIN, json={"key": api.admin_key}, headers={"X-Forwarded-For": "9.9.9.9"})
    assert fresh.status_code == 200
    listed = api.get("/v1/ui/auth/sessions").json()
    assert [s["client"] for s in listed] == ["9.9.9.9"]


# -- who is signed in, and signing out -------------------------------------------------------


def test_me_answers_who_is_signed_in_and_401_otherwise(api: ApiEnv) -> None:
    browser = sign_in(api)
    me = api.get(ME, headers=browser.cookie)
    assert me.status_code == 200
    body = me.json()
    assert body["key_name"] == "test admin" and body["scope"] == "admin"
    assert body["via"] == "session" and body["csrf_token"] == browser.csrf
    assert body["expires_at"] < body["absolute_expires_at"]
    assert me.headers["cache-control"] == "no-store"
    by_key = api.get(ME).json()
    assert by_key["via"] == "bearer" and by_key["session_id"] is None
    assert by_key["csrf_token"] is None
    for headers in ({}, {"Cookie": f"{SESSION_COOKIE}=forged"}):
        response = api.get(ME, headers=headers)
        assert response.status_code == 401, response.text
    assert api.get(ME, headers=api.run).status_code == 403


def test_logout_ends_the_session_and_clears_the_cookies(api: ApiEnv) -> None:
    browser = sign_in(api)
    other = sign_in(api)
    response = api.post(LOGOUT, headers=browser.writes)
    assert response.status_code == 200 and response.json() == {"signed_out": True}
    for header in set_cookies(response).values():
        assert "max-age=0" in flags(header), header
    gone = api.get(ME, headers=browser.cookie)
    assert gone.status_code == 401
    assert gone.json()["error"]["code"] == "invalid_session"
    assert "signed out" in gone.json()["error"]["message"]
    assert api.get(ME, headers=other.cookie).status_code == 200  # only that session ended

    form = api.post(
        LOGOUT,
        headers={**other.cookie, "Origin": ORIGIN},
        data={"csrf_token": other.csrf, "next": "/signed-out"},
        follow_redirects=False,
    )
    assert form.status_code == 303 and form.headers["location"] == "/signed-out"
    assert api.get(ME, headers=other.cookie).status_code == 401


def test_revoking_the_key_ends_its_sessions(api: ApiEnv) -> None:
    record, clear = api.ws.keys.create("ops", "admin")
    browser = sign_in(api, json={"key": clear})
    assert api.get("/v1/ui/prompts", headers=browser.cookie).status_code == 200
    assert api.delete(f"/v1/ui/settings/api-keys/{record.id}").status_code == 200
    response = api.get("/v1/ui/prompts", headers=browser.cookie)
    assert response.status_code == 401
    assert "was revoked" in response.json()["error"]["message"]


def test_an_admin_lists_and_revokes_sessions(api: ApiEnv) -> None:
    mine = sign_in(api)
    theirs = sign_in(api, headers={"User-Agent": "Their Browser"})
    listed = api.get("/v1/ui/auth/sessions", headers=mine.cookie)
    assert listed.status_code == 200
    sessions = listed.json()
    assert [s["user_agent"] for s in sessions] == ["testclient", "Their Browser"]
    assert mine.token not in listed.text and theirs.token not in listed.text
    their_id = sessions[1]["id"]
    refused = api.delete(f"/v1/ui/auth/sessions/{their_id}", headers=mine.cookie)
    assert refused.status_code == 403  # a write: the CSRF token is needed
    ended = api.delete(f"/v1/ui/auth/sessions/{their_id}", headers=mine.writes)
    assert ended.status_code == 200 and ended.json()["id"] == their_id
    assert api.get(ME, headers=theirs.cookie).status_code == 401
    assert api.get(ME, headers=mine.cookie).status_code == 200
    assert api.delete(f"/v1/ui/auth/sessions/{their_id}").status_code == 404
    assert api.delete("/v1/ui/auth/sessions/0").status_code == 400


def test_sessions_expire_when_idle_and_at_their_absolute_lifetime(api: ApiEnv) -> None:
    clock = FakeClock(1_800_000_000.0)
    api.app.state.sessions = SessionStore(api.ws.db, idle_s=600, absolute_s=3600, clock=clock)
    browser = sign_in(api)
    clock.advance(599)
    assert api.get("/v1/ui/prompts", headers=browser.cookie).status_code == 200
    clock.advance(600)
    idle = api.get("/v1/ui/prompts", headers=browser.cookie)
    assert idle.status_code == 401
    assert "unused for more than 10 min" in idle.json()["error"]["message"]

    browser = sign_in(api)
    for _ in range(11):
        clock.advance(300)
        assert api.get(ME, headers=browser.cookie).status_code == 200
    clock.advance(300)
    late = api.get(ME, headers=browser.cookie)
    assert late.status_code == 401
    assert "signed in more than 1 h ago" in late.json()["error"]["message"]


# -- CSRF --------------------------------------------------------------------------------------


def test_a_cookie_authenticated_write_needs_the_csrf_token_and_our_origin(
    api: ApiEnv, make_api: MakeApi
) -> None:
    browser = sign_in(api)
    other = sign_in(api)
    create = "/v1/ui/settings/api-keys"
    count = len(api.ws.keys.list())
    for headers, code, says in (
        ({**browser.cookie, "Origin": ORIGIN}, "csrf_token_missing", "Missing CSRF token"),
        ({**browser.writes, "X-CSRF-Token": "0" * 64}, "csrf_token_invalid", "Wrong CSRF token"),
        ({**browser.writes, "X-CSRF-Token": other.csrf}, "csrf_token_invalid", "Wrong CSRF"),
        ({**browser.cookie, "X-CSRF-Token": browser.csrf}, "csrf_origin_missing", "Origin or"),
        ({**browser.writes, "Origin": "https://evil.example"}, "csrf_origin_mismatch", "evil"),
        ({**browser.writes, "Origin": "null"}, "csrf_origin_mismatch", "'null'"),
        ({**browser.writes, "Origin": "https://testserver"}, "csrf_origin_mismatch", "https"),
    ):
        response = api.post(create, headers=headers, json={"name": "x"})
        assert response.status_code == 403, (headers, response.text)
        error = response.json()["error"]
        assert error["code"] == code and says in error["message"], error
        assert error["type"] == "permission_error"
    assert len(api.ws.keys.list()) == count  # nothing was written

    accepted = api.post(create, headers=browser.writes, json={"name": "from a browser"})
    assert accepted.status_code == 201, accepted.text
    referer = {**browser.cookie, "X-CSRF-Token": browser.csrf, "Referer": f"{ORIGIN}/keys"}
    assert api.post(create, headers=referer, json={"name": "by referer"}).status_code == 201
    # A form posts the token as a field.
    form = api.post(
        LOGOUT,
        headers={**other.cookie, "Origin": ORIGIN},
        data={"csrf_token": "wrong"},
        follow_redirects=False,
    )
    assert form.status_code == 403 and form.json()["error"]["code"] == "csrf_token_invalid"
    # A UI served from a trusted origin may write.
    ui = make_api(trusted_origins="http://localhost:3000")
    remote = sign_in(ui)
    headers = {**remote.writes, "Origin": "http://localhost:3000"}
    assert ui.post(create, headers=headers, json={"name": "ui"}).status_code == 201


def test_bearer_keys_need_no_csrf_token_and_win_over_a_cookie(api: ApiEnv) -> None:
    browser = sign_in(api)
    create = "/v1/ui/settings/api-keys"
    # An admin bearer key writes without a CSRF token or an origin, cookie or not.
    both = {**api.admin, **browser.cookie}
    assert api.post(create, headers=both, json={"name": "bearer"}).status_code == 201
    # With a run key beside an admin session, the run key decides: 403.
    with_run = api.get("/v1/ui/prompts", headers={**api.run, **browser.cookie})
    assert with_run.status_code == 403
    # A bad bearer key is not rescued by a good cookie.
    bad = api.get("/v1/ui/prompts", headers={**bearer("llmkit_" + "1" * 32), **browser.cookie})
    assert bad.status_code == 401
    assert api.get(ME, headers=both).json()["via"] == "bearer"


# -- every /v1/ui route ------------------------------------------------------------------------


# Routes a signature over the body authenticates instead of a key (tests/test_serve_ref.py).
SIGNED_ROUTES = {"/v1/ui/hooks/git"}


def ui_route_calls(api: ApiEnv) -> list[tuple[str, str]]:
    """(method, url) of every /v1/ui route the app has, read from the app itself, with path
    parameters filled in: a route added anywhere is walked here without a word."""
    # A write must not revoke the admin key the walk signs in with.
    values = {"prompt_id": "hello", "key_id": str(api.run_key_id)}
    calls = []
    for route in app_routes(api):
        path, methods = getattr(route, "path", ""), getattr(route, "methods", None)
        if not methods or not path.startswith("/v1/ui") or path in SIGNED_ROUTES:
            continue
        url = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values.get(m.group(1), "1"), path)
        calls.extend((method, url) for method in sorted(methods))
    return calls


def test_every_ui_route_refuses_anonymous_and_run_callers_and_guards_cookie_writes(
    api: ApiEnv,
) -> None:
    calls = ui_route_calls(api)
    for path in SIGNED_ROUTES:
        # Neither a key nor a session opens a signed route: unsigned, it is refused.
        for headers in ({}, api.admin):
            unsigned = api.client.post(path, headers=headers, json={})
            assert unsigned.status_code in (401, 404), (path, unsigned.text)
    assert ("GET", ME) in calls and ("POST", "/v1/ui/prompts") in calls and len(calls) >= 30
    problems = []
    for method, url in calls:
        anonymous = api.client.request(method, url, headers={}, json={})
        if anonymous.status_code != 401:
            problems.append(f"anonymous {method} {url}: {anonymous.status_code}")
        run = api.client.request(method, url, headers=api.run, json={})
        if run.status_code != 403:
            problems.append(f"run key {method} {url}: {run.status_code}")
    browser = sign_in(api)
    for method, url in calls:
        if (method, url) == ("POST", LOGIN):
            continue  # signing in takes a key, not a session
        if method == "GET":
            response = api.client.request(method, url, headers=browser.cookie)
            if response.status_code in (401, 403):
                problems.append(f"session {method} {url}: {response.status_code}")
            continue
        refused = api.client.request(method, url, headers=browser.cookie, json={})
        code = refused.json()["error"]["code"] if refused.status_code == 403 else None
        if code != "csrf_token_missing":
            problems.append(f"session without CSRF {method} {url}: {refused.status_code}")
        fresh = sign_in(api)  # the write may end the session (logout, a revoke)
        allowed = api.client.request(method, url, headers=fresh.writes, json={})
        if allowed.status_code in (401, 403):
            problems.append(f"session with CSRF {method} {url}: {allowed.text[:200]}")
    assert problems == [], "\n".join(problems)


# -- tokens in clear ---------------------------------------------------------------------------


def test_no_session_or_csrf_token_is_stored_or_logged_in_clear(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = init_repo(tmp_path / "repo", {"prompts/greet.md": ECHO_PROMPT}).root
    caplog.set_level(logging.DEBUG)
    with running_api(repo) as api:
        browser = sign_in(api)
        response = api.post(
            "/v1/ui/prompts/execute",
            headers=browser.writes,
            json={"model": "greet", "variables": {"name": "Ada"}},
        )
        assert response.status_code == 200, response.text
        assert "Hello Ada" in response.text
        assert api.get("/v1/ui/logs", headers=browser.cookie).status_code == 200
        logs = api.get("/v1/ui/logs").json()
        assert api.post(LOGOUT, headers=browser.writes).status_code == 200
    assert len(logs) == 1 and logs[0]["api_key_id"] == api.admin_key_id  # as its key
    secrets = [browser.token.encode(), browser.csrf.encode()]
    files = [p for p in (repo / ".llmkit").rglob("*") if p.is_file()]
    assert any(p.name == "llmkit.db" for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, path
    for secret in secrets:
        assert secret.decode() not in caplog.text
