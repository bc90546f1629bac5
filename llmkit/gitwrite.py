"""The git write protocol: one-file commits that are crash-safe at every step.

DESIGN.md ("Git write protocol") gives the reasons; in short, under the store's flock:

  journal a nonce -> take .git/index.lock as git does (exclusive create, holding our marker
  from its first instant; bounded wait, else 503) -> check the preconditions -> write blob,
  tree and commit (unreachable) -> journal the write and the hash of the new index (the
  author's index with only this path's entry changed) -> move that index into the lock ->
  `git update-ref <ref> <new> <old>` (THE COMMIT POINT) -> replace the working-tree file ->
  rename the lock over .git/index -> drop the journal -> acknowledge.

Nothing visible changes before the commit point, and after it git's own index.lock keeps every
git command that stages or commits out until the working tree and the index agree with the new
HEAD, even across a crash. Recovery reads the journal: a ref that did not move means roll back,
a ref that moved means roll forward. It removes a lock only when its content proves it is ours.

`LLMKIT_FAULT_AT=<step>[:n]` (tests only) SIGKILLs the process the n-th time it reaches `step`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from llmkit.durable import (
    lock_state,
    outlives,
    read_or_none,
    remove_synced,
    replace_synced,
    take_lock,
    write_synced,
)
from llmkit.errors import BadRequest, Conflict, InvalidKey, LlmkitError, NotFound, RepositoryBusy
from llmkit.store import (
    ALREADY_EXISTS,
    ZERO_SHA,
    GitError,
    GitStore,
    blob_id,
    sanitize_identity,
    sanitize_message,
)

JOURNAL_NAME = "write.journal"
_SHA_RE = re.compile(r"^[0-9a-f]{4,40}$")
_NONCE_RE = re.compile(r"[0-9a-f]{16}")
_FILE_MODES = ("100644", "100755")

# -- test-only fault injection ------------------------------------------------------------------

# The points of a write (in protocol order) and of recovery where a test can kill the process.
# The two `in-update-ref` steps leave behind what a kill inside `git update-ref` leaves.
WRITE_STEPS = (
    "journal-begun",
    "index-locked",
    "objects-written",
    "journaled",
    "index-prepared",
    "in-update-ref",
    "in-update-ref-committed",
    "ref-moved",
    "worktree-temp",
    "worktree-written",
    "index-installed",
    "journal-removed",
)
RECOVERY_STEPS = ("recovery-locked", "recovery-worktree-written")


def _fault_plan(raw: str | None) -> tuple[str, int] | None:
    if not raw:
        return None
    step, _, nth = raw.partition(":")
    if step not in WRITE_STEPS + RECOVERY_STEPS or not (nth or "1").isdigit():
        steps = ", ".join(WRITE_STEPS + RECOVERY_STEPS)
        raise ValueError(f"LLMKIT_FAULT_AT={raw!r}: expected <step>[:n], a step among {steps}")
    return step, int(nth or 1)


# Read once, at import; when unset, a fault point costs one comparison with None.
_FAULT_PLAN = _fault_plan(os.environ.get("LLMKIT_FAULT_AT"))
_fault_hits = 0


def _fault_due(step: str) -> bool:
    global _fault_hits
    if _FAULT_PLAN is None or _FAULT_PLAN[0] != step:
        return False
    _fault_hits += 1
    return _fault_hits == _FAULT_PLAN[1]


def _fault(step: str) -> None:
    if _FAULT_PLAN is not None and _fault_due(step):
        os.kill(os.getpid(), signal.SIGKILL)


# -- the journal ---------------------------------------------------------------------------------


@dataclass
class Journal:
    """What a write is about to do, fsynced before it does it, so that recovery can finish or
    undo it and can tell llmkit's own locks from anyone else's. Fields stay None until the write
    has got that far."""

    nonce: str
    path: str | None = None
    ref: str | None = None  # refs/heads/<branch>, or HEAD when it is detached
    old_head: str | None = None
    new_commit: str | None = None
    old_blob: str | None = None
    new_blob: str | None = None  # None for a delete
    mode: str = "100644"
    index_sha256: str | None = None  # of the new index moved into index.lock

    @property
    def marker(self) -> bytes:
        """What index.lock holds from the instant llmkit creates it."""
        return f"llmkit write {self.nonce}\n".encode()

    @property
    def committed(self) -> bool:
        return self.new_commit is not None


class GitWriter:
    """Writes and recovery for one GitStore. Every method expects the store's flock held."""

    def __init__(self, store: GitStore) -> None:
        self.store = store
        self.journal_path = store.lock_path.parent / JOURNAL_NAME

    @property
    def index_lock(self) -> Path:
        return self.store.git_dirs[0] / "index.lock"

    # -- a write -------------------------------------------------------------------------

    def commit_file(
        self,
        rel_path: str,
        content: bytes | None,
        *,
        message: str,
        author_name: str | None,
        author_email: str | None,
        base: str | None,
        create: bool,
        precheck: Callable[[], None] | None = None,
    ) -> str:
        """GitStore.commit_file: one write, through every step of the protocol."""
        with self.store.lock():
            self.recover()
            if precheck is not None:
                precheck()  # under the lock: no other llmkit writer can change its answer
            journal = Journal(nonce=secrets.token_hex(8))
            self._write_journal(journal)
            _fault("journal-begun")
            try:
                self._lock_index(journal)
                _fault("index-locked")
                self._commit_objects(
                    journal, rel_path, content, message, author_name, author_email, base, create
                )
                _fault("objects-written")
                self._prepare_index(journal)
                self._move_ref(journal)
            except BaseException:
                self.recover()  # the ref did not move, so this undoes; it never waits
                raise
            _fault("ref-moved")
            try:
                self._finish(journal, content)
            except Exception as exc:
                self._finish_by_recovery(journal, exc)
            assert journal.new_commit is not None
            return journal.new_commit

    def _commit_objects(
        self,
        journal: Journal,
        rel_path: str,
        content: bytes | None,
        message: str,
        author_name: str | None,
        author_email: str | None,
        base: str | None,
        create: bool,
    ) -> None:
        """Check the preconditions while both locks are held, then write blob, tree and commit
        (unreachable, so invisible) and fill in the journal."""
        store = self.store
        target = store.confine(rel_path)  # again: a link may have appeared since
        ref, head = store.head_ref(), store.head()
        mode, kind, head_blob = store.tree_entry(head, rel_path) if head else (None, None, None)
        if kind == "tree":
            raise Conflict(f"{rel_path} is a folder in the repository, not a file")
        if create and (head_blob is not None or os.path.lexists(target)):
            raise Conflict(f"{rel_path} already exists", param="key", code=ALREADY_EXISTS)
        if base is not None:
            self._check_base(rel_path, base, head)
        if mode is not None and mode not in _FILE_MODES:
            raise InvalidKey(f"{rel_path} is a symbolic link or a submodule in the repository")
        on_disk = read_regular(target, rel_path)
        if (blob_id(on_disk) if on_disk is not None else None) != head_blob:
            raise Conflict(
                f"{rel_path} has uncommitted changes in the working tree; commit or discard"
                " them before writing through the API"
            )
        if store.index_entries(rel_path) != _entries(mode, head_blob):
            raise Conflict(f"{rel_path} has staged changes; commit or unstage them first")
        if content is None and head_blob is None:
            raise NotFound(f"{rel_path} does not exist")
        new_blob = None
        if content is not None:
            new_blob = store.out("hash-object", "-w", "--stdin", input=content)
            if new_blob == head_blob:
                raise BadRequest(f"{rel_path} is unchanged; nothing to commit")
        journal.path, journal.ref, journal.old_head = rel_path, ref, head
        journal.old_blob, journal.new_blob, journal.mode = head_blob, new_blob, mode or "100644"
        journal.new_commit = self._commit_tree(journal, message, author_name, author_email)

    def _check_base(self, rel_path: str, base: str, head: str | None) -> None:
        last = self.store.last_commit_touching(rel_path) if head else None
        wanted = base.strip().lower()
        if not _SHA_RE.match(wanted):
            raise BadRequest(f"Base version {base!r} is not a commit sha", param="base_version")
        if last is None or not last.startswith(wanted):
            raise Conflict(
                f"{rel_path} has moved on: its latest version is {last[:12] if last else 'none'},"
                f" not {base}; reload it and apply your change again"
            )

    def _commit_tree(
        self, journal: Journal, message: str, author_name: str | None, author_email: str | None
    ) -> str:
        """The commit of HEAD's tree with only this path changed, built on a private index."""
        assert journal.path is not None
        store = self.store
        env = store.identity_env()
        name, email = sanitize_identity(author_name), sanitize_identity(author_email)
        if name:
            env["GIT_AUTHOR_NAME"] = name
        if email:
            env["GIT_AUTHOR_EMAIL"] = email
        elif name:
            # A new author name with the committer's address would misattribute; say so instead.
            env["GIT_AUTHOR_EMAIL"] = "unknown@llmkit.invalid"
        index_file = store.lock_path.parent / f"index-{journal.nonce}"
        index_env = {**env, "GIT_INDEX_FILE": str(index_file)}
        try:
            if journal.old_head:
                store.git("read-tree", journal.old_head, env=index_env)
            else:
                store.git("read-tree", "--empty", env=index_env)
            self._set_entry(journal, index_env)
            tree = store.out("write-tree", env=index_env)
        finally:
            index_file.unlink(missing_ok=True)
        parents = ["-p", journal.old_head] if journal.old_head else []
        msg = sanitize_message(message, f"Update {journal.path}")
        return store.out("commit-tree", tree, *parents, input=msg.encode(), env=env)

    def _set_entry(self, journal: Journal, env: dict[str, str]) -> None:
        """Give the index that `env` names this write's entry for its path (or none)."""
        assert journal.path is not None
        if journal.new_blob is None:
            self.store.git("update-index", "--force-remove", "--", journal.path, env=env)
        else:
            entry = f"{journal.mode},{journal.new_blob},{journal.path}"
            self.store.git("update-index", "--add", "--cacheinfo", entry, env=env)

    def _lock_index(self, journal: Journal) -> None:
        """Take `.git/index.lock` exclusively, as git does, holding our marker from its first
        instant so that recovery can prove it is ours. Waits up to the store's lock timeout
        while someone else holds it, then refuses: nobody else's lock is ever removed."""
        lock = self.index_lock
        take_lock(
            lock,
            lock.with_name(f"llmkit-{journal.nonce}.lock"),
            journal.marker,
            self.store.lock_timeout_s,
            lambda: self._busy(lock, "using the repository's index"),
        )

    def _busy(self, lock: Path, doing: str) -> RepositoryBusy:
        where = os.path.relpath(lock, self.store.root)
        return RepositoryBusy(
            f"{where} exists: another git command is {doing} (or one crashed and left the file"
            f" behind). Nothing was written; try again shortly. If no git command is running,"
            f" remove {where}.",
            headers={"Retry-After": "1"},
        )

    def _prepare_index(self, journal: Journal) -> None:
        """Move the author's index, with only this path's entry changed, into index.lock
        (which llmkit holds), journalling its hash first so that recovery knows it is ours."""
        index = self.index_lock.with_name("index")
        prepared = index.with_name(f"llmkit-{journal.nonce}.index")
        if index.exists():
            # copy2 keeps the mtime that git's check for racily clean entries compares with.
            shutil.copy2(index, prepared)
        self._set_entry(journal, {"GIT_INDEX_FILE": str(prepared)})
        journal.index_sha256 = hashlib.sha256(prepared.read_bytes()).hexdigest()
        self._write_journal(journal)
        _fault("journaled")
        os.replace(prepared, self.index_lock)
        _fault("index-prepared")

    def _move_ref(self, journal: Journal) -> None:
        """The commit point: a compare-and-swap of the ref from the old head to the commit."""
        assert journal.ref and journal.new_commit
        if _FAULT_PLAN is not None:
            self._simulate_kill_in_update_ref(journal)
        no_deref = ["--no-deref"] if journal.ref == "HEAD" else []
        proc = self.store.git(
            "update-ref",
            "-m",
            f"llmkit: {journal.path}",
            *no_deref,
            journal.ref,
            journal.new_commit,
            journal.old_head or ZERO_SHA,
            env=self.store.identity_env(),
            check=False,
        )
        if proc.returncode == 0:
            return
        for held in ref_locks(self.store, journal.ref):
            if held.exists():
                raise self._busy(held, "updating the branch")
        raise Conflict(f"The branch moved while writing {journal.path}; try again ({proc.stderr})")

    def _simulate_kill_in_update_ref(self, journal: Journal) -> None:
        """Test-only (LLMKIT_FAULT_AT): leave what a kill inside `git update-ref` leaves, die."""
        assert journal.ref and journal.new_commit
        ref_lock, *head_lock = ref_locks(self.store, journal.ref)
        if _fault_due("in-update-ref"):
            # git has written the new sha into the ref's lock and locked HEAD to log through it.
            ref_lock.parent.mkdir(parents=True, exist_ok=True)
            ref_lock.write_text(journal.new_commit + "\n")
            for lock in head_lock:
                lock.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        if _fault_due("in-update-ref-committed"):
            # git has renamed the ref's lock into place, but not yet removed HEAD's.
            old = journal.old_head or ZERO_SHA
            self.store.git("update-ref", journal.ref, journal.new_commit, old)
            for lock in head_lock:
                lock.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    def _finish(self, journal: Journal, content: bytes | None) -> None:
        """After the commit point: bring the working tree and `.git/index` along, then drop the
        journal. Until the lock is renamed over the index, it keeps git commands out."""
        self._put_worktree(journal, content)
        _fault("worktree-written")
        os.replace(self.index_lock, self.index_lock.with_name("index"))
        _fault("index-installed")
        self._remove_journal()
        _fault("journal-removed")

    def _finish_by_recovery(self, journal: Journal, error: Exception) -> None:
        """The commit landed but finishing it failed: let recovery roll it forward; if it
        cannot either, say what state the repository is in."""
        try:
            self.recover()
        except Exception as again:
            raise GitError(
                f"{journal.path} was committed as {(journal.new_commit or '')[:12]}, but the"
                f" working tree or .git/index could not be brought along ({error}; {again});"
                " llmkit finishes it before the next write, or at the next start"
            ) from error

    def _put_worktree(self, journal: Journal, content: bytes | None) -> None:
        """Replace the working-tree file atomically (or remove it), never through a link."""
        assert journal.path is not None
        target = self.store.confine(journal.path)
        if content is None:
            target.unlink(missing_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = _worktree_temp(target, journal.nonce)
        write_synced(temp, content, 0o755 if journal.mode == "100755" else 0o644)
        _fault("worktree-temp")
        os.replace(temp, target)

    # -- recovery ------------------------------------------------------------------------

    def recover(self) -> str | None:
        """Finish or undo the write the journal names; returns what was done, or None. The
        flock is held, so no llmkit write is under way: whatever the journal names was left by
        one that was killed."""
        self._remove_stray_temps()
        journal = self._read_journal()
        if journal is None:
            return None
        if not journal.committed or journal.ref is None or journal.path is None:
            self._release_index_lock(journal)
            outcome = "cleaned up after a write killed before it had a commit"
        else:
            assert journal.new_commit is not None
            now = self.store.ref_value(journal.ref)
            self._remove_ref_locks(journal, now)
            if now == journal.new_commit and self.store.head_ref() == journal.ref:
                try:
                    self._roll_forward(journal)
                except OSError as exc:
                    raise GitError(
                        f"The write of {journal.path}, committed as {journal.new_commit[:12]},"
                        f" could not be brought into the working tree and .git/index ({exc});"
                        " llmkit tries again before every write and at every start"
                    ) from exc
                outcome = f"finished the write of {journal.path} ({journal.new_commit[:12]})"
            elif now is not None and self.store.is_ancestor(journal.new_commit, now):
                # Someone committed on top or switched branches since (by hand, past our
                # lock): the working tree and the index are theirs now.
                self._release_index_lock(journal)
                outcome = (
                    f"left the working tree alone: the write of {journal.path} is committed"
                    f" ({journal.new_commit[:12]}), and the repository has moved on since"
                )
            else:
                self._release_index_lock(journal)
                outcome = f"undid the write of {journal.path}, killed before it committed"
        self._remove_temps(journal)
        self._remove_journal()
        return outcome

    def _roll_forward(self, journal: Journal) -> None:
        """The commit landed: bring the working tree and `.git/index` along as the write would
        have, holding index.lock throughout (the one the crash left, or a new one). If this
        fails, the lock and the journal stay, and the next recovery picks up from there."""
        assert journal.path is not None
        held = self._index_lock_state(journal)
        old_entries = _entries(journal.mode, journal.old_blob)
        if held not in ("marker", "prepared"):
            tree_behind = self._worktree_blob(journal) == journal.old_blob
            if not tree_behind and self.store.index_entries(journal.path) != old_entries:
                return  # both were brought along before the kill
            self._lock_index(journal)
            held = "marker"
        _fault("recovery-locked")
        if self._worktree_blob(journal) == journal.old_blob:
            content = None
            if journal.new_blob is not None:
                content = self.store.git("cat-file", "blob", journal.new_blob).stdout
            self._put_worktree(journal, content)
        # Anything else in the working tree is an author's edit made since, and stays.
        _fault("recovery-worktree-written")
        if held == "marker" and self.store.index_entries(journal.path) == old_entries:
            self._prepare_index(journal)
            held = "prepared"
        if held == "prepared":
            os.replace(self.index_lock, self.index_lock.with_name("index"))
        else:
            self.index_lock.unlink()

    def _worktree_blob(self, journal: Journal) -> str | None:
        """The blob id of the file the journal names; "?" when a link or a folder is there."""
        assert journal.path is not None
        try:
            data = read_regular(self.store.confine(journal.path), journal.path)
        except LlmkitError:
            return "?"
        return blob_id(data) if data is not None else None

    def _index_lock_state(self, journal: Journal) -> str | None:
        """ "marker" or "prepared" when index.lock is ours (its bytes prove it), "foreign" when
        it is someone else's, None when there is none."""
        return lock_state(self.index_lock, journal.marker, journal.index_sha256)

    def _release_index_lock(self, journal: Journal) -> None:
        if self._index_lock_state(journal) in ("marker", "prepared"):
            self.index_lock.unlink(missing_ok=True)

    def _remove_ref_locks(self, journal: Journal, ref_now: str | None) -> None:
        assert journal.ref and journal.new_commit
        remove_ref_locks(self.store, journal.ref, journal.new_commit, ref_now)

    def _remove_temps(self, journal: Journal) -> None:
        git_dir = self.store.git_dirs[0]
        for suffix in ("lock", "index", "index.lock"):
            (git_dir / f"llmkit-{journal.nonce}.{suffix}").unlink(missing_ok=True)
        if journal.path:
            try:
                target = self.store.confine(journal.path)
                _worktree_temp(target, journal.nonce).unlink(missing_ok=True)
            except (LlmkitError, OSError):
                pass  # a link, or a file where its folder was: nothing of ours is there

    def _remove_stray_temps(self) -> None:
        """Private indexes (and their locks) of writes killed while building their tree, and a
        journal killed while it was being written (the journal it would have replaced, if any,
        is still whole)."""
        folder = self.store.lock_path.parent
        if folder.is_dir():
            for path in [*folder.glob("index-*"), folder / f"{JOURNAL_NAME}.tmp"]:
                path.unlink(missing_ok=True)

    # -- the journal file ----------------------------------------------------------------

    def _write_journal(self, journal: Journal) -> None:
        replace_synced(self.journal_path, json.dumps(asdict(journal)).encode(), 0o600)

    def _read_journal(self) -> Journal | None:
        raw = read_or_none(self.journal_path)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            known = {f.name for f in fields(Journal)}
            journal = Journal(**{k: v for k, v in data.items() if k in known})
            if not isinstance(journal.nonce, str) or not _NONCE_RE.fullmatch(journal.nonce):
                raise ValueError(f"nonce {journal.nonce!r}")
        except (ValueError, TypeError, AttributeError) as exc:
            raise GitError(
                f"{self.journal_path} records an interrupted write but cannot be read ({exc});"
                " look at it, then remove it"
            ) from None
        return journal

    def _remove_journal(self) -> None:
        remove_synced(self.journal_path)


def ref_locks(store: GitStore, ref: str) -> tuple[Path, ...]:
    """The lock files `git update-ref <ref>` takes, in its order: the ref's own, then HEAD's
    (git logs through HEAD when HEAD names the branch, and writes nothing into it)."""
    own, common = store.git_dirs
    if ref == "HEAD":
        return (own / "HEAD.lock",)
    return (common / f"{ref}.lock", own / "HEAD.lock")


def remove_ref_locks(store: GitStore, ref: str, new_commit: str, ref_now: str | None) -> None:
    """Remove the ref locks a kill inside `git update-ref` (moving `ref` to `new_commit`) left,
    when they are provably ours: one holding our new commit (nobody else knows it), or an empty
    HEAD.lock when our transaction is known to have held it. git locks the ref first and HEAD
    second, and nobody can create a lock while ours exists, so our sha in the ref's lock, or the
    ref at our commit (`ref_now`), proves it; even then the lock must outlive what a live git
    would hold it (DESIGN.md "Git write protocol")."""
    ours = f"{new_commit}\n".encode()
    ref_lock, *head_lock = ref_locks(store, ref)
    in_ref_lock = read_or_none(ref_lock)
    transaction_was_ours = in_ref_lock == ours or ref_now == new_commit
    if in_ref_lock == ours:
        ref_lock.unlink(missing_ok=True)
    for lock in head_lock:
        content = read_or_none(lock)
        stale = content == b"" and outlives(lock, store.lock_timeout_s)
        if content == ours or (transaction_was_ours and stale):
            lock.unlink(missing_ok=True)


def read_regular(target: Path, rel_path: str) -> bytes | None:
    """The bytes of the regular file at `target`, or None when nothing is there; a link or a
    folder there is refused."""
    try:
        st = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(st.st_mode):
        raise InvalidKey(f"{rel_path} is a symbolic link; llmkit never writes through links")
    if not stat.S_ISREG(st.st_mode):
        raise Conflict(f"{rel_path} is a folder or a special file, not a file llmkit can write")
    with open(os.open(target, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:
        return fh.read()


def _entries(mode: str | None, blob: str | None) -> list[tuple[str, str]]:
    """The index entries of a path holding `blob` (None: absent) when nothing is staged."""
    return [(mode or "100644", blob)] if blob else []


def _worktree_temp(target: Path, nonce: str) -> Path:
    return target.parent / f".{target.name}.llmkit-{nonce}.tmp"
