"""Keeping the index in step with the repository: a full rebuild from git, or an incremental
sync of new commits and the working tree.

Several processes may keep one database in step with one repository (two `llmkit serve` on a
repo, a server and `llmkit index --rebuild`). Git is read outside any transaction, and what was
read is checked inside the write transaction (BEGIN IMMEDIATE: one writer at a time across
processes): a sync re-reads the index's head there, and when another process moved it meanwhile
it catches up from that head instead (never moving the index back); a rebuild re-reads git's
head there and adds the commits made while it read history. A sync that fails is retried a
bounded number of times. Every write transaction that changes a row bumps a generation counter
kept in the database; the versions cached for the execution hot path are dropped when it moves
(one primary-key read per request) and after every sync, failed or not, so a change written by
any process is served by every process at its next request.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from llmkit.budgets import DEFAULT_LIMITS
from llmkit.config import PROMPTS_DIR
from llmkit.db import Database
from llmkit.errors import IndexUnavailable, InvalidKey, LlmkitError
from llmkit.index_schema import INDEX_TABLES, MIGRATIONS, read_generation
from llmkit.promptfile import PROMPT_SUFFIX, is_prompt_path, key_from_path, path_for_key
from llmkit.store import Commit, GitStore, blob_id
from llmkit.versions import Version

T = TypeVar("T")

log = logging.getLogger("llmkit.index")

Progress = Callable[[str, int, int], None]
RACY_NS = 2_000_000_000
SYNC_ATTEMPTS = 4
SYNC_BACKOFF_S = 0.05  # doubled after each failed attempt
# How long one attempt waits for another process's write transaction (a rebuild's is short:
# everything it writes is read from git before it begins).
SYNC_BUSY_TIMEOUT_S = 5.0


@dataclass
class SyncReport:
    rebuilt: bool = False
    new_commits: int = 0
    changed: set[str] = field(default_factory=set)


class IndexMoved(Exception):
    """Another process changed the index between a sync's reads and its write; read again."""


class IndexSync:
    """The index's write side and its caches: `sync()` and `rebuild()` write, and drop what was
    cached for serving whenever the index moved (Index reads through them)."""

    def __init__(
        self, store: GitStore, db: Database, prompt_file_bytes: Callable[[], int] | None = None
    ) -> None:
        self.store = store
        self.db = db
        # Prompt files over this size are errors, never read into the index (llmkit.yaml's
        # limits.prompt_file_bytes, asked at each sync; a new value rebuilds the index).
        self._prompt_file_bytes = prompt_file_bytes or (lambda: DEFAULT_LIMITS.prompt_file_bytes)
        self._max_bytes = DEFAULT_LIMITS.prompt_file_bytes
        self.db.migrate(MIGRATIONS)
        self.sync_attempts = SYNC_ATTEMPTS
        self.busy_timeout_s = SYNC_BUSY_TIMEOUT_S
        self._sync_lock = threading.Lock()
        # Files already read, by stat signature: valid only while the database holds what this
        # process last wrote (another process may have dropped a draft's content since).
        self._stat_cache: dict[str, tuple[tuple[int, int, int], str, int]] = {}
        self._stat_generation: int | None = None
        self._ref_cache: dict[tuple[str, str], Version | None] = {}
        # What each key serves, for the execution hot path; valid for one database generation.
        self._served_cache: dict[str, Version] = {}
        # What callers derived from the rows (see derived()), by name, with its generation.
        self._derived: dict[str, tuple[int, Any]] = {}
        self._cache_lock = threading.Lock()
        self._seen_generation: int | None = None
        # Bumped at every invalidation, so a read that raced one is not cached afterwards.
        self._epoch = 0

    def rebuild(self, progress: Progress | None = None) -> SyncReport:
        """Drop every index row and read the repository again from git."""
        with self._sync_lock:
            self._max_bytes = self._prompt_file_bytes()
            try:
                return self._attempts("rebuild", lambda: self._rebuild(progress))
            finally:
                self._invalidate()

    def sync(self) -> SyncReport:
        """Catch up with new commits (incrementally when history only grew) and the working
        tree. Retried when another process moved the index or held its write lock too long;
        raises IndexUnavailable when every attempt failed. What was cached for serving is
        dropped either way, so nothing read before the sync is served after it."""
        with self._sync_lock:
            self._max_bytes = self._prompt_file_bytes()
            try:
                return self._attempts("sync", self._sync_once)
            finally:
                self._invalidate()

    def _attempts(self, what: str, attempt: Callable[[], SyncReport]) -> SyncReport:
        failure: Exception | None = None
        for number in range(1, self.sync_attempts + 1):
            try:
                return attempt()
            except Exception as exc:
                failure = exc
            # Whatever this attempt read from the files may not have reached the database.
            self._stat_cache.clear()
            log.warning(
                "index %s: attempt %d of %d failed: %s", what, number, self.sync_attempts, failure
            )
            if number < self.sync_attempts and not isinstance(failure, IndexMoved):
                time.sleep(SYNC_BACKOFF_S * 2 ** (number - 1))
        raise IndexUnavailable(
            f"The index could not catch up with the repository ({what} failed"
            f" {self.sync_attempts} times; last: {type(failure).__name__}: {failure})"
        ) from failure

    def _sync_once(self) -> SyncReport:
        if self._state("prompt_file_bytes") != str(self._max_bytes):
            return self._rebuild(None)  # the size cap changed: files once too large may fit
        # The index's head is read before git's: a head read first could be older than an index
        # another process has just moved on, and would look like history rewritten.
        indexed = self._indexed(self.db.reader())
        head = self.store.head()
        branch = self.store.branch() or ""
        apply_history: Callable[[sqlite3.Connection], SyncReport] | None = None
        if (head, branch) != indexed:
            if indexed[0] and head and self.store.is_ancestor(indexed[0], head):
                apply_history = self._append(indexed[0], head, branch)
            else:
                return self._rebuild(None)
        # New history and the working tree land in one transaction, so a reader never sees
        # a new commit without the files that came with it.
        with self._write() as conn:
            current = self._indexed(conn)
            if current != indexed:
                # Another process synced meanwhile: start again from what it wrote.
                report = self._catch_up_from(conn, current, head, branch)
            elif apply_history is not None:
                report = apply_history(conn)
            else:
                report = SyncReport()
            report.changed |= self._scan_working_tree(conn)
            self._number_drafts(conn)
            if report.changed or report.new_commits:
                _drop_unused_blobs(conn)
        return report

    def _catch_up_from(
        self,
        conn: sqlite3.Connection,
        current: tuple[str | None, str],
        head: str | None,
        branch: str,
    ) -> SyncReport:
        """Under the write lock, bring an index that another process moved to `current` up to
        `head`. Git is read here only when syncs race, and then only for the commits between."""
        if current[0] == head:
            if current[1] != branch:
                self._set_state(conn, head, branch)
            return SyncReport()
        if current[0] and head and self.store.is_ancestor(current[0], head):
            return self._append(current[0], head, branch)(conn)
        if current[0] and head and self.store.is_ancestor(head, current[0]):
            return SyncReport()  # indexed further than this sync read: never move it back
        raise IndexMoved("the index moved to another history while this sync read git")

    def _rebuild(self, progress: Progress | None) -> SyncReport:
        head, branch = self.store.head(), self.store.branch() or ""
        history = self.store.log_changes(until=head) if head else []
        if progress:
            progress("history", len(history), len(history))
        versions, blobs_wanted = _versions_from(history, start_seq=1)
        contents = self._read_blobs(blobs_wanted, progress, skip_known=False)
        with self._write() as conn:
            # Git's head is read again under the write lock, so the index never ends behind a
            # head another process may already have indexed; a commit made after this read is
            # followed by a sync (its writer's, or a watcher's) that starts after this one ends.
            now = self.store.head()
            if now != head and not (head and now and self.store.is_ancestor(head, now)):
                raise IndexMoved("the branch was rewritten while the index was rebuilt")
            self._stat_cache.clear()
            for table in INDEX_TABLES:
                conn.execute(f"DELETE FROM {table}")
            self._insert_history(conn, history, 1, versions, contents)
            self._set_state(conn, head, branch)
            late = SyncReport()
            if head and now and now != head:
                late = self._append(head, now, branch)(conn)
            self._scan_working_tree(conn)
            self._number_drafts(conn)
            _drop_unused_blobs(conn)
        report = SyncReport(rebuilt=True, new_commits=len(history) + late.new_commits)
        report.changed = {key for key, _, _, _ in versions} | late.changed
        if progress:
            progress("done", 1, 1)
        return report

    def _append(
        self, since: str, head: str, branch: str
    ) -> Callable[[sqlite3.Connection], SyncReport]:
        """Read the commits after `since` from git; returns what writes them into the index
        (numbering them from the rows it finds inside the write transaction)."""
        history = self.store.log_changes(since=since, until=head)
        wanted = list(dict.fromkeys(v[3] for v in _versions_from(history, start_seq=1)[0]))
        contents = self._read_blobs(wanted, None)

        def apply(conn: sqlite3.Connection) -> SyncReport:
            start = (conn.execute("SELECT MAX(seq) FROM ix_commits").fetchone()[0] or 0) + 1
            touched = sorted({key for _, changes in history for key in _prompt_keys(changes)})
            known: dict[str, int] = {}
            for i in range(0, len(touched), 500):
                chunk = touched[i : i + 500]
                known.update(
                    conn.execute(
                        "SELECT key, MAX(number) FROM ix_versions WHERE seq IS NOT NULL AND key IN"
                        f" ({','.join('?' * len(chunk))}) GROUP BY key",
                        chunk,
                    ).fetchall()
                )
            versions, _ = _versions_from(history, start_seq=start, numbers=known)
            # A blob skipped as already stored may have been a draft's that another process
            # has dropped since; such a blob is read again here.
            missing = _missing_blobs(conn, [b for b in wanted if b not in contents])
            again = self.store.read_blobs(missing)
            contents.update({b: decode(d, self._max_bytes) for b, d in again.items()})
            self._insert_history(conn, history, start, versions, contents)
            self._set_state(conn, head, branch)
            return SyncReport(new_commits=len(history), changed={k for k, _, _, _ in versions})

        return apply

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The index's write transaction. The stat cache is dropped when another process wrote
        since this one last did, and the generation moves when any row changed."""
        with self.db.write(busy_timeout_s=self.busy_timeout_s) as conn:
            generation = read_generation(conn)
            if generation != self._stat_generation:
                self._stat_cache.clear()
            changes_before = conn.total_changes
            yield conn
            if conn.total_changes != changes_before:
                generation = conn.execute(
                    "UPDATE ix_generation SET generation = generation + 1 WHERE id = 1"
                    " RETURNING generation"
                ).fetchone()[0]
        self._stat_generation = generation

    def _read_blobs(
        self, ids: list[str], progress: Progress | None, skip_known: bool = True
    ) -> dict[str, tuple[str | None, str | None]]:
        known: set[str] = set()
        conn = self.db.reader()
        for chunk_start in range(0, len(ids) if skip_known else 0, 500):
            chunk = ids[chunk_start : chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            known.update(
                r[0] for r in conn.execute(f"SELECT id FROM ix_blobs WHERE id IN ({marks})", chunk)
            )
        raw = self.store.read_blobs(i for i in ids if i not in known)
        if progress:
            progress("blobs", len(raw), len(raw))
        return {blob: decode(data, self._max_bytes) for blob, data in raw.items()}

    def _insert_history(
        self,
        conn: sqlite3.Connection,
        history: list[tuple[Commit, list]],
        start: int,
        versions: list[tuple[str, int, int, str]],
        contents: dict[str, tuple[str | None, str | None]],
    ) -> None:
        # Drafts are recomputed after history moves; a just-committed draft becomes a version.
        conn.execute("DELETE FROM ix_versions WHERE seq IS NULL")
        conn.executemany(
            "INSERT INTO ix_commits (seq, sha, author_name, author_email, authored_at, "
            "committed_at, message)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    start + i,
                    c.sha,
                    c.author_name,
                    c.author_email,
                    c.authored_at,
                    c.committed_at,
                    c.message,
                )
                for i, (c, _) in enumerate(history)
            ],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO ix_blobs (id, content, error) VALUES (?, ?, ?)",
            [(blob, text, err) for blob, (text, err) in contents.items()],
        )
        # Version ids continue from the last one, in commit order then key: history only ever
        # grows between a rebuild and a sync, so both number every version alike.
        next_vid = (conn.execute("SELECT MAX(id) FROM ix_versions").fetchone()[0] or 0) + 1
        ordered_versions = sorted(versions, key=lambda v: (v[2], v[0], v[1]))
        conn.executemany(
            "INSERT INTO ix_versions (key, number, seq, blob, id) VALUES (?, ?, ?, ?, ?)",
            [(*v, next_vid + i) for i, v in enumerate(ordered_versions)],
        )
        existing = {
            r[0] for r in conn.execute("SELECT key FROM ix_prompts WHERE first_seq IS NOT NULL")
        }
        first_seen: dict[str, int] = {}
        for key, _, seq, _ in versions:
            if key not in existing:
                first_seen.setdefault(key, seq)
        if first_seen:
            # Prompts known only from the working tree give way to prompts with history.
            conn.execute("UPDATE ix_prompts SET id = -id WHERE first_seq IS NULL")
            marks = ",".join("?" * len(first_seen))
            conn.execute(
                f"DELETE FROM ix_prompts WHERE first_seq IS NULL AND key IN ({marks})",
                list(first_seen),
            )
            next_id = (
                conn.execute(
                    "SELECT MAX(id) FROM ix_prompts WHERE first_seq IS NOT NULL"
                ).fetchone()[0]
                or 0
            ) + 1
            ordered = sorted(first_seen.items(), key=lambda kv: (kv[1], kv[0]))
            conn.executemany(
                "INSERT INTO ix_prompts (key, id, path, first_seq, present) VALUES (?, ?, ?, ?, 0)",
                [
                    (key, next_id + i, path_for_key(key), seq)
                    for i, (key, seq) in enumerate(ordered)
                ],
            )

    def _scan_working_tree(self, conn: sqlite3.Connection) -> set[str]:
        """Mark which prompts exist on disk and record drafts. Returns the keys that changed."""
        files = self.store.working_files(PROMPTS_DIR, (PROMPT_SUFFIX,))
        on_disk: dict[str, str] = {}
        new_blobs: dict[str, tuple[str | None, str | None]] = {}
        # Like git's "racily clean" entries: a file whose mtime is this close to the scan that
        # cached it may have changed again within the file system's clock tick, so it is
        # re-read rather than trusted.
        scanned_at = time.time_ns()
        for rel, path in files.items():
            try:
                key = key_from_path(rel)
            except InvalidKey:
                continue
            try:
                st = path.stat()
                sig = (st.st_mtime_ns, st.st_size, st.st_ino)
                cached = self._stat_cache.get(rel)
                if cached and cached[0] == sig and sig[0] < cached[2] - RACY_NS:
                    on_disk[key] = cached[1]
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            blob = blob_id(data)
            self._stat_cache[rel] = (sig, blob, scanned_at)
            on_disk[key] = blob
            new_blobs[blob] = decode(data, self._max_bytes)
        if new_blobs:
            conn.executemany(
                "INSERT OR IGNORE INTO ix_blobs (id, content, error) VALUES (?, ?, ?)",
                [(blob, text, err) for blob, (text, err) in new_blobs.items()],
            )
        latest = {
            r[0]: (r[1], r[2])
            for r in conn.execute(
                "SELECT v.key, v.number, v.blob FROM ix_versions v JOIN"
                " (SELECT key, MAX(number) AS n FROM ix_versions WHERE seq IS NOT NULL GROUP BY "
                "key) m"
                " ON v.key = m.key AND v.number = m.n"
            )
        }
        drafts = {
            r[0]: r[1] for r in conn.execute("SELECT key, blob FROM ix_versions WHERE seq IS NULL")
        }
        present = {r[0]: bool(r[1]) for r in conn.execute("SELECT key, present FROM ix_prompts")}
        spare_id = min(0, conn.execute("SELECT MIN(id) FROM ix_prompts").fetchone()[0] or 0)
        changed: set[str] = set()
        for key in set(present) | set(on_disk):
            on_disk_blob = on_disk.get(key)
            committed_number, committed_blob = latest.get(key, (0, None))
            want_draft = (
                on_disk_blob
                if on_disk_blob is not None and on_disk_blob != committed_blob
                else None
            )
            if drafts.get(key) != want_draft:
                conn.execute("DELETE FROM ix_versions WHERE key = ? AND seq IS NULL", (key,))
                if want_draft is not None:
                    conn.execute(
                        "INSERT INTO ix_versions (key, number, seq, blob) VALUES (?, ?, NULL, ?)",
                        (key, committed_number + 1, want_draft),
                    )
                changed.add(key)
            if key not in present:
                spare_id -= 1  # a placeholder until _number_drafts gives the final id
                conn.execute(
                    "INSERT INTO ix_prompts (key, id, path, first_seq, present) VALUES (?, ?, ?, "
                    "NULL, 1)",
                    (key, spare_id, path_for_key(key)),
                )
                changed.add(key)
            elif present[key] != (on_disk_blob is not None):
                conn.execute(
                    "UPDATE ix_prompts SET present = ? WHERE key = ?",
                    (int(on_disk_blob is not None), key),
                )
                changed.add(key)
        # A prompt with no history that left the working tree is gone entirely.
        conn.execute("DELETE FROM ix_prompts WHERE first_seq IS NULL AND present = 0")
        return changed

    def _number_drafts(self, conn: sqlite3.Connection) -> None:
        """Ids of working-tree-only prompts follow every prompt with history, in key order."""
        rows = conn.execute(
            "SELECT key, id FROM ix_prompts WHERE first_seq IS NULL ORDER BY key"
        ).fetchall()
        base = (
            conn.execute("SELECT MAX(id) FROM ix_prompts WHERE first_seq IS NOT NULL").fetchone()[0]
            or 0
        )
        wanted = [(base + 1 + i, key) for i, (key, _) in enumerate(rows)]
        if [r[1] for r in rows] != [w[0] for w in wanted]:
            conn.execute("UPDATE ix_prompts SET id = -id - 1000000 WHERE first_seq IS NULL")
            conn.executemany("UPDATE ix_prompts SET id = ? WHERE key = ?", wanted)

    def _state(self, name: str) -> str | None:
        row = (
            self.db.reader()
            .execute("SELECT value FROM ix_state WHERE name = ?", (name,))
            .fetchone()
        )
        return row[0] if row else None

    def _indexed(self, conn: sqlite3.Connection) -> tuple[str | None, str]:
        """The head and branch the index was built at, as `conn` sees them."""
        rows = conn.execute("SELECT name, value FROM ix_state WHERE name IN ('head', 'branch')")
        state = dict(rows.fetchall())
        return state.get("head"), state.get("branch") or ""

    def _set_state(self, conn: sqlite3.Connection, head: str | None, branch: str) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO ix_state (name, value) VALUES (?, ?)",
            [("head", head), ("branch", branch), ("prompt_file_bytes", str(self._max_bytes))],
        )

    def _invalidate(self, generation: int | None = None) -> None:
        """Drop what was cached for serving. The generation is read before the caches are
        emptied, so a change committed meanwhile is seen at the next check, never missed."""
        if generation is None:
            generation = read_generation(self.db.reader())
        with self._cache_lock:
            self._epoch += 1
            self._seen_generation = generation
            self._served_cache.clear()
            self._ref_cache.clear()

    def _check_fresh(self) -> None:
        """Drop the caches when any process changed the index since they were filled: one
        primary-key read, cheap enough for every request."""
        generation = read_generation(self.db.reader())
        if generation != self._seen_generation:
            self._invalidate(generation)

    def generation(self) -> int:
        """A number that moves whenever any row of the index changes, in any process (a sync,
        a rebuild, a draft seen): what is computed from the rows may be kept until it moves."""
        return read_generation(self.db.reader())

    def derived(self, name: str, build: Callable[[], T]) -> T:
        """What `build` computes from the index's rows, kept under `name` until the generation
        moves, then built again: for what every request would otherwise recompute from the
        whole index (a listing parsed, shaped or grouped). The caller must not change it."""
        generation = self.generation()  # read first: a change meanwhile is seen next time
        kept = self._derived.get(name)
        if kept is not None and kept[0] == generation:
            return cast(T, kept[1])
        value = build()
        self._derived[name] = (generation, value)  # one assignment: readers see old or new
        return value

    def head(self) -> str | None:
        return self._state("head")


def _missing_blobs(conn: sqlite3.Connection, ids: list[str]) -> list[str]:
    """Those of `ids` that ix_blobs does not hold."""
    present: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(f"SELECT id FROM ix_blobs WHERE id IN ({marks})", chunk)
        present.update(r[0] for r in rows)
    return [blob for blob in ids if blob not in present]


def _drop_unused_blobs(conn: sqlite3.Connection) -> None:
    """Contents of drafts that were edited again or thrown away; a rebuild would not have them."""
    conn.execute("DELETE FROM ix_blobs WHERE id NOT IN (SELECT blob FROM ix_versions)")


def decode(data: bytes, max_bytes: int) -> tuple[str | None, str | None]:
    """A prompt file's (text, None), or (None, why it is not served): over the size cap or
    not UTF-8."""
    if len(data) > max_bytes:
        return None, (
            f"file is {len(data):,} bytes, over the limit of {max_bytes:,} for a prompt file"
            " (limits.prompt_file_bytes in llmkit.yaml)"
        )
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (invalid byte at offset {exc.start})"


def _prompt_keys(changes: list) -> list[str]:
    keys = []
    for change in changes:
        if is_prompt_path(change.path):
            try:
                keys.append(key_from_path(change.path))
            except LlmkitError:
                pass
    return keys


def _versions_from(
    history: list[tuple[Commit, list]], start_seq: int, numbers: dict[str, int] | None = None
) -> tuple[list[tuple[str, int, int, str]], list[str]]:
    """(key, number, seq, blob) for every content change to a prompt file, in history order."""
    counts = dict(numbers or {})
    versions: list[tuple[str, int, int, str]] = []
    for i, (_, changes) in enumerate(history):
        for change in sorted(changes, key=lambda c: c.path):
            if change.blob is None or not is_prompt_path(change.path):
                continue
            try:
                key = key_from_path(change.path)
            except LlmkitError:
                continue
            counts[key] = counts.get(key, 0) + 1
            versions.append((key, counts[key], start_seq + i, change.blob))
    return versions, list(dict.fromkeys(v[3] for v in versions))
