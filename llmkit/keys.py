"""API keys: `llmkit_` + 32 base62 characters, stored only as SHA-256 digests.

`verify` runs on every request, so it reads SQLite only on a cache miss and never writes on
each call:

- Verified digests are cached in memory. A revoke through the same `KeyStore` drops the cached
  entry at once. Revokes by another process (another server replica on the same file, the CLI)
  bump a generation counter in the database (a trigger does it, so even a hand-written UPDATE
  counts); `verify` reads that one-row counter at most once per `revocation_check_s` (1 s) and
  clears the whole cache when it moved. A key revoked elsewhere therefore stops working within
  about a second.
- `last_used_at` is kept in memory and written at a key's first use, then at most once per
  `flush_interval_s` (30 s) per key, and on `flush()`. Listings show the in-memory value.

The `sessions` table of browser sign-ins (`llmkit.sessions`) is in this migration list too: a
session is a key's, and ends with it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import sqlite3
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeGuard

from llmkit.db import Database, Migrations
from llmkit.errors import BadRequest, NotFound

log = logging.getLogger("llmkit.keys")

# Runs a piece of blocking work somewhere else (the API hands it to the thread pool).
WriteLater = Callable[[Callable[[], None]], object]

KEY_PREFIX = "llmkit_"
KEY_BODY_LENGTH = 32
KEY_LENGTH = len(KEY_PREFIX) + KEY_BODY_LENGTH
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
DISPLAY_PREFIX_LENGTH = 12
SCOPES = ("admin", "run")
MAX_NAME_LENGTH = 100
ADMIN_KEY_NAME = "admin"

_BASE62_SET = frozenset(BASE62)
_COLUMNS = "id, name, scope, prefix, created_at, last_used_at, revoked_at"


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    scope: str
    prefix: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


ApiKeys = list[ApiKey]

MIGRATIONS = Migrations("keys")
migration = MIGRATIONS.register


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE api_keys (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            scope TEXT NOT NULL CHECK (scope IN ('admin', 'run')),
            digest TEXT NOT NULL,
            prefix TEXT NOT NULL,
            created_at TEXT NOT NULL,
            last_used_at TEXT,
            revoked_at TEXT
        )
        """
    )
    conn.execute("CREATE UNIQUE INDEX api_keys_digest ON api_keys (digest)")
    conn.execute(
        "CREATE TABLE api_keys_generation"
        " (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL)"
    )
    conn.execute("INSERT INTO api_keys_generation (id, generation) VALUES (1, 0)")
    conn.execute(
        """
        CREATE TRIGGER api_keys_revoked AFTER UPDATE OF revoked_at ON api_keys
        WHEN OLD.revoked_at IS NOT NEW.revoked_at
        BEGIN
            UPDATE api_keys_generation SET generation = generation + 1 WHERE id = 1;
        END
        """
    )
    conn.execute(
        """
        CREATE TRIGGER api_keys_deleted AFTER DELETE ON api_keys
        BEGIN
            UPDATE api_keys_generation SET generation = generation + 1 WHERE id = 1;
        END
        """
    )


@migration
def m002_sessions(conn: sqlite3.Connection) -> None:
    # Browser sessions (llmkit.sessions), beside the keys they were signed in with: deleting a
    # key deletes its sessions, and a revoked key's sessions stop at once (the lookup joins).
    # Times are Unix seconds, compared as numbers by the idle and absolute expiry checks. Ids
    # are never reused, so ending session 3 can never end a later sign-in.
    conn.execute(
        """
        CREATE TABLE sessions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            digest TEXT NOT NULL,
            key_id INTEGER NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
            created_at REAL NOT NULL,
            last_seen_at REAL NOT NULL,
            client TEXT,
            user_agent TEXT
        )
        """
    )
    conn.execute("CREATE UNIQUE INDEX sessions_digest ON sessions (digest)")
    conn.execute("CREATE INDEX sessions_key_id ON sessions (key_id)")


def new_clear_key() -> str:
    return KEY_PREFIX + "".join(secrets.choice(BASE62) for _ in range(KEY_BODY_LENGTH))


def digest_of(clear: str) -> str:
    return hashlib.sha256(clear.encode("ascii")).hexdigest()


def looks_like_key(clear: object) -> TypeGuard[str]:
    return (
        isinstance(clear, str)
        and len(clear) == KEY_LENGTH
        and clear.startswith(KEY_PREFIX)
        and all(c in _BASE62_SET for c in clear[len(KEY_PREFIX) :])
    )


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _shown(value: str) -> str:
    """A value for an error message, cut short so a huge input cannot flood a log."""
    return repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value)} characters)"


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise BadRequest(f"API key name must be a string, got {name!r}", param="name")
    cleaned = name.strip()
    if not cleaned:
        raise BadRequest(f"API key name must not be empty, got {name!r}", param="name")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise BadRequest(
            f"API key name is longer than {MAX_NAME_LENGTH} characters: {_shown(cleaned)}",
            param="name",
        )
    if any(not c.isprintable() for c in cleaned):
        raise BadRequest(f"API key name has control characters: {_shown(cleaned)}", param="name")
    return cleaned


def _check_scope(scope: object) -> str:
    if scope not in SCOPES:
        raise BadRequest(
            f"Unknown API key scope {scope!r} (expected one of: {', '.join(SCOPES)})",
            param="scope",
        )
    return str(scope)


def _row_to_key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        scope=row["scope"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


def write_secret_file(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only, at every instant: the temporary file
    is created with O_EXCL and mode 0600, then renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class KeyStore:
    def __init__(
        self,
        db: Database,
        *,
        flush_interval_s: float = 30.0,
        revocation_check_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._flush_interval_s = flush_interval_s
        self._revocation_check_s = revocation_check_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, ApiKey] = {}
        # Bumped whenever the cache is invalidated, so a lookup that raced a revoke is not cached.
        self._epoch = 0
        self._generation: int | None = None
        self._generation_checked_at = -math.inf
        self._pending_used: dict[int, str] = {}
        self._flushed_at: dict[int, float] = {}
        db.migrate(MIGRATIONS)

    def create(self, name: str, scope: str = "run") -> tuple[ApiKey, str]:
        """A new key; the clear key is returned here once and never again."""
        name = _check_name(name)
        scope = _check_scope(scope)
        with self._db.write() as conn:
            return self._insert(conn, name, scope)

    def _insert(self, conn: sqlite3.Connection, name: str, scope: str) -> tuple[ApiKey, str]:
        clear = new_clear_key()
        created_at = _utc_now()
        cur = conn.execute(
            "INSERT INTO api_keys (name, scope, digest, prefix, created_at) VALUES (?, ?, ?, ?, ?)",
            (name, scope, digest_of(clear), clear[:DISPLAY_PREFIX_LENGTH], created_at),
        )
        key_id = cur.lastrowid
        assert key_id is not None
        key = ApiKey(
            id=key_id,
            name=name,
            scope=scope,
            prefix=clear[:DISPLAY_PREFIX_LENGTH],
            created_at=created_at,
            last_used_at=None,
            revoked_at=None,
        )
        return key, clear

    def list(self) -> ApiKeys:
        rows = self._db.reader().execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY id").fetchall()
        return [self._with_pending_use(_row_to_key(row)) for row in rows]

    def get(self, key_id: int) -> ApiKey:
        row = (
            self._db.reader()
            .execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"No API key with id {key_id!r}", param="id")
        return self._with_pending_use(_row_to_key(row))

    def count(self) -> int:
        return int(self._db.reader().execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])

    def revoke(self, key_id: int) -> ApiKey:
        """Revoke a key; it stops verifying at once in this process, and the browser sessions
        signed in with it end (a session's lookup joins its key, so it says why). Revoking
        twice keeps the first revocation time."""
        with self._db.write() as conn:
            row = conn.execute(
                f"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?"
                f" RETURNING {_COLUMNS}, digest",
                (_utc_now(), key_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"No API key with id {key_id!r}", param="id")
        with self._lock:
            self._cache.pop(row["digest"], None)
            self._epoch += 1
        return self._with_pending_use(_row_to_key(row))

    def verify(self, clear: object, *, write_later: WriteLater | None = None) -> ApiKey | None:
        """The key for a clear key, or None when it is unknown, revoked or malformed. The lookup
        is by digest, so comparison time says nothing about the clear key. A `last_used_at`
        write that falls due is handed to `write_later` when given (a caller on an event loop
        must not wait for the database's write lock), else written before returning."""
        if not looks_like_key(clear):
            return None
        digest = digest_of(clear)
        self._check_generation()
        with self._lock:
            key = self._cache.get(digest)
            epoch = self._epoch
        if key is None:
            key = self._load(digest)
            if key is None or key.revoked:
                return None
            with self._lock:
                if epoch == self._epoch:
                    self._cache[digest] = key
        return self._record_use(key, write_later)

    def flush(self) -> None:
        """Write every pending `last_used_at` now (the server calls this on shutdown)."""
        with self._lock:
            pending = dict(self._pending_used)
        self._write_last_used(pending)

    def ensure_admin_key(self, path: Path) -> str | None:
        """When no admin key is active (a new repository, or only `run` keys made with
        `llmkit keys create` before the first start, or every admin key revoked), create one,
        write it to `path` (mode 0600) and return it. Otherwise None: a server always has a way
        in, and never makes a second admin key beside a working one. Safe when several
        processes start at once: the check and the insert share one write transaction, and the
        file is written before it commits."""
        with self._db.write() as conn:
            active_admin = conn.execute(
                "SELECT 1 FROM api_keys WHERE scope = 'admin' AND revoked_at IS NULL LIMIT 1"
            ).fetchone()
            if active_admin is not None:
                return None
            _, clear = self._insert(conn, ADMIN_KEY_NAME, "admin")
            write_secret_file(path, clear + "\n")
        return clear

    def _load(self, digest: str) -> ApiKey | None:
        row = (
            self._db.reader()
            .execute(f"SELECT {_COLUMNS} FROM api_keys WHERE digest = ?", (digest,))
            .fetchone()
        )
        return None if row is None else _row_to_key(row)

    def _check_generation(self) -> None:
        now = self._clock()
        with self._lock:
            if now - self._generation_checked_at < self._revocation_check_s:
                return
            self._generation_checked_at = now
        row = self._db.reader().execute("SELECT generation FROM api_keys_generation").fetchone()
        generation = int(row[0])
        with self._lock:
            if generation != self._generation:
                self._generation = generation
                self._cache.clear()
                self._epoch += 1

    def _record_use(self, key: ApiKey, write_later: WriteLater | None = None) -> ApiKey:
        used_at = _utc_now()
        now = self._clock()
        with self._lock:
            self._pending_used[key.id] = used_at
            due = now - self._flushed_at.get(key.id, -math.inf) >= self._flush_interval_s
            if due:
                # Claimed under the lock so that concurrent requests do not all write.
                self._flushed_at[key.id] = now
        if due and write_later is not None:
            write_later(partial(self._write_last_used_logged, {key.id: used_at}))
        elif due:
            self._write_last_used({key.id: used_at})
        return replace(key, last_used_at=used_at)

    def _write_last_used_logged(self, used: dict[int, str]) -> None:
        # Nobody waits for a deferred write: a failure is logged, and the use stays pending
        # for the next due write or flush().
        try:
            self._write_last_used(used)
        except Exception:
            log.exception("writing last_used_at failed")

    def _write_last_used(self, used: dict[int, str]) -> None:
        if not used:
            return
        with self._db.write() as conn:
            conn.executemany(
                "UPDATE api_keys SET last_used_at = ?"
                " WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                [(at, key_id, at) for key_id, at in used.items()],
            )
        now = self._clock()
        with self._lock:
            for key_id, at in used.items():
                if self._pending_used.get(key_id) == at:
                    del self._pending_used[key_id]
                self._flushed_at[key_id] = now

    def _with_pending_use(self, key: ApiKey) -> ApiKey:
        with self._lock:
            used_at = self._pending_used.get(key.id)
        if used_at is None or (key.last_used_at is not None and key.last_used_at >= used_at):
            return key
        return replace(key, last_used_at=used_at)
