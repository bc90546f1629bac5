"""Index: the SQLite view of the prompt repository, rebuildable from git at any time.

- A version of prompt K is a commit on the served branch that changed `prompts/K.md`; its number
  is its 1-based position in that file's history.
- The working tree is what is served: a file that differs from its last commit is a *draft*
  version (number = last + 1, no sha).
- Integer ids are assigned deterministically: prompts that have history by their first commit,
  then by key; prompts that exist only in the working tree after them, by key. So an incremental
  sync and a full rebuild of the same repository state give identical rows. Committed versions
  get integer ids (LLMKit's `version_id`) the same way: a global ordinal in commit order, then
  key; drafts have none.
- Only index tables live in the `index` migration list (`index_schema`); durable tables (keys,
  run log, evals) have lists of their own and are never touched here.
- Reading is `index_queries`, keeping in step with git `index_sync` (its concurrency model is
  described there), the tables `index_schema`; this module resolves the versions that the API,
  the CLI and the executor name.
"""

from __future__ import annotations

from llmkit.db import MAX_SQLITE_INT
from llmkit.errors import NotFound
from llmkit.index_queries import IndexQueries
from llmkit.index_sync import decode
from llmkit.promptfile import path_for_key
from llmkit.store import blob_id
from llmkit.versions import Version, label, unified_diff

# What a `version_id` path segment may say for a draft, which has no id.
DRAFT_IDS = ("draft", "null")


class Index(IndexQueries):
    """The SQLite view of the prompt repository: kept in step by `sync()`, read by the
    queries, and asked for versions by what callers call them."""

    def version(self, ident: str | int, spec: str | int | None = None) -> Version:
        """Resolve a version of a prompt: None (served), a number, a sha prefix, or a git ref."""
        version = self._resolve(ident, spec, git=True)
        assert version is not None
        return version

    def version_without_git(
        self, ident: str | int, spec: str | int | None = None
    ) -> Version | None:
        """The version when the index resolves it alone: the served one, a number, a sha
        prefix, or a branch or tag already read since the last change (a few SQLite reads, no
        git). None when only git can say: then `version()` runs git, off the event loop."""
        return self._resolve(ident, spec, git=False)

    def _resolve(self, ident: str | int, spec: str | int | None, git: bool) -> Version | None:
        self._check_fresh()
        if spec is None and isinstance(ident, str):
            cached = self._served_cache.get(ident)
            if cached is not None:
                return cached
        epoch = self._epoch
        prompt = self.get_prompt(ident)
        if spec is None or spec == "":
            if prompt.version is None:
                raise NotFound(
                    f"Prompt {prompt.key!r} has been deleted; its history is still readable",
                    param="model",
                )
            if isinstance(ident, str) and ident == prompt.key:
                with self._cache_lock:
                    if epoch == self._epoch:
                        self._served_cache[ident] = prompt.version
            return prompt.version
        text = str(spec).strip()
        conn = self.db.reader()
        if text.isdigit() and int(text) <= MAX_SQLITE_INT:
            row = conn.execute(
                "SELECT v.number, v.seq, v.blob, c.sha, v.id FROM ix_versions v"
                " LEFT JOIN ix_commits c ON c.seq = v.seq"
                " WHERE v.key = ? AND v.number = ?",
                (prompt.key, int(text)),
            ).fetchone()
            if row is not None:
                return self._version(prompt.key, *row)
            # A commit sha prefix can be all digits too (K@6454461).
            if len(text) < 4:
                raise NotFound(f"Prompt {prompt.key!r} has no version {text}", param="model")
        if 4 <= len(text) <= 40 and all(c in "0123456789abcdef" for c in text.lower()):
            rows = conn.execute(
                "SELECT v.number, v.seq, v.blob, c.sha, v.id FROM ix_versions v"
                " JOIN ix_commits c ON c.seq = v.seq"
                " WHERE v.key = ? AND c.sha LIKE ?",
                (prompt.key, text.lower() + "%"),
            ).fetchall()
            if len(rows) == 1:
                return self._version(prompt.key, *rows[0])
        if not git:
            return self._ref_cache.get((prompt.key, text))
        return self._version_at_ref(prompt.key, text)

    def _version_at_ref(self, key: str, ref: str) -> Version:
        cache_key = (key, ref)
        if cache_key in self._ref_cache:
            found = self._ref_cache[cache_key]
        else:
            epoch = self._epoch
            found = self._read_ref(key, ref)
            with self._cache_lock:
                if epoch == self._epoch:
                    self._ref_cache[cache_key] = found
        if found is None:
            raise NotFound(
                f"Prompt {key!r} has no version {ref!r} (not a version number, sha or git ref)",
                param="model",
            )
        return found

    def _read_ref(self, key: str, ref: str) -> Version | None:
        commit = self.store.resolve_ref(ref)
        if commit is None:
            return None
        path = path_for_key(key)
        data = self.store.file_at(commit, path)
        if data is None:
            return None
        last = self.store.last_commit_touching(path, commit) or commit
        row = (
            self.db.reader()
            .execute(
                "SELECT v.number, v.id FROM ix_versions v JOIN ix_commits c ON c.seq = v.seq"
                " WHERE v.key = ? AND c.sha = ?",
                (key, last),
            )
            .fetchone()
        )
        number, vid = row if row else (None, None)
        content, error = decode(data, self._max_bytes)
        info = self.store.commit_info(last)
        return Version(key, number, last, blob_id(data), content, error, info, id=vid)

    def version_for_id_segment(self, ident: str | int, text: str) -> Version:
        """A version named where LLMKit takes a `version_id`: digits are always the integer
        id (of this prompt's versions, never a version number); `served` the version served now,
        draft or not; `draft`, or `null` (what the UI puts in a URL for a draft's null
        version_id), the served draft; anything else a sha prefix, branch or tag."""
        prompt = self.get_prompt(ident)
        text = text.strip()
        if text == "served":
            return self.version(prompt.key)
        if text in DRAFT_IDS:
            served = self.version(prompt.key)
            if not served.draft:
                raise NotFound(
                    f"Prompt {prompt.key!r} has no draft: its served version has version_id"
                    f" {served.id}",
                    param="version_id",
                )
            return served
        if text.isdigit():
            if len(text) > len(str(MAX_SQLITE_INT)):
                raise NotFound(
                    f"No version of prompt {prompt.key!r} found with version_id {text[:40]}",
                    param="version_id",
                )
            return self.version_by_id(int(text), key=prompt.key)
        return self.version(prompt.key, text)

    def version_by_id(self, vid: int, key: str | None = None) -> Version:
        """A committed version by its integer id (LLMKit's `version_id`). With `key`, an id
        that belongs to another prompt is not found, so a URL naming one prompt can never
        reach another's version."""
        row = None
        if 0 < vid <= MAX_SQLITE_INT:
            row = (
                self.db.reader()
                .execute(
                    "SELECT v.key, v.number, v.seq, v.blob, c.sha, v.id FROM ix_versions v"
                    " JOIN ix_commits c ON c.seq = v.seq WHERE v.id = ?",
                    (vid,),
                )
                .fetchone()
            )
        if row is None or (key is not None and row[0] != key):
            owner = f" of prompt {key!r}" if key is not None else ""
            raise NotFound(f"No version{owner} found with version_id {vid}", param="version_id")
        return self._version(*row)

    def history(self, ident: str | int) -> list[tuple[Version, str]]:
        """Every version, oldest first, with the unified diff from the version before it."""
        result = []
        previous: Version | None = None
        for version in self.versions(ident):
            before = previous.content or "" if previous else ""
            old_name = f"{version.path}@{label(previous) if previous else 0}"
            diff = unified_diff(
                before, version.content or "", old_name, f"{version.path}@{label(version)}"
            )
            result.append((version, diff))
            previous = version
        return result

    def diff(self, ident: str | int, old: str | int, new: str | int | None) -> str:
        a, b = self.version(ident, old), self.version(ident, new)
        return unified_diff(
            a.content or "", b.content or "", f"{a.path}@{label(a)}", f"{b.path}@{label(b)}"
        )
