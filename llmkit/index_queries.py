"""Reading the index: prompts (all, by page, by id or key) and a prompt's versions, as rows of
the tables a sync wrote. No git here: what the index holds is what is read.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from llmkit.db import MAX_SQLITE_INT
from llmkit.errors import LlmkitError, NotFound
from llmkit.index_sync import IndexSync
from llmkit.promptfile import validate_key
from llmkit.store import Commit
from llmkit.versions import Prompt, Version


class IndexQueries(IndexSync):
    """The read queries of the index (Index adds version resolution)."""

    def list_prompts(self, include_deleted: bool = False) -> list[Prompt]:
        conn = self.db.reader()
        where = "" if include_deleted else "WHERE p.present = 1"
        rows = conn.execute(
            f"SELECT p.id, p.key, p.path, p.present FROM ix_prompts p {where} ORDER BY p.id"
        ).fetchall()
        served = self._served_versions(conn)
        return [self._prompt_from(row, served.get(row[1])) for row in rows]

    def models_in_use(self) -> dict[str, list[str]]:
        """The model each served prompt names (an alias or a model string), with the keys of
        its prompts; derived once per generation of the index (every file is parsed for it),
        and not to be changed by the caller."""
        return self.derived("models_in_use", self._models_named)

    def _models_named(self) -> dict[str, list[str]]:
        used: dict[str, list[str]] = {}
        for prompt in self.list_prompts():
            if prompt.version is None:
                continue
            try:
                used.setdefault(prompt.version.prompt().model, []).append(prompt.key)
            except LlmkitError:  # a prompt that does not parse names no model
                continue
        return used

    def page_prompts(
        self,
        *,
        prefix: str | None = None,
        after: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> list[Prompt]:
        """Served prompts by id: those whose key starts with `prefix`, after id `after` (a
        keyset cursor) or from position `offset`, at most `limit`. Only the page's prompts
        have their versions read, so a page costs the same in an index of any size."""
        where, params = _prompt_filter(prefix)
        if after is not None:
            where += " AND id > ?"
            params.append(after)
        rows = (
            self.db.reader()
            .execute(
                f"SELECT id, key, path, present FROM ix_prompts WHERE {where}"
                " ORDER BY id LIMIT ? OFFSET ?",
                (*params, limit, offset),
            )
            .fetchall()
        )
        served = self._served_versions_of(self.db.reader(), [row[1] for row in rows])
        return [self._prompt_from(row, served.get(row[1])) for row in rows]

    def count_prompts(self, prefix: str | None = None) -> int:
        """How many served prompts `page_prompts` pages through."""
        where, params = _prompt_filter(prefix)
        row = self.db.reader().execute(f"SELECT COUNT(*) FROM ix_prompts WHERE {where}", params)
        return int(row.fetchone()[0])

    def counts(self) -> tuple[int, int, int]:
        """(served prompts, versions, commits) in the index."""
        row = (
            self.db.reader()
            .execute(
                "SELECT (SELECT COUNT(*) FROM ix_prompts WHERE present = 1),"
                " (SELECT COUNT(*) FROM ix_versions), (SELECT COUNT(*) FROM ix_commits)"
            )
            .fetchone()
        )
        return int(row[0]), int(row[1]), int(row[2])

    def _served_versions_of(self, conn: sqlite3.Connection, keys: list[str]) -> dict[str, tuple]:
        """As _served_versions, for these keys only: a seek of (key, number) per key."""
        found: dict[str, tuple] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            found.update(self._served_rows(conn, f"WHERE key IN ({marks})", chunk))
        return found

    def get_prompt(self, ident: str | int, include_deleted: bool = True) -> Prompt:
        """A prompt by integer id or key."""
        conn = self.db.reader()
        text = str(ident)
        if text.isdigit():
            row = None
            if int(text) <= MAX_SQLITE_INT:
                row = conn.execute(
                    "SELECT id, key, path, present FROM ix_prompts WHERE id = ?", (int(text),)
                ).fetchone()
        else:
            validate_key(text)
            row = conn.execute(
                "SELECT id, key, path, present FROM ix_prompts WHERE key = ?", (text,)
            ).fetchone()
        if row is None or (not include_deleted and not row[3]):
            raise NotFound(
                f"No prompt found with {'id' if text.isdigit() else 'key'} {text!r}", param="model"
            )
        served = self._served_versions(conn, row[1])
        return self._prompt_from(row, served.get(row[1]))

    def _served_versions(
        self, conn: sqlite3.Connection, key: str | None = None
    ) -> dict[str, tuple]:
        where, args = ("WHERE key = ?", [key]) if key else ("", [])
        return self._served_rows(conn, where, args)

    def _served_rows(self, conn: sqlite3.Connection, where: str, args: list) -> dict[str, tuple]:
        """The version each prompt (of those `where` picks) serves, its highest number, with
        its content and commit in the same row: a list of N prompts is one query, not 2N + 1.
        The highest numbers come from the primary key alone; the highest committed number
        differs from the served one only when a draft is served, so only a draft's is looked
        up (CASE evaluates the subquery for those rows alone)."""
        rows = conn.execute(
            "SELECT v.key, v.number, v.seq, v.blob, c.sha,"
            " CASE WHEN v.seq IS NOT NULL THEN v.number ELSE"
            "  (SELECT MAX(w.number) FROM ix_versions w WHERE w.key = v.key AND w.seq IS NOT NULL)"
            " END AS committed, v.id, b.id, b.content, b.error,"
            " c.author_name, c.author_email, c.authored_at, c.committed_at, c.message"
            f" FROM (SELECT key, MAX(number) AS n FROM ix_versions {where} GROUP BY key) m"
            " JOIN ix_versions v ON v.key = m.key AND v.number = m.n"
            " LEFT JOIN ix_commits c ON c.seq = v.seq LEFT JOIN ix_blobs b ON b.id = v.blob",
            args,
        ).fetchall()
        return {r[0]: tuple(r) for r in rows}

    def _prompt_from(self, row: sqlite3.Row, served: tuple | None) -> Prompt:
        pid, key, path, present = row[0], row[1], row[2], bool(row[3])
        version = None
        latest_committed = 0
        if served is not None:
            _, number, seq, blob, sha, committed, vid, found, content, error = served[:10]
            latest_committed = committed or 0
            if present:
                if found is None:
                    content, error = None, "missing"
                commit = Commit(sha, *served[10:]) if sha is not None else None
                version = Version(key, number, sha, blob, content, error, commit, seq is None, vid)
        return Prompt(pid, key, path, present, version, latest_committed)

    def _version(
        self,
        key: str,
        number: int | None,
        seq: int | None,
        blob: str,
        sha: str | None,
        vid: int | None,
    ) -> Version:
        conn = self.db.reader()
        content, error = conn.execute(
            "SELECT content, error FROM ix_blobs WHERE id = ?", (blob,)
        ).fetchone() or (None, "missing")
        commit = self._commit(seq) if seq is not None else None
        return Version(key, number, sha, blob, content, error, commit, seq is None, vid)

    def _commit(self, seq: int) -> Commit | None:
        row = (
            self.db.reader()
            .execute(
                "SELECT sha, author_name, author_email, authored_at, committed_at, message FROM "
                "ix_commits WHERE seq = ?",
                (seq,),
            )
            .fetchone()
        )
        return Commit(*row) if row else None

    def versions(self, ident: str | int) -> list[Version]:
        """Every version of a prompt, oldest first, the draft (if any) last."""
        prompt = self.get_prompt(ident)
        rows = (
            self.db.reader()
            .execute(
                "SELECT v.number, v.seq, v.blob, c.sha, v.id FROM ix_versions v"
                " LEFT JOIN ix_commits c ON c.seq = v.seq"
                " WHERE v.key = ? ORDER BY v.number",
                (prompt.key,),
            )
            .fetchall()
        )
        return [self._version(prompt.key, *r) for r in rows]

    def committed_blobs(self) -> list[tuple[str, int, str]]:
        """(key, number, blob) of every committed version: what names the version a file read
        elsewhere in git (a branch, a tag) holds, by its blob id."""
        rows = self.db.reader().execute(
            "SELECT key, number, blob FROM ix_versions WHERE seq IS NOT NULL"
        )
        return [(r[0], r[1], r[2]) for r in rows.fetchall()]


def _prompt_filter(prefix: str | None) -> tuple[str, list[Any]]:
    """Served prompts, with keys that start with `prefix`: a range of the key's index."""
    if not prefix:
        return "present = 1", []
    # Every key that starts with the prefix sorts below the prefix and the last character.
    return "present = 1 AND key >= ? AND key < ?", [prefix, prefix + "\U0010ffff"]
