"""Serving a git ref: `llmkit serve --ref REF [--remote NAME]`.

Production serves only what is committed at REF, never the working tree: no drafts, and the
watcher reads no files, only the git refs. The index follows REF's history instead of HEAD's
(in a database of its own, so a development server or the CLI on the same clone keeps its own),
and what is served, every prompt at REF's commit with its parsed state, is one immutable
`Snapshot`, replaced by one assignment once the index has caught up with a new commit. A
request pins the snapshot it starts with (`RefIndex.pinned`), so it sees the old version set or
the new one, never a mix, and its answer names that commit (`x-llmkit-ref-sha`).

REF moving backwards (a force-push, a reset) rebuilds the index from the new commit's history.
REF disappearing keeps the last snapshot served and says so (`/healthz`). A prompt file at REF
that cannot be read or parsed is listed as unservable; every other prompt is served.

With `--remote`, a `Follower` fetches REF from the remote into `refs/remotes/<remote>/<ref>`
(a tag into itself) every `--fetch-interval` seconds and whenever a push webhook asks; requests
for a fetch while one runs are coalesced into one more, and fetches start at most once every
`FETCH_MIN_GAP_S`, so a flood of hooks cannot start a flood of fetches.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmkit.config import PROMPTS_DIR
from llmkit.db import MAX_SQLITE_INT
from llmkit.durable import write_atomic
from llmkit.errors import ConfigError, Conflict, IndexUnavailable, InvalidKey, LlmkitError, NotFound
from llmkit.index import Index
from llmkit.index_sync import SyncReport
from llmkit.promptfile import PROMPT_SUFFIX, key_from_path
from llmkit.store import GitError, GitStore
from llmkit.versions import Prompt, Version

log = logging.getLogger("llmkit.refserve")

FETCH_INTERVAL_DEFAULT_S = 30.0
FETCH_INTERVAL_MIN_S = 1.0
FETCH_INTERVAL_MAX_S = 3600.0
# One fetch may take this long before it is killed (a remote that stalls must not stop
# following for good); the next one runs at the next interval or hook.
FETCH_TIMEOUT_S = 120.0
# Fetches start at most this often, however many hooks arrive.
FETCH_MIN_GAP_S = 1.0
# How often the follower looks at REF itself even when no file event said it moved (a
# watcher can miss events, e.g. on a network file system).
POLL_REF_S = 5.0
REF_HEADER = "x-llmkit-ref-sha"
CONFIG_NAME = "llmkit.yaml"


class ReadOnlyRef(Conflict):
    code = "read_only_ref"


@dataclass(frozen=True)
class RefTarget:
    """What `llmkit serve --ref` was asked to follow."""

    ref: str
    remote: str | None = None
    fetch_interval_s: float = FETCH_INTERVAL_DEFAULT_S


_SNAPSHOT_SERIALS = itertools.count(1)


@dataclass(frozen=True)
class Snapshot:
    """Everything served at one commit of REF. Never changed once built: a new commit gets a
    new snapshot."""

    sha: str
    prompts: tuple[Prompt, ...]
    by_key: Mapping[str, Prompt]
    by_id: Mapping[int, Prompt]
    # Prompt files at this commit that cannot be served, with why (the error a call would get).
    unservable: Mapping[str, str]
    loaded_at: float = field(default_factory=time.time)
    # Unique to this snapshot in this process: what is computed from it may be kept by it.
    serial: int = field(default_factory=lambda: next(_SNAPSHOT_SERIALS))


_REQUEST_SNAPSHOT: ContextVar[tuple[RefIndex, Snapshot] | None] = ContextVar(
    "llmkit_request_snapshot", default=None
)


class RefStore(GitStore):
    """The repository as seen from REF: `head()` is the commit REF held when the index last
    started to read it (pinned for the whole read, so history and the tree come from one
    commit), and nothing is ever written: an API write is refused with 409."""

    def __init__(
        self, root: Path, target: RefTarget, lock_path: Path | None = None, **kwargs: Any
    ) -> None:
        super().__init__(root, lock_path, **kwargs)
        self.target = target
        self.pinned: str | None = None
        self.local_ref, self.remote_ref = self._names(target)

    def _names(self, target: RefTarget) -> tuple[str, str | None]:
        """(the local ref served, the remote ref fetched into it or None)."""
        ref = target.ref
        if not ref or ref.startswith("-") or ref == "HEAD":
            raise ConfigError(f"--ref {ref!r} is not a branch or tag name")
        if target.remote is not None:
            remotes = self.out("remote").splitlines()
            if target.remote not in remotes:
                raise ConfigError(
                    f"--remote {target.remote!r} is not a remote of {self.root}"
                    f" (remotes: {', '.join(remotes) or 'none'})"
                )
            source = ref if ref.startswith("refs/") else f"refs/heads/{ref}"
            self._check_format(source)
            if source.startswith("refs/heads/"):
                local = f"refs/remotes/{target.remote}/{source.removeprefix('refs/heads/')}"
            else:
                local = source
            self._check_format(local)
            return local, source
        if ref.startswith("refs/"):
            self._check_format(ref)
            return ref, None
        for candidate in (f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/remotes/{ref}"):
            self._check_format(candidate)
            if self._commit_of(candidate) is not None:
                return candidate, None
        raise ConfigError(f"--ref {ref!r}: no branch, tag or remote-tracking branch of that name")

    def _check_format(self, name: str) -> None:
        if self.git("check-ref-format", name, check=False).returncode != 0:
            raise ConfigError(f"--ref {self.target.ref!r}: {name!r} is not a valid git ref name")

    def _commit_of(self, full_ref: str) -> str | None:
        # Asked of git, never read from the ref files: a `git gc` packing refs meanwhile, or a
        # fetch moving one, is git's to get right.
        proc = self.git("rev-parse", "--verify", "--quiet", f"{full_ref}^{{commit}}", check=False)
        return proc.stdout.decode().strip() or None

    def ref_commit(self) -> str | None:
        """The commit REF holds now; None when it does not exist (deleted)."""
        return self._commit_of(self.local_ref)

    def require(self) -> str:
        """REF's commit, fetched first when the clone has none yet; a ConfigError naming what
        is missing (and why the fetch failed) otherwise. Run before serving starts."""
        sha = self.ref_commit()
        failure = ""
        if sha is None and self.target.remote is not None:
            try:
                self.fetch()
            except GitError as exc:
                failure = f"; fetching it failed: {exc.message}"
            sha = self.ref_commit()
        if sha is None:
            raise ConfigError(f"--ref {self.target.ref}: {self.local_ref} does not exist{failure}")
        return sha

    def head(self) -> str | None:
        return self.pinned

    def head_ref(self) -> str:
        return self.local_ref

    def branch(self) -> str | None:
        return self.local_ref

    def prompt_blobs(self, commit: str) -> dict[str, str]:
        """key -> blob id of every prompt file in `commit`'s tree (regular files only: a
        symbolic link is never served)."""
        out = self.git("ls-tree", "-r", "-z", "--full-tree", commit, "--", PROMPTS_DIR).stdout
        found: dict[str, str] = {}
        for record in filter(None, out.decode("utf-8", "surrogateescape").split("\0")):
            meta, _, path = record.partition("\t")
            mode, kind, sha = meta.split()
            if (
                kind != "blob"
                or mode not in ("100644", "100755")
                or not path.endswith(PROMPT_SUFFIX)
            ):
                continue
            try:
                found[key_from_path(path)] = sha
            except InvalidKey:
                continue
        return found

    def fetch(self, timeout_s: float = FETCH_TIMEOUT_S) -> None:
        """Fetch REF from the remote into the local ref (forced: a force-push is followed)."""
        assert self.target.remote is not None and self.remote_ref is not None
        self.git(
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-recurse-submodules",
            "--no-write-fetch-head",
            self.target.remote,
            f"+{self.remote_ref}:{self.local_ref}",
            env={"GIT_TERMINAL_PROMPT": "0"},
            timeout_s=timeout_s,
        )

    def commit_file(self, rel_path: str, content: bytes | None, **kwargs: Any) -> str:
        raise read_only(self.target)

    def recover(self) -> str | None:
        # The working tree is not served and never written in this mode; a development
        # server's interrupted write is that server's to finish.
        return None


def read_only(target: RefTarget) -> ReadOnlyRef:
    where = f" and push it to {target.remote}" if target.remote else ""
    return ReadOnlyRef(
        f"This server serves --ref {target.ref} read-only: commit the change to {target.ref}"
        f"{where}, and it is served once the server has it",
    )


class RefIndex(Index):
    """The index of REF's history, serving one `Snapshot` at a time. `config_file`, when given,
    receives REF's `llmkit.yaml` before each sync (the model registry reads it from there), so
    aliases and limits come from REF too, never from the working tree."""

    store: RefStore

    def __init__(
        self, store: RefStore, *args: Any, config_file: Path | None = None, **kwargs: Any
    ) -> None:
        super().__init__(store, *args, **kwargs)
        self.config_file = config_file
        self.snapshot: Snapshot | None = None
        self.missing = False  # REF no longer exists; the last snapshot is still served
        self.last_error: str | None = None
        self._follow_lock = threading.Lock()

    # -- following REF -------------------------------------------------------------------

    def sync(self) -> SyncReport:
        """Catch up with the commit REF holds now and swap the snapshot. Cheap when REF has not
        moved (one `git rev-parse`)."""
        with self._follow_lock:
            sha = self.store.ref_commit()
            if sha is None:
                if not self.missing:
                    log.warning("%s no longer exists; still serving its last commit", self.ref)
                self.missing = True
                if self.snapshot is None:
                    raise ConfigError(f"--ref {self.store.target.ref}: {self.ref} does not exist")
                return SyncReport()
            self.missing = False
            if self.snapshot is not None and self.snapshot.sha == sha:
                return SyncReport()
            self.store.pinned = sha
            try:
                self._copy_config(sha)
                report = super().sync()
                self.snapshot = self._build_snapshot()  # the swap: one assignment
            except LlmkitError as exc:
                self.last_error = exc.message
                raise
            self.last_error = None
            log.info("serving %s at %s", self.ref, self.snapshot.sha)
            return report

    def rebuild(self, progress: Any = None) -> SyncReport:
        with self._follow_lock:
            sha = self.store.ref_commit()
            if sha is None:
                raise ConfigError(f"--ref {self.store.target.ref}: {self.ref} does not exist")
            self.store.pinned = sha
            report = super().rebuild(progress)
            self.snapshot = self._build_snapshot()
            return report

    @property
    def ref(self) -> str:
        return self.store.local_ref

    def _copy_config(self, sha: str) -> None:
        """REF's llmkit.yaml where the model registry reads it (none at REF: none there)."""
        if self.config_file is None:
            return
        data = self.store.file_at(sha, CONFIG_NAME)
        try:
            current: bytes | None = self.config_file.read_bytes()
        except FileNotFoundError:
            current = None
        if data == current:
            return
        if data is None:
            self.config_file.unlink(missing_ok=True)
        else:
            write_atomic(self.config_file, data)

    def _scan_working_tree(self, conn: Any) -> set[str]:
        """Which prompts REF's tree holds: from git, never from the files on disk."""
        commit = self.store.pinned
        assert commit is not None
        at_ref = self.store.prompt_blobs(commit)
        conn.execute("DELETE FROM ix_versions WHERE seq IS NULL")  # no drafts here
        changed: set[str] = set()
        for key, present in conn.execute("SELECT key, present FROM ix_prompts").fetchall():
            wanted = key in at_ref
            if bool(present) != wanted:
                conn.execute("UPDATE ix_prompts SET present = ? WHERE key = ?", (int(wanted), key))
                changed.add(key)
        return changed

    def _build_snapshot(self) -> Snapshot:
        """What the index holds now, read in one read transaction (another process sharing
        this database may write meanwhile), parsed once."""
        conn = self.db.reader()
        conn.execute("BEGIN")
        try:
            sha = self._state("head")
            prompts = tuple(Index.list_prompts(self))
        finally:
            conn.execute("COMMIT")
        if sha is None:
            raise IndexUnavailable(f"the index of {self.ref} holds no commit")
        unservable: dict[str, str] = {}
        for prompt in prompts:
            if prompt.version is None:
                continue
            try:
                prompt.version.prompt()
            except LlmkitError as exc:
                unservable[prompt.key] = exc.message
        return Snapshot(
            sha=sha,
            prompts=prompts,
            by_key={p.key: p for p in prompts},
            by_id={p.id: p for p in prompts},
            unservable=unservable,
        )

    # -- what a request sees ---------------------------------------------------------------

    def generation(self) -> int:
        """What a request is served here is its snapshot, not the database's rows (which move
        before the snapshot is swapped): what is computed from the listing is kept by
        snapshot."""
        return self.current().serial

    def current(self) -> Snapshot:
        """The snapshot the running request pinned, else the newest."""
        pinned = _REQUEST_SNAPSHOT.get()
        if pinned is not None and pinned[0] is self:
            return pinned[1]
        snapshot = self.snapshot
        if snapshot is None:
            raise IndexUnavailable(f"{self.ref} is not loaded yet")
        return snapshot

    @contextmanager
    def pinned(self) -> Iterator[Snapshot]:
        """Serve one snapshot to everything run in this context (threads that copy the
        context included), however often REF moves meanwhile."""
        snapshot = self.current()
        token = _REQUEST_SNAPSHOT.set((self, snapshot))
        try:
            yield snapshot
        finally:
            _REQUEST_SNAPSHOT.reset(token)

    def head(self) -> str | None:
        return self.current().sha if self.snapshot is not None else None

    def list_prompts(self, include_deleted: bool = False) -> list[Prompt]:
        if include_deleted:
            return super().list_prompts(include_deleted=True)
        return list(self.current().prompts)

    def page_prompts(
        self,
        *,
        prefix: str | None = None,
        after: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> list[Prompt]:
        """As Index.page_prompts, from the pinned snapshot: a page never mixes two commits."""
        chosen = [
            p
            for p in self.current().prompts
            if (prefix is None or p.key.startswith(prefix)) and (after is None or p.id > after)
        ]
        return chosen[offset : offset + limit]

    def count_prompts(self, prefix: str | None = None) -> int:
        prompts = self.current().prompts
        return sum(1 for p in prompts if prefix is None or p.key.startswith(prefix))

    def get_prompt(self, ident: str | int, include_deleted: bool = True) -> Prompt:
        snapshot = self.current()
        text = str(ident)
        if text.isdigit():
            found = snapshot.by_id.get(int(text)) if int(text) <= MAX_SQLITE_INT else None
        else:
            found = snapshot.by_key.get(text)
        if found is not None:
            return found
        # Known to the index (its history is readable) but not in this snapshot's tree.
        prompt = super().get_prompt(ident, include_deleted=True)
        if not include_deleted:
            raise NotFound(f"No prompt found with key {prompt.key!r} at {self.ref}", param="model")
        return replace(prompt, present=False, version=None)

    def _resolve(self, ident: str | int, spec: str | int | None, git: bool) -> Version | None:
        if spec is not None and spec != "":
            return super()._resolve(ident, spec, git)
        prompt = self.get_prompt(ident)
        if prompt.version is None:
            raise NotFound(
                f"Prompt {prompt.key!r} is not in {self.ref}; its history is still readable",
                param="model",
            )
        return prompt.version


class Follower:
    """Keeps a RefIndex on REF: the watcher (git refs only, never the files) and a poll of REF
    every `POLL_REF_S`, and with a remote, a fetch every interval and on a webhook's request."""

    def __init__(self, index: RefIndex, watch: bool = True, debounce_s: float = 0.03) -> None:
        self.index = index
        self.store = index.store
        self.target = index.store.target
        self.watch = watch
        self.debounce_s = debounce_s
        self.fetches = 0
        self.last_fetch_at: float | None = None
        self.last_fetch_error: str | None = None
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._watcher: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Fetch (with a remote), load REF, then follow it. A first fetch that fails is not
        fatal while REF exists locally: it is served, and `/healthz` says the fetch failed."""
        if self.target.remote is not None:
            self.fetch_now(sync=False)
        try:
            self.index.sync()
        except ConfigError as exc:
            if self.last_fetch_error is None:
                raise
            raise ConfigError(
                f"{exc.message}; fetching it failed: {self.last_fetch_error}"
            ) from exc
        if self.watch:
            from llmkit.watch import Watcher

            self._watcher = Watcher(
                self.index, self.store.root, debounce_s=self.debounce_s, files=False
            )
            self._watcher.start()
        self._thread = threading.Thread(target=self._run, name="llmkit-follow", daemon=True)
        self._thread.start()

    def request_fetch(self) -> bool:
        """Ask for a fetch soon (a push webhook). Requests made while one is waiting or running
        become one fetch. False when there is no remote to fetch from."""
        if self.target.remote is None:
            return False
        self._wanted.set()
        return True

    def _run(self) -> None:
        interval = self.target.fetch_interval_s
        remote = self.target.remote is not None
        next_fetch = time.monotonic() + interval
        next_poll = time.monotonic() + POLL_REF_S
        while not self._stop.is_set():
            now = time.monotonic()
            wake = min(next_fetch, next_poll) if remote else next_poll
            self._wanted.wait(timeout=max(0.0, wake - now))
            if self._stop.is_set():
                break
            now = time.monotonic()
            if remote and (self._wanted.is_set() or now >= next_fetch):
                if self.last_fetch_at is not None:
                    gap = self.last_fetch_at + FETCH_MIN_GAP_S - now
                    if gap > 0 and self._stop.wait(gap):
                        break
                self._wanted.clear()  # hooks from here on ask for the fetch after this one
                self.fetch_now()
                next_fetch = time.monotonic() + interval
            elif now >= next_poll:
                self._sync()
                next_poll = now + POLL_REF_S

    def fetch_now(self, sync: bool = True) -> bool:
        """One fetch, then serve what it brought. False (and the error kept for /healthz) when
        it failed: REF keeps being served as it was."""
        self.last_fetch_at = time.monotonic()
        self.fetches += 1
        try:
            self.store.fetch()
        except GitError as exc:
            self.last_fetch_error = exc.message
            log.warning("fetching %s failed: %s", self.target.ref, exc.message)
            return False
        self.last_fetch_error = None
        if sync:
            self._sync()
        return True

    def _sync(self) -> None:
        try:
            self.index.sync()
        except Exception:  # following must survive whatever one sync meets; the next retries
            log.exception("loading %s failed; still serving the last commit", self.index.ref)

    def status(self) -> dict[str, Any]:
        """What /healthz says about REF."""
        snapshot = self.index.snapshot
        body: dict[str, Any] = {
            "name": self.target.ref,
            "local_ref": self.index.ref,
            "sha": snapshot.sha if snapshot else None,
            "loaded_at": snapshot.loaded_at if snapshot else None,
            "missing": self.index.missing,
            "error": self.index.last_error,
            "unservable": dict(snapshot.unservable) if snapshot else {},
        }
        if self.target.remote is not None:
            body["remote"] = {
                "name": self.target.remote,
                "fetch_interval_s": self.target.fetch_interval_s,
                "fetches": self.fetches,
                "error": self.last_fetch_error,
            }
        return body

    def healthy(self) -> bool:
        return not (self.index.missing or self.index.last_error or self.last_fetch_error)

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()
        if self._watcher is not None:
            self._watcher.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)


def ref_data_path(data_dir: Path, local_ref: str, kind: str, suffix: str) -> Path:
    """A file of one served ref in the data folder (its index database, its copy of
    llmkit.yaml): one per ref, so that a development server or `llmkit index` on the same clone
    never fights over it."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in local_ref.removeprefix("refs/"))
    digest = hashlib.sha1(local_ref.encode()).hexdigest()[:8]  # a/b and a_b stay apart
    return data_dir / f"{kind}-{name}-{digest}{suffix}"
