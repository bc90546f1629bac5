"""Browser sessions as stored: digests only, idle and absolute expiry on a clock the tests move,
ending with their key, the admin's list and revoke (API and CLI), and the bound on sign-in
attempts per client address. The store's tests run on each durable backend (SQLite and
PostgreSQL, see tests/pg.py)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmkit.db import DurableStore, open_durable
from llmkit.errors import Forbidden, LlmkitError, NotFound, RateLimited, Unauthorized
from llmkit.keys import ApiKey, KeyStore
from llmkit.sessions import LoginLimiter, SessionStore, csrf_token_for, digest_of
from tests.helpers import FakeClock, Repo, invoke, opened_workspace

IDLE_S = 100.0
ABSOLUTE_S = 1000.0


@pytest.fixture
def db(durable_db: DurableStore) -> DurableStore:
    return durable_db


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def keys(db: DurableStore) -> KeyStore:
    return KeyStore(db)


@pytest.fixture
def sessions(db: DurableStore, clock: FakeClock) -> SessionStore:
    return SessionStore(db, idle_s=IDLE_S, absolute_s=ABSOLUTE_S, clock=clock)


@pytest.fixture
def admin(keys: KeyStore) -> ApiKey:
    return keys.create("ops", "admin")[0]


def refusal(store: SessionStore, token: str) -> LlmkitError:
    with pytest.raises(Unauthorized) as caught:
        store.verify(token)
    assert caught.value.code == "invalid_session"
    return caught.value


def test_a_session_is_stored_only_as_its_digest(
    sessions: SessionStore, admin: ApiKey, db: DurableStore
) -> None:
    signed_in, token = sessions.create(admin, client="10.0.0.7", user_agent="x" * 500)
    assert len(token) >= 43  # 32 random bytes, url-safe base64
    rows = db.reader().execute("SELECT * FROM sessions").fetchall()
    assert len(rows) == 1
    stored = json.dumps([list(row) for row in rows])
    assert token not in stored and csrf_token_for(token) not in stored
    assert rows[0]["digest"] == digest_of(token)
    assert sessions.verify(token).key.id == admin.id
    assert signed_in.session.client == "10.0.0.7"
    assert signed_in.session.user_agent == "x" * 200  # capped
    other = sessions.create(admin)[1]
    assert other != token and csrf_token_for(other) != csrf_token_for(token)


def test_only_an_admin_key_can_sign_in(sessions: SessionStore, keys: KeyStore) -> None:
    run, _ = keys.create("app", "run")
    with pytest.raises(Forbidden, match=r"Only an admin key can sign in; .* scope 'run'"):
        sessions.create(run)
    assert sessions.list() == []


def test_an_unused_session_ends_after_the_idle_lifetime(
    sessions: SessionStore, admin: ApiKey, clock: FakeClock
) -> None:
    _, token = sessions.create(admin)
    clock.advance(IDLE_S / 2)
    sessions.verify(token)  # a use: the idle lifetime starts again from here
    clock.advance(IDLE_S * 0.9)
    assert sessions.verify(token).key.id == admin.id
    clock.advance(IDLE_S)
    assert "unused for more than 100 s" in refusal(sessions, token).message
    assert sessions.list() == []


def test_a_busy_session_still_ends_after_the_absolute_lifetime(
    sessions: SessionStore, admin: ApiKey, clock: FakeClock
) -> None:
    signed_in_at = clock.now
    _, token = sessions.create(admin)
    while clock.now + IDLE_S / 2 < signed_in_at + ABSOLUTE_S:
        clock.advance(IDLE_S / 2)
        sessions.verify(token)  # used every half idle lifetime: never idle
    clock.advance(IDLE_S / 2)
    assert clock.now == signed_in_at + ABSOLUTE_S
    assert "signed in more than 1000 s ago" in refusal(sessions, token).message


def test_use_is_written_at_most_once_per_touch_interval(
    sessions: SessionStore, admin: ApiKey, clock: FakeClock, db: DurableStore
) -> None:
    _, token = sessions.create(admin)

    def last_seen() -> float:
        return float(db.reader().execute("SELECT last_seen_at FROM sessions").fetchone()[0])

    first = last_seen()
    for _ in range(5):
        clock.advance(1)  # under a tenth of the idle lifetime: no write
        sessions.verify(token)
    assert last_seen() == first
    clock.advance(IDLE_S / 10)
    sessions.verify(token)
    assert last_seen() == clock.now


def test_revoking_or_deleting_the_key_ends_its_sessions(
    sessions: SessionStore, keys: KeyStore, admin: ApiKey, durable_url: str
) -> None:
    _, token = sessions.create(admin)
    keys.revoke(admin.id)
    assert f"the key it was signed in with ({admin.prefix}…) was revoked" in (
        refusal(sessions, token).message
    )
    assert sessions.list() == []

    # Revoked or deleted by another process, by hand: the lookup joins the key.
    second, _ = keys.create("second", "admin")
    _, token = sessions.create(second)
    other = open_durable(durable_url)
    try:
        other.execute_write(
            "UPDATE api_keys SET revoked_at = '2030-01-01' WHERE id = ?", (second.id,)
        )
        assert "was revoked" in refusal(sessions, token).message
        third, _ = keys.create("third", "admin")
        _, token = sessions.create(third)
        other.execute_write("DELETE FROM api_keys WHERE id = ?", (third.id,))
        # The key's sessions went with it (ON DELETE CASCADE), not merely out of the join.
        count = other.reader().execute(
            "SELECT COUNT(*) FROM sessions WHERE key_id = ?", (third.id,)
        )
        assert count.fetchone()[0] == 0
    finally:
        other.close()
    assert "unknown or was signed out" in refusal(sessions, token).message


def test_sign_out_list_and_revoke(sessions: SessionStore, admin: ApiKey) -> None:
    a, token_a = sessions.create(admin, client="10.0.0.1")
    b, token_b = sessions.create(admin, client="10.0.0.2")
    assert [s.id for s in sessions.list()] == [a.session.id, b.session.id]
    assert sessions.sign_out(token_a) is True
    assert sessions.sign_out(token_a) is False
    refusal(sessions, token_a)
    assert sessions.revoke(b.session.id).client == "10.0.0.2"
    refusal(sessions, token_b)
    with pytest.raises(NotFound, match="No session with id 999"):
        sessions.revoke(999)
    assert sessions.list() == []


def test_ended_sessions_are_deleted_at_the_next_sign_in(
    sessions: SessionStore, admin: ApiKey, clock: FakeClock, db: DurableStore
) -> None:
    for _ in range(3):
        sessions.create(admin)
    clock.advance(IDLE_S)
    sessions.create(admin)
    assert db.reader().execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 1


def test_unknown_and_odd_tokens_are_refused(sessions: SessionStore, admin: ApiKey) -> None:
    _, token = sessions.create(admin)
    for odd in ("", "x", token + "x", token.upper(), "\udc80" * 10, "é" * 5000):
        refusal(sessions, odd)


# -- the bound on sign-in attempts -----------------------------------------------------------


def test_sign_in_attempts_are_bounded_per_client_within_the_window() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(3, 60.0, clock=clock)
    for _ in range(3):
        limiter.attempt("10.0.0.1")
    with pytest.raises(RateLimited) as caught:
        limiter.attempt("10.0.0.1")
    assert caught.value.code == "too_many_login_attempts"
    assert caught.value.headers == {"Retry-After": "60"}
    assert "Too many sign-in attempts from 10.0.0.1: 3 within 1 min" in caught.value.message
    limiter.attempt("10.0.0.2")  # another address has its own count
    clock.advance(59)
    with pytest.raises(RateLimited) as caught:
        limiter.attempt("10.0.0.1")
    assert caught.value.headers == {"Retry-After": "1"}
    clock.advance(1)
    limiter.attempt("10.0.0.1")  # the oldest attempt has left the window


def test_concurrent_attempts_are_bounded_too() -> None:
    limiter = LoginLimiter(10, 60.0, clock=FakeClock())
    barrier = threading.Barrier(40)

    def attempt() -> bool:
        barrier.wait(timeout=30)
        try:
            limiter.attempt("10.0.0.1")
        except RateLimited:
            return False
        return True

    with ThreadPoolExecutor(40) as pool:
        allowed = list(pool.map(lambda _: attempt(), range(40)))
    assert allowed.count(True) == 10


def test_a_successful_sign_in_forgets_the_address_and_memory_is_bounded() -> None:
    limiter = LoginLimiter(2, 60.0, max_clients=100, clock=FakeClock())
    limiter.attempt("10.0.0.1")
    limiter.succeeded("10.0.0.1")
    limiter.attempt("10.0.0.1")
    limiter.attempt("10.0.0.1")
    for n in range(500):
        limiter.attempt(f"10.1.{n // 256}.{n % 256}")
    assert len(limiter._seen) == 100
    limiter.attempt("10.0.0.1")  # forgotten, oldest first: its count started again


# -- the admin's commands ---------------------------------------------------------------------


def test_llmkit_sessions_list_and_revoke(repo: Repo) -> None:
    with opened_workspace(repo.root) as ws:
        admin, _ = ws.keys.create("ops", "admin")
        settings = ws.settings
        store = SessionStore(
            ws.durable, idle_s=settings.session_idle_s, absolute_s=settings.session_absolute_s
        )
        signed_in, token = store.create(admin, client="10.0.0.9")

    listed = invoke("sessions", "list", "--repo", repo.root, "--json")
    assert listed.exit_code == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["key_name"], r["client"]) for r in rows] == [
        (signed_in.session.id, "ops", "10.0.0.9")
    ]
    assert token not in listed.stdout
    table = invoke("sessions", "list", "--repo", repo.root)
    assert "10.0.0.9" in table.stdout and "ops" in table.stdout

    revoked = invoke("sessions", "revoke", str(signed_in.session.id), "--repo", repo.root)
    assert revoked.exit_code == 0, revoked.stderr
    assert f"Ended session {signed_in.session.id}" in revoked.stderr
    empty = invoke("sessions", "list", "--repo", repo.root)
    assert empty.exit_code == 0 and "No one is signed in" in empty.stderr
    missing = invoke("sessions", "revoke", "999", "--repo", repo.root)
    assert missing.exit_code != 0 and "No session with id 999" in missing.stderr


def test_session_ids_are_never_reused(sessions: SessionStore, admin: ApiKey) -> None:
    first, token = sessions.create(admin)
    sessions.sign_out(token)
    second, _ = sessions.create(admin)
    assert second.session.id > first.session.id
