"""Browser sessions: signing in with an admin key, for a browser that cannot keep a bearer key.

A session is a random token (256 bits) in an HttpOnly cookie; the database keeps only its
SHA-256 digest, in the `sessions` table of the keys' migration list (`llmkit.keys`), beside
the key it was signed in with, in the durable store (SQLite or PostgreSQL). It ends when:

- it is unused for `idle_s` (its `last_seen_at` is written at most once per `touch_s`, so a
  busy session costs one write a minute, not one a request, and may end up to `touch_s` early),
- `absolute_s` has passed since sign-in, however busy it was,
- it is signed out, or revoked by an admin,
- its key is revoked or deleted: the lookup joins the key, so this holds even for a revocation
  written by another process or by hand.

Each lookup reads the database (one indexed join), so every one of these is seen at once by
every process; a browser's requests are few, so nothing is cached.

The CSRF token is derived from the session token (an HMAC of a fixed label keyed by it), so it
is per session, stored nowhere, and useless without the cookie. `LoginLimiter` bounds the
sign-in attempts of each client address.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from llmkit.db import Connection, DurableStore
from llmkit.errors import Forbidden, NotFound, RateLimited, Unauthorized
from llmkit.keys import MIGRATIONS, ApiKey
from llmkit.runlog_rows import format_timestamp

SESSION_COOKIE = "llmkit_session"
CSRF_COOKIE = "llmkit_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
TOKEN_BYTES = 32
MAX_USER_AGENT = 200
# The longest `last_seen_at` may lag behind a session's use; a tenth of the idle lifetime when
# that is shorter, so the idle lifetime stays within 10% of what was configured.
TOUCH_S = 60.0

_CSRF_LABEL = b"llmkit csrf token"
_KEY_COLUMNS = "k.id, k.name, k.scope, k.prefix, k.created_at, k.last_used_at, k.revoked_at"
_SESSION_COLUMNS = "s.id, s.key_id, s.created_at, s.last_seen_at, s.client, s.user_agent"


INVALID_SESSION = "invalid_session"


def _ended(message: str) -> Unauthorized:
    """A session cookie that names no live session: unknown, signed out, expired, or its key
    revoked; the message says which."""
    return Unauthorized(message, code=INVALID_SESSION)


@dataclass(frozen=True)
class Session:
    id: int
    key_id: int
    key_name: str
    key_prefix: str
    scope: str
    created_at: str
    last_seen_at: str
    # When it ends if unused from now on (the idle lifetime), and at the latest (the absolute).
    expires_at: str
    absolute_expires_at: str
    client: str | None
    user_agent: str | None


Sessions = list[Session]


@dataclass(frozen=True)
class SignedIn:
    """What a lookup or a sign-in gives the API: the session, and the key it acts as."""

    session: Session
    key: ApiKey


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def csrf_token_for(token: str) -> str:
    """The session's CSRF token: what the browser must echo on every write."""
    mac = hmac.new(token.encode("utf-8", "surrogatepass"), _CSRF_LABEL, hashlib.sha256)
    return mac.hexdigest()


def csrf_matches(token: str, sent: str) -> bool:
    return hmac.compare_digest(csrf_token_for(token).encode(), sent.encode("utf-8", "replace"))


def _duration(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


class SessionStore:
    def __init__(
        self,
        db: DurableStore,
        *,
        idle_s: float,
        absolute_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self._touch_s = min(TOUCH_S, idle_s / 10)
        # Wall-clock seconds, as stored: sessions outlive the process.
        self.clock = clock
        db.migrate(MIGRATIONS)

    def create(
        self, key: ApiKey, *, client: str | None = None, user_agent: str | None = None
    ) -> tuple[SignedIn, str]:
        """A new session for an admin key; the token is returned here once, for the cookie.
        Sessions that have ended are deleted on the way."""
        if key.scope != "admin":
            raise Forbidden(
                f"Only an admin key can sign in; key {key.prefix}… has scope {key.scope!r}"
                " (a run key calls /v1/chat/completions with its bearer header)"
            )
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock()
        agent = user_agent[:MAX_USER_AGENT] if user_agent else None
        with self._db.write() as conn:
            self._delete_ended(conn, now)
            cur = conn.execute(
                "INSERT INTO sessions (digest, key_id, created_at, last_seen_at, client,"
                " user_agent) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (digest_of(token), key.id, now, now, client, agent),
            )
            session_id = int(cur.fetchone()[0])
        session = self._session(session_id, key, now, now, client, agent)
        return SignedIn(session, key), token

    def verify(self, token: str) -> SignedIn:
        """The live session of a cookie's token, or a 401 `invalid_session` saying why there
        is none."""
        row = (
            self._db.reader()
            .execute(
                f"SELECT {_SESSION_COLUMNS}, {_KEY_COLUMNS} FROM sessions s"
                " JOIN api_keys k ON k.id = s.key_id WHERE s.digest = ?",
                (digest_of(token),),
            )
            .fetchone()
        )
        if row is None:
            raise _ended("Not signed in: the session is unknown or was signed out")
        key = ApiKey(*row[6:])
        if key.revoked:
            raise _ended(
                f"Session ended: the key it was signed in with ({key.prefix}…) was revoked"
            )
        now = self.clock()
        created_at, last_seen_at = row["created_at"], row["last_seen_at"]
        if now - created_at >= self.absolute_s:
            raise _ended(
                f"Session expired: signed in more than {_duration(self.absolute_s)} ago;"
                " sign in again"
            )
        if now - last_seen_at >= self.idle_s:
            raise _ended(
                f"Session expired: unused for more than {_duration(self.idle_s)}; sign in again"
            )
        if now - last_seen_at >= self._touch_s:
            self._db.execute_write(
                "UPDATE sessions SET last_seen_at = ? WHERE id = ? AND last_seen_at < ?",
                (now, row["id"], now),
            )
            last_seen_at = now
        session = self._session(
            row["id"], key, created_at, last_seen_at, row["client"], row["user_agent"]
        )
        return SignedIn(session, key)

    def sign_out(self, token: str) -> bool:
        """End the session of a cookie's token; False when there was none."""
        with self._db.write() as conn:
            cur = conn.execute("DELETE FROM sessions WHERE digest = ?", (digest_of(token),))
        return cur.rowcount > 0

    def revoke(self, session_id: int) -> Session:
        """End a session by id (an admin's action); the session as it was."""
        session = self.get(session_id)
        with self._db.write() as conn:
            conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        return session

    def get(self, session_id: int) -> Session:
        for session in self._select("WHERE s.id = ?", (session_id,)):
            return session
        raise NotFound(f"No session with id {session_id!r}", param="session_id")

    def list(self) -> Sessions:
        """Every live session, oldest first (ended ones are left out: they are gone)."""
        return self._select("ORDER BY s.id", ())

    def _select(self, where: str, params: tuple[object, ...]) -> Sessions:
        now = self.clock()
        rows = (
            self._db.reader()
            .execute(
                f"SELECT {_SESSION_COLUMNS}, {_KEY_COLUMNS} FROM sessions s"
                f" JOIN api_keys k ON k.id = s.key_id {where}",
                params,
            )
            .fetchall()
        )
        return [
            self._session(row["id"], key, row["created_at"], row["last_seen_at"], row[4], row[5])
            for row in rows
            if not (key := ApiKey(*row[6:])).revoked
            and now - row["created_at"] < self.absolute_s
            and now - row["last_seen_at"] < self.idle_s
        ]

    def _delete_ended(self, conn: Connection, now: float) -> None:
        conn.execute(
            "DELETE FROM sessions WHERE created_at <= ? OR last_seen_at <= ?"
            " OR key_id IN (SELECT id FROM api_keys WHERE revoked_at IS NOT NULL)",
            (now - self.absolute_s, now - self.idle_s),
        )

    def _session(
        self,
        session_id: int,
        key: ApiKey,
        created_at: float,
        last_seen_at: float,
        client: str | None,
        user_agent: str | None,
    ) -> Session:
        absolute = created_at + self.absolute_s
        return Session(
            id=session_id,
            key_id=key.id,
            key_name=key.name,
            key_prefix=key.prefix,
            scope=key.scope,
            created_at=format_timestamp(created_at),
            last_seen_at=format_timestamp(last_seen_at),
            expires_at=format_timestamp(min(last_seen_at + self.idle_s, absolute)),
            absolute_expires_at=format_timestamp(absolute),
            client=client,
            user_agent=user_agent,
        )


class LoginLimiter:
    """At most `attempts` sign-ins with a key per client address within `window_s`.

    An attempt counts when it is made, before its key is checked, so a burst of concurrent
    guesses is bounded too; a successful sign-in forgets the address's count. Memory is bounded:
    at most `max_clients` addresses are remembered, the oldest forgotten first."""

    def __init__(
        self,
        attempts: int,
        window_s: float,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.max_clients = max_clients
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}

    def attempt(self, client: str) -> None:
        """Count one attempt by `client`, or answer 429 `too_many_login_attempts` (with
        Retry-After) when it has used up its attempts."""
        now = self.clock()
        with self._lock:
            times = self._seen.pop(client, None) or deque()
            while times and now - times[0] >= self.window_s:
                times.popleft()
            if len(times) >= self.attempts:
                self._seen[client] = times
                wait = max(1, math.ceil(self.window_s - (now - times[0])))
                raise RateLimited(
                    f"Too many sign-in attempts from {client}: {self.attempts} within"
                    f" {_duration(self.window_s)}; try again in {wait} s",
                    code="too_many_login_attempts",
                    headers={"Retry-After": str(wait)},
                )
            times.append(now)
            self._seen[client] = times  # re-inserted last: the dict is oldest-first
            while len(self._seen) > self.max_clients:
                del self._seen[next(iter(self._seen))]

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._seen.pop(client, None)
