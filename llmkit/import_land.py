"""Landing an import's commits in the repository, crash-safe at every step.

An import commits many files in many commits at once, so it has a protocol of its own beside
the store's one-file write (`gitwrite`, DESIGN.md "Git write protocol"), built the same way and
run under the same flock:

  write every commit with one `git fast-import`, onto no branch (unreachable, so invisible)
  -> journal the ref, old head, new tip and each file's old and new blob -> take
  `.git/index.lock` as git does (exclusive, holding our marker from its first instant) -> check
  again, under both locks, that no file to write has edits of the author's -> move the
  author's index, with only these files' entries changed, into the lock -> `git update-ref
  <ref> <tip> <old head>` (THE COMMIT POINT) -> write the working-tree files -> rename the lock
  over `.git/index` -> drop the journal.

Nothing visible changes before the commit point, and after it index.lock keeps every git
command that stages or commits out until the working tree and the index agree with the new
HEAD. `recover()` runs before every import: a ref still at the old head means roll back (drop
our lock), a ref at the new tip means roll forward (write the files still at their old content,
install the index). A lock is removed only when its bytes prove it is ours.

`LLMKIT_IMPORT_FAULT_AT=<step>` (tests only) SIGKILLs the process when it reaches `step`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmkit.durable import (
    lock_state,
    remove_synced,
    replace_synced,
    take_lock,
    write_synced,
)
from llmkit.errors import Conflict, InvalidKey, LlmkitError, RepositoryBusy
from llmkit.gitwrite import ref_locks, remove_ref_locks
from llmkit.import_history import CONFIG_PATH, Plan, PlannedCommit, head_tree
from llmkit.import_source import ImportRefused
from llmkit.store import ZERO_SHA, GitError, GitStore, blob_id, sanitize_identity

JOURNAL_NAME = "import.journal"
# fast-import writes onto this ref and resets it at the end, so no ref is ever left behind.
PENDING_REF = "refs/llmkit-import/pending"
FAULT_ENV = "LLMKIT_IMPORT_FAULT_AT"
# The points of a landing, in order, where a test can kill the process (`in-update-ref` leaves
# what a kill inside `git update-ref` leaves: the branch's lock holding the new sha, and an
# empty HEAD.lock); the first five come before the commit point. And one in the rows.
STEPS = (
    "objects-written",
    "journaled",
    "index-locked",
    "index-prepared",
    "in-update-ref",
    "ref-moved",
    "worktree-written",
    "index-installed",
)
ROW_STEPS = ("logs-written",)


def fault(step: str) -> None:
    """Tests only: SIGKILL this process at `step` when LLMKIT_IMPORT_FAULT_AT names it."""
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Journal:
    """What a landing is about to do, fsynced before it does it."""

    nonce: str
    ref: str
    old_head: str | None
    new_tip: str
    files: dict[str, list[str | None]] = field(default_factory=dict)  # path -> [old, new] blob
    index_sha256: str | None = None

    @property
    def marker(self) -> bytes:
        return f"llmkit import {self.nonce}\n".encode()


# --- checks ---------------------------------------------------------------------------------


def check_clean(store: GitStore, finals: dict[str, bytes]) -> None:
    """Refuse when a file the import writes has edits of the author's, in the working tree or
    staged. A file that already holds what the import writes is not an edit."""
    if not finals:
        return
    head = head_tree(store)
    staged = _staged(store, sorted(finals))
    problems = []
    for path, content in sorted(finals.items()):
        target = _target(store, path)
        allowed = {head.get(path), blob_id(content)}
        if target.is_dir() and not target.is_symlink():
            problems.append(f"{path} is a folder")
            continue
        on_disk = _worktree_blob(target)
        if on_disk not in allowed:
            problems.append(f"{path} has uncommitted changes in the working tree")
        elif staged.get(path, (None, None))[1] not in allowed:
            problems.append(f"{path} has staged changes")
    if problems:
        raise ImportRefused(
            "Cannot import: " + "; ".join(problems) + ". Commit or discard them, then import"
            " again; nothing was imported."
        )


def _target(store: GitStore, path: str) -> Path:
    """The working-tree file of `path`: inside prompts/ or evals/, or llmkit.yaml itself."""
    if path == CONFIG_PATH:
        target = store.root / CONFIG_PATH
        if target.is_symlink():
            raise ImportRefused(f"Cannot write {CONFIG_PATH}: it is a symbolic link")
        return target
    try:
        return store.confine(path)
    except InvalidKey as exc:
        raise ImportRefused(f"Cannot write {path}: {exc.message}") from None


def _worktree_blob(target: Path) -> str | None:
    """The blob id of a regular file at `target`; None when there is none; "?" for anything
    else (a link, a folder)."""
    if target.is_symlink():
        return "?"
    if not target.exists():
        return None
    if not target.is_file():
        return "?"
    return blob_id(target.read_bytes())


def _staged(store: GitStore, paths: list[str]) -> dict[str, tuple[str, str]]:
    """path -> (mode, blob) of the author's index entries (stage 0) for these paths."""
    if not paths:
        return {}
    entries = {}
    raw = store.git("--literal-pathspecs", "ls-files", "-s", "-z", "--", *paths).stdout
    for entry in raw.decode("utf-8", "surrogateescape").split("\0"):
        meta, sep, path = entry.partition("\t")
        parts = meta.split()
        if sep and len(parts) == 3 and parts[2] == "0":
            entries[path] = (parts[0], parts[1])
    return entries


# --- landing ----------------------------------------------------------------------------------


def land(store: GitStore, plan: Plan) -> None:
    """Write the planned commits and bring the branch, the working tree and the author's index
    to them (the protocol in the module docstring). The caller holds the store's flock and has
    run `recover()`."""
    ref, head = store.head_ref(), store.head()
    _fast_import(store, plan.commits, head)
    fault("objects-written")
    tip = plan.commits[-1].sha
    assert tip is not None
    finals = plan.finals()
    before = head_tree(store)
    journal = Journal(
        nonce=secrets.token_hex(8),
        ref=ref,
        old_head=head,
        new_tip=tip,
        files={path: [before.get(path), blob_id(data)] for path, data in sorted(finals.items())},
    )
    _write_journal(store, journal)
    fault("journaled")
    try:
        _lock_index(store, journal)
        fault("index-locked")
        check_clean(store, finals)  # again, now that nobody can stage
        _prepare_index(store, journal)
        fault("index-prepared")
        _move_ref(store, journal)
    except BaseException:
        recover(store)  # the ref did not move, so this undoes; it never waits
        raise
    fault("ref-moved")
    try:
        _finish(store, journal, finals)
    except OSError as exc:
        raise GitError(
            f"The import is committed ({tip[:12]}), but the working tree or .git/index could"
            f" not be brought along ({exc}); the next `llmkit import-llmkit` finishes it"
        ) from exc
    plan.summary.commits = [c.sha for c in plan.commits if c.sha]


def _lock_index(store: GitStore, journal: Journal) -> None:
    """Take `.git/index.lock` exclusively, as git does, holding our marker from its first
    instant (a hard link to a synced file that holds it); wait up to the store's lock timeout
    while someone else holds it."""
    lock = _index_lock(store)

    def busy() -> RepositoryBusy:
        where = os.path.relpath(lock, store.root)
        return RepositoryBusy(
            f"{where} exists: another git command is using the repository's index (or one"
            f" crashed and left the file behind). Nothing was imported; try again shortly. If"
            f" no git command is running, remove {where}."
        )

    take_lock(
        lock,
        lock.with_name(f"llmkit-import-{journal.nonce}.lock"),
        journal.marker,
        store.lock_timeout_s,
        busy,
    )


def _prepare_index(store: GitStore, journal: Journal) -> None:
    """Move the author's index, with only the imported files' entries changed, into the lock
    (journalling its hash first, so that recovery knows it is ours)."""
    lock = _index_lock(store)
    index = lock.with_name("index")
    prepared = lock.with_name(f"llmkit-import-{journal.nonce}.index")
    if index.exists():
        shutil.copy2(index, prepared)  # keeps the mtime git's racy-entry checks compare with
    lines = "".join(f"100644 {new}\t{path}\n" for path, (_, new) in journal.files.items())
    store.git(
        "update-index",
        "--index-info",
        input=lines.encode("utf-8"),
        env={"GIT_INDEX_FILE": str(prepared)},
    )
    journal.index_sha256 = hashlib.sha256(prepared.read_bytes()).hexdigest()
    _write_journal(store, journal)
    os.replace(prepared, lock)


def _move_ref(store: GitStore, journal: Journal) -> None:
    """The commit point: a compare-and-swap of the branch from the old head to the new tip."""
    if os.environ.get(FAULT_ENV) == "in-update-ref":
        locks = ref_locks(store, journal.ref)  # the ref's, then HEAD's
        locks[0].parent.mkdir(parents=True, exist_ok=True)
        locks[0].write_text(journal.new_tip + "\n")
        locks[-1].touch()
        fault("in-update-ref")
    no_deref = ["--no-deref"] if journal.ref == "HEAD" else []
    proc = store.git(
        "update-ref",
        "-m",
        "llmkit: import from LLMKit",
        *no_deref,
        journal.ref,
        journal.new_tip,
        journal.old_head or ZERO_SHA,
        env=store.identity_env(),
        check=False,
    )
    if proc.returncode != 0:
        detail = proc.stderr.strip()
        raise Conflict(
            f"The import could not move the branch ({detail}); nothing was imported and the"
            " working tree and the index are as they were. Run the import again."
        )


def _finish(store: GitStore, journal: Journal, finals: dict[str, bytes] | None) -> None:
    """After the commit point: the working-tree files still at their old content take the new
    one (anything else there is an author's edit made since, and stays), the lock holding the
    prepared index becomes `.git/index`, and the journal goes."""
    for path, (old, new) in journal.files.items():
        target = _target(store, path)
        if _worktree_blob(target) != old:
            continue
        if finals is not None:
            data = finals[path]
        else:
            data = store.git("cat-file", "blob", str(new)).stdout
        _write_file(target, data, journal.nonce)
    fault("worktree-written")
    lock = _index_lock(store)
    if _lock_state(lock, journal) == "prepared":
        os.replace(lock, lock.with_name("index"))
    fault("index-installed")
    _remove_journal(store)


# --- recovery ---------------------------------------------------------------------------------


def recover(store: GitStore) -> str | None:
    """Finish or undo a landing that a kill interrupted; returns what was done, or None. The
    caller holds the store's flock, so whatever the journal names was left by a dead process."""
    for folder in store.lock_path.parent.glob("import-*"):
        shutil.rmtree(folder, ignore_errors=True)  # fast-import's marks of a killed import
    journal = _read_journal(store)
    if journal is None:
        return None
    lock = _index_lock(store)
    state = _lock_state(lock, journal)
    now = store.ref_value(journal.ref)
    remove_ref_locks(store, journal.ref, journal.new_tip, now)
    if now == journal.new_tip and store.head_ref() == journal.ref:
        if state == "foreign":
            raise RepositoryBusy(
                f"An import was killed after it committed ({journal.new_tip[:12]}), and"
                f" {os.path.relpath(lock, store.root)} is held by another git command; run the"
                " import again once it is done"
            )
        if state == "marker":
            _prepare_index(store, journal)
        elif state is None:
            _bring_index_along(store, journal)
        _finish(store, journal, None)
        outcome = f"finished an import killed after it committed ({journal.new_tip[:12]})"
    else:
        if state in ("marker", "prepared"):
            lock.unlink(missing_ok=True)
        _remove_journal(store)
        outcome = "undid an import killed before it committed"
    _remove_temps(store, journal)
    return outcome


def _bring_index_along(store: GitStore, journal: Journal) -> None:
    """With no lock of ours left (it was installed, or removed by hand): give the entries still
    at their old blob the new one, as git itself would (it takes its own lock for that)."""
    staged = _staged(store, sorted(journal.files))
    lines = "".join(
        f"100644 {new}\t{path}\n"
        for path, (old, new) in journal.files.items()
        if staged.get(path, (None, None))[1] == old and old != new
    )
    if lines:
        store.git("update-index", "--index-info", input=lines.encode("utf-8"))


def _index_lock(store: GitStore) -> Path:
    return store.git_dirs[0] / "index.lock"


def _lock_state(lock: Path, journal: Journal) -> str | None:
    """Whose the lock is: "marker" or "prepared" when ours (its bytes prove it), "foreign"
    when someone else's, None when there is none."""
    return lock_state(lock, journal.marker, journal.index_sha256)


def _remove_temps(store: GitStore, journal: Journal) -> None:
    for suffix in ("index", "lock"):
        (store.git_dirs[0] / f"llmkit-import-{journal.nonce}.{suffix}").unlink(missing_ok=True)
    for path in journal.files:
        try:
            _temp_of(_target(store, path), journal.nonce).unlink(missing_ok=True)
        except (LlmkitError, OSError):
            pass  # a link or a file where its folder was: nothing of ours is there


def _temp_of(target: Path, nonce: str) -> Path:
    return target.parent / f".{target.name}.llmkit-import-{nonce}.tmp"


def _write_file(target: Path, data: bytes, nonce: str) -> None:
    """Replace `target` atomically through a temp file recovery can find by name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_of(target, nonce)
    write_synced(temp, data)
    os.replace(temp, target)


# --- the journal file -------------------------------------------------------------------------


def _journal_path(store: GitStore) -> Path:
    return store.lock_path.parent / JOURNAL_NAME


def _write_journal(store: GitStore, journal: Journal) -> None:
    path = _journal_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_synced(path, json.dumps(asdict(journal)).encode("utf-8"), 0o600)


def _read_journal(store: GitStore) -> Journal | None:
    path = _journal_path(store)
    path.with_name(f"{JOURNAL_NAME}.tmp").unlink(missing_ok=True)  # a journal never finished
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        journal = Journal(**data)
        if not re.fullmatch(r"[0-9a-f]{16}", journal.nonce):
            raise ValueError(f"nonce {journal.nonce!r}")
    except (ValueError, TypeError) as exc:
        raise GitError(
            f"{path} records an interrupted import but cannot be read ({exc}); look at it,"
            " then remove it"
        ) from None
    return journal


def _remove_journal(store: GitStore) -> None:
    remove_synced(_journal_path(store))


# --- writing the commits ----------------------------------------------------------------------


def _fast_import(store: GitStore, commits: list[PlannedCommit], head: str | None) -> None:
    """Write the commits with one `git fast-import`, fed as it reads, and learn their shas."""
    name, email = _identity(store)
    folder = tempfile.mkdtemp(prefix="import-", dir=store.lock_path.parent)
    try:
        marks = os.path.join(folder, "marks")
        with open(os.path.join(folder, "stderr"), "w+b") as errors:
            proc = subprocess.Popen(
                ["git", "fast-import", "--quiet", "--done", f"--export-marks={marks}"],
                cwd=store.root,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
            assert proc.stdin is not None
            try:
                for chunk in _fast_import_stream(commits, head, name, email):
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # it stopped reading: its exit status and stderr say why
            if proc.wait() != 0:
                errors.seek(0)
                detail = errors.read().decode("utf-8", "replace").strip()
                raise GitError(f"git fast-import failed: {detail}")
        with open(marks, encoding="ascii") as fh:
            shas = dict(line.split() for line in fh if line.strip())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for mark, commit in enumerate(commits, 1):
        commit.sha = shas[f":{mark}"]


def _fast_import_stream(
    commits: list[PlannedCommit], head: str | None, name: str, email: str
) -> Iterator[bytes]:
    yield f"reset {PENDING_REF}\n\n".encode()
    for mark, commit in enumerate(commits, 1):
        when = int(commit.when.timestamp())
        message = (commit.message + "\n\n" + "\n".join(commit.trailers) + "\n").encode("utf-8")
        header = f"commit {PENDING_REF}\nmark :{mark}\n"
        header += f"author {name} <{email}> {when} +0000\n"
        header += f"committer {name} <{email}> {when} +0000\n"
        yield header.encode("utf-8") + b"data %d\n%s\n" % (len(message), message)
        if mark == 1 and head:
            yield f"from {head}\n".encode()
        for path, data in sorted(commit.files.items()):
            yield f"M 100644 inline {path}\n".encode() + b"data %d\n" % len(data)
            yield data + b"\n"
        yield b"\n"
    yield f"reset {PENDING_REF}\n\ndone\n".encode()


def _identity(store: GitStore) -> tuple[str, str]:
    """The committer git would use here (llmkit's own when none is configured)."""
    ident = store.out("var", "GIT_COMMITTER_IDENT", env=store.identity_env())
    match = re.match(r"^(.*?) <(.*)> \d+ [+-]\d{4}$", ident)
    if match is None:
        return "llmkit", "llmkit@localhost"
    return sanitize_identity(match.group(1)) or "llmkit", sanitize_identity(match.group(2))
