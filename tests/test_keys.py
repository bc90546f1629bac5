from __future__ import annotations

import hashlib
import re
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from llmkit.db import Database, DurableStore, open_durable
from llmkit.errors import BadRequest, NotFound
from llmkit.keys import DISPLAY_PREFIX_LENGTH, KeyStore
from tests.helpers import FakeClock

KEY_PATTERN = re.compile(r"^llmkit_[0-9A-Za-z]{32}$")


@pytest.fixture
def db(durable_db: DurableStore) -> DurableStore:
    """The store, on each backend in turn."""
    return durable_db


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db: DurableStore, clock: FakeClock) -> KeyStore:
    return KeyStore(db, clock=clock)


def data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection commits to the file."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def stored_last_used(conn: sqlite3.Connection) -> str | None:
    value = conn.execute("SELECT last_used_at FROM api_keys").fetchone()[0]
    return None if value is None else str(value)


def test_a_key_is_looked_up_by_its_digest_index(durable_db: DurableStore) -> None:
    KeyStore(durable_db)
    reader = durable_db.reader()
    if durable_db.dialect == "sqlite":
        query = "EXPLAIN QUERY PLAN SELECT id FROM api_keys WHERE digest = ?"
        plan = " ".join(row[3] for row in reader.execute(query, ("x",)))
    else:
        # An empty table would be scanned whatever its indexes: ask for the index's plan.
        reader.execute("SET enable_seqscan = off")
        query = "EXPLAIN SELECT id FROM api_keys WHERE digest = ?"
        plan = " ".join(row[0] for row in reader.execute(query, ("x",)))
        reader.execute("RESET enable_seqscan")
    assert "api_keys_digest" in plan


def test_create_returns_clear_key_once_and_stores_only_its_digest(
    store: KeyStore, db: DurableStore
) -> None:
    key, clear = store.create("deploy bot")
    assert KEY_PATTERN.match(clear)
    assert key.name == "deploy bot"
    assert key.scope == "run"
    assert key.prefix == clear[:DISPLAY_PREFIX_LENGTH] == clear[:12]
    assert key.revoked_at is None and key.last_used_at is None
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", key.created_at)
    row = db.reader().execute("SELECT * FROM api_keys WHERE id = ?", (key.id,)).fetchone()
    assert row["digest"] == hashlib.sha256(clear.encode()).hexdigest()
    assert clear not in repr(key)
    body = clear[len("llmkit_") :]
    stored = db.reader().execute("SELECT * FROM api_keys").fetchall()
    assert all(body not in str(value) for stored_row in stored for value in stored_row)


def test_the_clear_key_is_nowhere_in_the_sqlite_files(sqlite_db: Database) -> None:
    db_path = Path(sqlite_db.path)
    _, clear = KeyStore(sqlite_db).create("deploy bot")
    digest = sqlite_db.reader().execute("SELECT digest FROM api_keys").fetchone()[0]
    on_disk = b"".join(p.read_bytes() for p in db_path.parent.iterdir() if p.is_file())
    assert clear[len("llmkit_") :].encode() not in on_disk
    assert digest.encode() in on_disk


def test_created_keys_are_distinct(store: KeyStore) -> None:
    clears = {store.create(f"k{i}")[1] for i in range(50)}
    assert len(clears) == 50
    assert store.count() == 50


def test_verify_accepts_the_key_and_rejects_everything_else(store: KeyStore) -> None:
    admin, admin_clear = store.create("ops", scope="admin")
    _, run_clear = store.create("app")
    verified = store.verify(admin_clear)
    assert verified is not None
    assert (verified.id, verified.scope) == (admin.id, "admin")
    run_key = store.verify(run_clear)
    assert run_key is not None and run_key.scope == "run"
    almost = admin_clear[:-1] + ("A" if admin_clear[-1] != "A" else "B")
    for bad in [
        "",
        "llmkit_",
        admin_clear + "x",
        admin_clear[:-1],
        "sk_" + admin_clear[7:],
        admin_clear[:-1] + "!",
        admin_clear.upper() if admin_clear.upper() != admin_clear else admin_clear.lower(),
        almost,
        None,
        12345,
    ]:
        assert store.verify(bad) is None, bad


def test_revoke_takes_effect_at_once_and_twice_is_harmless(store: KeyStore) -> None:
    key, clear = store.create("app")
    assert store.verify(clear) is not None
    revoked = store.revoke(key.id)
    assert revoked.revoked_at is not None
    assert store.verify(clear) is None
    again = store.revoke(key.id)
    assert again.revoked_at == revoked.revoked_at
    assert [k.revoked_at for k in store.list()] == [revoked.revoked_at]
    assert store.list(include_revoked=False) == []
    with pytest.raises(NotFound, match="9999"):
        store.revoke(9999)


def test_revoke_by_another_process_is_seen_after_the_check_interval(
    durable_url: str, store: KeyStore, clock: FakeClock
) -> None:
    key, clear = store.create("app")
    assert store.verify(clear) is not None
    other_db = open_durable(durable_url)
    try:
        KeyStore(other_db).revoke(key.id)
    finally:
        other_db.close()
    clock.advance(0.5)
    assert store.verify(clear) is not None, "served from cache inside the check interval"
    clock.advance(0.5)
    assert store.verify(clear) is None


def test_key_created_by_another_process_verifies_at_once(durable_url: str, store: KeyStore) -> None:
    other_db = open_durable(durable_url)
    try:
        _, clear = KeyStore(other_db).create("from cli")
    finally:
        other_db.close()
    assert store.verify(clear) is not None


def test_verify_does_not_write_on_every_call(sqlite_db: Database, clock: FakeClock) -> None:
    store = KeyStore(sqlite_db, clock=clock)
    key, clear = store.create("app")
    watcher = sqlite3.connect(sqlite_db.path)
    try:
        before_first_use = data_version(watcher)
        first = store.verify(clear)
        assert first is not None and first.last_used_at is not None
        after_first_use = data_version(watcher)
        assert after_first_use != before_first_use, "the first use is written"
        stored = stored_last_used(watcher)
        assert stored == first.last_used_at

        for _ in range(200):
            clock.advance(0.1)
            assert store.verify(clear) is not None
        assert data_version(watcher) == after_first_use, "20 s of requests, no write"
        listed = store.list()[0]
        assert listed.last_used_at is not None and listed.last_used_at >= stored

        clock.advance(10.1)
        latest = store.verify(clear)
        assert latest is not None
        assert data_version(watcher) != after_first_use, "written again after 30 s"
        assert stored_last_used(watcher) == latest.last_used_at

        # An older value put there by hand shows whether flush() writes the pending use.
        watcher.execute("UPDATE api_keys SET last_used_at = '2000-01-01T00:00:00.000Z'")
        watcher.commit()
        newest = store.verify(clear)
        assert newest is not None
        assert stored_last_used(watcher) == "2000-01-01T00:00:00.000Z"
        store.flush()
        assert stored_last_used(watcher) == newest.last_used_at
        assert store.get(key.id).last_used_at == newest.last_used_at
    finally:
        watcher.close()


def test_concurrent_verifies_all_succeed(store: KeyStore) -> None:
    _, clear = store.create("app")
    results: list[bool] = []

    def verify_many() -> None:
        for _ in range(200):
            results.append(store.verify(clear) is not None)

    threads = [threading.Thread(target=verify_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [True] * 800


@pytest.mark.parametrize(
    ("name", "scope", "shown"),
    [
        ("", "run", "''"),
        ("   ", "run", "'   '"),
        ("x" * 101, "run", "x" * 40),
        ("line\nbreak", "run", "line"),
        ("ok", "owner", "'owner'"),
        ("ok", "", "''"),
    ],
)
def test_bad_name_or_scope_is_a_bad_request_naming_the_value(
    store: KeyStore, name: str, scope: str, shown: str
) -> None:
    with pytest.raises(BadRequest) as info:
        store.create(name, scope=scope)
    assert shown in info.value.message
    assert store.count() == 0


def test_name_of_exactly_the_maximum_length_is_accepted(store: KeyStore) -> None:
    key, _ = store.create("n" * 100)
    assert key.name == "n" * 100


def test_ensure_admin_key_writes_a_private_file_once(store: KeyStore, tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "dir" / "admin.key"
    clear = store.ensure_admin_key(path)
    assert clear is not None and KEY_PATTERN.match(clear)
    assert path.read_text() == clear + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["admin.key"]
    verified = store.verify(clear)
    assert verified is not None and verified.scope == "admin"
    assert store.ensure_admin_key(path) is None
    assert store.count() == 1


def test_ensure_admin_key_replaces_a_stale_file(store: KeyStore, tmp_path: Path) -> None:
    path = tmp_path / "admin.key"
    path.write_text("stale")
    path.chmod(0o644)
    clear = store.ensure_admin_key(path)
    assert clear is not None
    assert path.read_text() == clear + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_ensure_admin_key_does_nothing_when_an_admin_key_is_active(
    store: KeyStore, tmp_path: Path
) -> None:
    store.create("app")
    store.create("ops", "admin")
    path = tmp_path / "admin.key"
    assert store.ensure_admin_key(path) is None
    assert not path.exists()


def test_ensure_admin_key_from_two_processes_creates_one_key(
    durable_url: str, tmp_path: Path
) -> None:
    databases = [open_durable(durable_url) for _ in range(4)]
    stores = [KeyStore(d) for d in databases]
    results: list[str | None] = []
    barrier = threading.Barrier(len(stores))

    def start(s: KeyStore, i: int) -> None:
        barrier.wait(timeout=10)
        results.append(s.ensure_admin_key(tmp_path / f"admin{i}.key"))

    threads = [threading.Thread(target=start, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert len(results) == 4
        assert len([r for r in results if r is not None]) == 1
        assert stores[0].count() == 1
        assert len(list(tmp_path.glob("admin*.key"))) == 1
    finally:
        for d in databases:
            d.close()
