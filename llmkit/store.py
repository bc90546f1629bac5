"""GitStore: the prompt repository as the source of truth.

Reads are done in bulk: one `git log --raw` pass yields every change to `prompts/` and `evals/`
with the blob id of each new content, and one `git cat-file --batch` process reads any number of
blobs. Nothing runs one git process per file or per version.

Git runs through GitPython, imported on first use (it takes longer to import than `llmkit --help`
may take): its `Git` command object runs every command, and a failure's stderr becomes the
GitError's message; its persistent `git cat-file --batch` reads a few blobs or a file at a commit
without starting a process; `Repo` reads refs straight from their files (a reftable repository's
refs are asked of git). The bulk history read stays one `git log --raw -z`, parsed here, and
commits stay plumbing on a private index (`gitwrite`): GitPython's per-commit diffs would be
slower, and its `IndexFile` cannot hold `.git/index.lock` the way the write protocol does.

Writes commit exactly one file without touching what an author has staged, and are crash-safe at
every step (`gitwrite`, and DESIGN.md "Git write protocol"). Under llmkit's flock: journal a
nonce and take git's own `.git/index.lock` as git does (bounded wait, else 503); check the
preconditions and write blob, tree and commit (unreachable); journal the write and move the new
`.git/index` into the lock; move the branch with a compare-and-swap `git update-ref` (the commit
point); replace the working-tree file atomically; rename the lock over `.git/index`; drop the
journal; acknowledge. Recovery, at start and before every write, rolls an interrupted write back
(before the commit point) or forward (after it), and deletes only locks it can prove are its own.

Nothing under `prompts/` or `evals/` is read or written through a symbolic link.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import stat
import subprocess
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Self

from llmkit.config import EVALS_DIR, PROMPTS_DIR
from llmkit.errors import ConfigError, InvalidKey, LlmkitError, NotFound

if TYPE_CHECKING:
    from git import Repo

    from llmkit.gitwrite import GitWriter

TRACKED_DIRS = (PROMPTS_DIR, EVALS_DIR)
ZERO_SHA = "0" * 40
ALREADY_EXISTS = "already_exists"
DEFAULT_LOCK_TIMEOUT_S = 3.0
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_LOG_FORMAT = "%x01%H%x1f%an%x1f%ae%x1f%at%x1f%ct%x1f%B%x1f"
_FULL_SHA_RE = re.compile(r"[0-9a-f]{40}")
# What the persistent `git cat-file --batch` is asked for: a full object id, or a commit id and a
# path. git answers anything else (an ambiguous prefix, a ref name that is also a tag) with
# warnings on a stderr pipe that GitPython never reads; once that pipe filled up, the process
# would stop answering.
_OBJECT_NAME_RE = re.compile(r"[0-9a-f]{40}(?::[^\n]+)?")
# Up to this many blobs are read one at a time through the persistent process (no process to
# start); more are streamed through a `cat-file --batch` of their own, which costs a process
# start but less per blob (measured on 20,000 blobs: 1.2 s streamed, 1.9 s one at a time).
PERSISTENT_READ_MAX = 64


@dataclass(frozen=True)
class Commit:
    sha: str
    author_name: str
    author_email: str
    authored_at: int
    committed_at: int
    message: str


@dataclass(frozen=True)
class Change:
    path: str
    status: str  # A, M, D or T, as git reports it; M for a merge's own change
    blob: str | None  # the new content's blob id; None when the file was deleted


class GitError(LlmkitError):
    status = 500
    type = "server_error"
    code = "git_error"


@dataclass(frozen=True)
class GitResult:
    """What a git command left: its exit status, its output byte for byte, and its stderr."""

    returncode: int
    stdout: bytes
    stderr: str


def blob_id(data: bytes) -> str:
    """The id git gives a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sanitize_message(message: str | None, default: str) -> str:
    text = _CONTROL_RE.sub("", unicodedata.normalize("NFC", message or "")).strip()
    text = re.sub(r"\n{3,}", "\n\n", text)[:10_000]
    return text or default


def sanitize_identity(value: str | None, limit: int = 200) -> str:
    return re.sub(r"[<>\x00-\x1f\x7f]", "", value or "").strip()[:limit]


class GitStore:
    def __init__(
        self,
        root: Path,
        lock_path: Path | None = None,
        *,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    ) -> None:
        self.root = Path(root).resolve()
        if not (self.root / ".git").exists():
            raise ConfigError(f"{self.root} is not a git repository (no .git)")
        self.lock_path = lock_path or self.root / ".llmkit" / "write.lock"
        # How long a write waits for another git process to release .git/index.lock.
        self.lock_timeout_s = lock_timeout_s
        self._thread_lock = threading.Lock()
        self._identity_env: dict[str, str] | None = None
        self._repo: Repo | None = None
        self._repo_lock = threading.Lock()
        # GitPython's persistent cat-file answers requests in order, one at a time: two threads
        # interleaving theirs would read each other's answers.
        self._cat_file_lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the git processes the store keeps running. The store stays usable: the next
        read that needs one starts it again."""
        with self._repo_lock:
            repo, self._repo = self._repo, None
        if repo is not None:
            with self._cat_file_lock:
                repo.close()

    @property
    def repo(self) -> Repo:
        """GitPython's Repo (its `git` is the command object every command runs through),
        opened on first use."""
        with self._repo_lock:
            if self._repo is None:
                from git import Repo
                from git.exc import InvalidGitRepositoryError, NoSuchPathError

                try:
                    self._repo = Repo(self.root)
                except (InvalidGitRepositoryError, NoSuchPathError) as exc:
                    raise ConfigError(f"{self.root} is not a git repository ({exc})") from exc
            return self._repo

    # -- running git ---------------------------------------------------------------------

    def git(
        self,
        *args: str,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        timeout_s: float | None = None,
    ) -> GitResult:
        """Run `git <args>` in the repository. With `check`, a failure raises GitError whose
        message is git's stderr. With `timeout_s` (no input), git is killed after that long
        (a fetch from a remote that stalls)."""
        from git.exc import GitCommandError

        cmd = self.repo.git
        command = [cmd.GIT_PYTHON_GIT_EXECUTABLE, "-c", "core.quotePath=false", *args]
        try:
            if input is None:
                status, out, err = cmd.execute(
                    command,
                    with_extended_output=True,
                    with_exceptions=False,
                    stdout_as_string=False,
                    strip_newline_in_stdout=False,
                    env=env,
                    kill_after_timeout=timeout_s,
                )
            else:
                # execute() takes stdin only as a file; a pipe fed by communicate() cannot
                # deadlock on a large input.
                proc = cmd.execute(command, istream=subprocess.PIPE, as_process=True, env=env)
                out, raw_err = proc.communicate(input)
                status, err = proc.returncode, raw_err.decode("utf-8", "replace")
        except GitCommandError as exc:  # git could not be started at all
            raise GitError(f"git {args[0]} failed: {exc}") from exc
        result = GitResult(status, out, err.strip())
        if check and status != 0:
            raise GitError(f"git {args[0]} failed: {result.stderr}")
        return result

    def out(self, *args: str, **kwargs: object) -> str:
        return self.git(*args, **kwargs).stdout.decode("utf-8", "replace").strip()  # type: ignore[arg-type]

    # -- refs ----------------------------------------------------------------------------

    @cached_property
    def _refs_in_files(self) -> bool:
        """Whether refs are loose files and packed-refs, which GitPython reads without running
        git; a reftable (`extensions.refStorage`) is only readable by git itself."""
        config = self.repo.config_reader("repository")
        return str(config.get_value("extensions", "refstorage", "files")).lower() == "files"

    def _ref_target(self, ref: str) -> str | None:
        """The commit `ref` (HEAD, or a full ref name) holds, following symbolic refs; None when
        it does not exist (an unborn branch)."""
        if not self._refs_in_files:
            return self.out("rev-parse", "--verify", "--quiet", ref, check=False) or None
        from git.refs.symbolic import SymbolicReference

        try:
            return SymbolicReference.dereference_recursive(self.repo, ref)
        except (ValueError, AssertionError):  # missing, or not a ref git could have written
            return None

    def head_ref(self) -> str:
        """The branch HEAD names (`refs/heads/...`, even unborn), or `HEAD` when detached."""
        if not self._refs_in_files:
            return self.out("symbolic-ref", "--quiet", "HEAD", check=False) or "HEAD"
        try:
            return self.repo.head.reference.path
        except TypeError:  # GitPython's way of saying HEAD is detached
            return "HEAD"

    def head(self) -> str | None:
        """The commit HEAD points to, or None on an unborn branch."""
        return self._ref_target("HEAD")

    def branch(self) -> str | None:
        """The short name of the branch HEAD names, None when detached."""
        ref = self.head_ref()
        return None if ref == "HEAD" else ref.removeprefix("refs/heads/")

    def ref_value(self, ref: str) -> str | None:
        return self._ref_target(ref)

    def branches_and_tags(self, limit: int = 200) -> tuple[list[str], list[str]]:
        """The short names of the local branches and of the tags, each sorted, at most `limit`
        of each (a person picks from them; a repository with thousands is typed into)."""
        listing = self.out(
            "for-each-ref", "--format=%(refname)", "refs/heads", "refs/tags", check=False
        )
        branches: list[str] = []
        tags: list[str] = []
        for ref in listing.splitlines():
            if ref.startswith("refs/heads/") and len(branches) < limit:
                branches.append(ref.removeprefix("refs/heads/"))
            elif ref.startswith("refs/tags/") and len(tags) < limit:
                tags.append(ref.removeprefix("refs/tags/"))
        return branches, tags

    def resolve_ref(self, ref: str) -> str | None:
        """A commit sha for a branch, tag, or sha prefix; None when there is no such ref. git
        resolves it (GitPython's rev_parse orders refs and sha prefixes differently)."""
        if (
            not ref
            or ref.startswith("-")
            or any(c in ref for c in " \t\n\x00:?*[\\")
            or ".." in ref
        ):
            return None
        proc = self.git(
            "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", check=False
        )
        return proc.stdout.decode().strip() or None

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.git("merge-base", "--is-ancestor", older, newer, check=False).returncode == 0

    # -- bulk reads ----------------------------------------------------------------------

    def log_changes(
        self, since: str | None = None, until: str | None = None
    ) -> list[tuple[Commit, list[Change]]]:
        """Every commit that changed prompts/ or evals/, oldest first, with its changes.

        A merge lists the files whose merged content differs from every parent (`-c`), such as
        a file both sides edited: a change that none of the merged commits made on its own.
        """
        until = until or self.head()
        if until is None:
            return []
        rev = f"{since}..{until}" if since else until
        raw = self.git(
            "log",
            "-z",
            "--reverse",
            "--topo-order",
            "--no-renames",
            "--raw",
            "--no-abbrev",
            "-c",
            f"--format={_LOG_FORMAT}",
            rev,
            "--",
            *TRACKED_DIRS,
        ).stdout.decode("utf-8", "surrogateescape")
        return list(_parse_log(raw))

    def read_blobs(self, ids: Iterable[str]) -> dict[str, bytes]:
        """Contents of blobs by full id; an id with no blob behind it is left out. A few are
        read through the persistent `cat-file`, many through one streaming process."""
        wanted = [i for i in dict.fromkeys(ids) if _FULL_SHA_RE.fullmatch(i)]
        if len(wanted) > PERSISTENT_READ_MAX:
            return self._stream_blobs(wanted)
        found = ((sha, self._read_object(sha)) for sha in wanted)
        return {sha: obj[1] for sha, obj in found if obj is not None and obj[0] == "blob"}

    def file_at(self, commit: str, path: str) -> bytes | None:
        """The content of `path` at `commit`; None when it is not a file there."""
        sha = commit if _FULL_SHA_RE.fullmatch(commit) else self.resolve_ref(commit)
        found = self._read_object(f"{sha}:{path}") if sha and "\n" not in path else None
        return found[1] if found is not None and found[0] == "blob" else None

    def _read_object(self, name: str) -> tuple[str, bytes] | None:
        """(type, content) of one object through GitPython's persistent `git cat-file
        --batch`; None when git finds no such object. A process that died or fell out of step
        is replaced once, then the read fails with GitError."""
        from git.exc import GitCommandError

        if not _OBJECT_NAME_RE.fullmatch(name):
            raise ValueError(f"not a full object id, or one with a path: {name!r}")
        failure: Exception | None = None
        with self._cat_file_lock:
            cmd = self.repo.git
            for _ in range(2):
                try:
                    _, kind, size, data = cmd.get_object_data(name)
                except ValueError as exc:
                    # GitPython quotes git's answer; "<name> missing" is the one that means
                    # the process is fine and the object is not there.
                    if str(exc).rstrip("'\"").endswith(" missing"):
                        return None
                    failure = exc
                except (OSError, GitCommandError) as exc:
                    failure = exc
                else:
                    if len(data) == size:
                        # GitPython hands back git's header words as bytes, typed as str.
                        return kind.decode() if isinstance(kind, bytes) else kind, data
                    failure = EOFError(f"read {len(data)} of {size} bytes")
                cmd.clear_cache()  # the next request starts a new process
        raise GitError(f"git cat-file could not read {name}: {failure}")

    def _stream_blobs(self, wanted: list[str]) -> dict[str, bytes]:
        """Many blobs through one `git cat-file --batch` of their own: every id is written
        while the answers are read, so neither side waits for the other."""
        from git.exc import GitCommandError

        cmd = self.repo.git
        auto = cmd.execute(
            [cmd.GIT_PYTHON_GIT_EXECUTABLE, "cat-file", "--batch"],
            istream=subprocess.PIPE,
            as_process=True,
        )
        proc = auto.proc  # the Popen; `auto` stops it if this is left early
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        stdin, out = proc.stdin, proc.stdout

        def feed() -> None:
            try:
                stdin.write("".join(f"{sha}\n" for sha in wanted).encode())
                stdin.close()
            except (BrokenPipeError, ValueError):
                pass  # the process is gone; the reads below stop short

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        result: dict[str, bytes] = {}
        try:
            for sha in wanted:
                header = out.readline().split()
                if not header:
                    raise GitError(
                        f"git cat-file stopped after {len(result)} of {len(wanted)} blobs"
                    )
                if len(header) < 3 or header[1] != b"blob":
                    continue  # missing object
                size = int(header[2])
                result[sha] = out.read(size)
                out.read(1)
        except BaseException:
            proc.kill()  # the writer may be blocked on a pipe that nobody reads any more
            writer.join()
            proc.wait()
            raise
        writer.join()
        try:
            auto.wait()
        except GitCommandError as exc:
            raise GitError(f"git cat-file failed: {exc}") from exc
        return result

    def last_commit_touching(self, path: str, ref: str = "HEAD") -> str | None:
        proc = self.git("log", "-1", "--format=%H", ref, "--", path, check=False)
        return proc.stdout.decode().strip() or None

    def commit_info(self, sha: str) -> Commit:
        raw = self.git("log", "-1", f"--format={_LOG_FORMAT}", sha).stdout.decode(
            "utf-8", "replace"
        )
        for commit, _ in _parse_log(raw):
            return commit
        raise NotFound(f"No commit {sha}")

    def blob_at_head(self, path: str) -> str | None:
        proc = self.git("rev-parse", "--verify", "--quiet", f"HEAD:{path}", check=False)
        return proc.stdout.decode().strip() or None

    @cached_property
    def git_dirs(self) -> tuple[Path, Path]:
        """The git folder holding this work tree's index and HEAD, and the one holding the
        branches (they differ in a linked worktree)."""
        own, common = self.out("rev-parse", "--absolute-git-dir", "--git-common-dir").splitlines()
        return Path(own), (self.root / common).resolve()

    def tree_entry(self, commit: str, rel_path: str) -> tuple[str | None, str | None, str | None]:
        """(mode, type, id) of `rel_path` in `commit`; Nones when it is not there."""
        out = self.git("ls-tree", "-z", commit, "--", rel_path).stdout
        for record in filter(None, out.decode("utf-8", "surrogateescape").split("\0")):
            meta, _, path = record.partition("\t")
            mode, kind, sha = meta.split()
            if path == rel_path:
                return mode, kind, sha
        return None, None, None

    def index_entries(self, rel_path: str, index_file: Path | None = None) -> list[tuple[str, str]]:
        """`rel_path`'s entries in `.git/index` (or `index_file`) as (mode, blob). An unmerged
        stage, or anything below a folder of that name, is an entry that matches no file."""
        env = {"GIT_INDEX_FILE": str(index_file)} if index_file else None
        out = self.git("--literal-pathspecs", "ls-files", "-s", "-z", "--", rel_path, env=env)
        entries = []
        for record in filter(None, out.stdout.decode("utf-8", "surrogateescape").split("\0")):
            meta, _, path = record.partition("\t")
            mode, blob, stage = meta.split()
            entries.append((mode, blob) if path == rel_path and stage == "0" else ("?", path))
        return entries

    # -- the working tree ----------------------------------------------------------------

    def confine(self, rel_path: str) -> Path:
        """The absolute path of `rel_path`, refused unless it stays inside prompts/ or evals/
        without passing through a symbolic link."""
        if not rel_path or "\x00" in rel_path or rel_path.startswith("/") or "\\" in rel_path:
            raise InvalidKey(f"Path {rel_path!r} is not allowed")
        parts = rel_path.split("/")
        if parts[0] not in TRACKED_DIRS or len(parts) < 2:
            raise InvalidKey(f"Path {rel_path!r} is outside prompts/ and evals/")
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise InvalidKey(f"Path {rel_path!r} has an empty, hidden or '..' segment")
        here = self.root
        for i, part in enumerate(parts):
            here = here / part
            if here.is_symlink():
                if i == 0 and not _resolves_inside(here, self.root):
                    raise InvalidKey(f"{part}/ is a link that leaves the repository")
                link = "/".join(parts[: i + 1])
                raise InvalidKey(
                    f"Path {rel_path!r} goes through the symbolic link {link}; llmkit never"
                    " writes through links"
                )
            if i < len(parts) - 1 and here.exists() and not here.is_dir():
                raise InvalidKey(f"Path {rel_path!r} goes through {part}, which is not a folder")
        return here

    def working_files(self, top: str, suffixes: tuple[str, ...]) -> dict[str, Path]:
        """Regular files under `top` with one of `suffixes`, as repo-relative paths. Hidden
        entries are skipped and symbolic links are never followed (`symlinks` lists them)."""
        return {
            Path(entry.path).relative_to(self.root).as_posix(): Path(entry.path)
            for entry in scan_tree(self.root / top)
            if entry.name.endswith(suffixes) and _is_regular(entry)
        }

    def symlinks(self, tops: Iterable[str] = TRACKED_DIRS) -> list[str]:
        """Every symbolic link under `tops` (or that is one of them): in the working tree, or
        committed or staged (which is how a checkout without symlink support still shows one)."""
        found: set[str] = set()
        for top in tops:
            if (self.root / top).is_symlink():
                found.add(top)
                continue
            for entry in scan_tree(self.root / top):
                if entry.is_symlink():
                    found.add(Path(entry.path).relative_to(self.root).as_posix())
        listed = self.git("ls-files", "-s", "-z", "--", *tops, check=False).stdout
        for record in listed.decode("utf-8", "surrogateescape").split("\0"):
            meta, _, path = record.partition("\t")
            if meta.startswith("120000 "):
                found.add(path)
        return sorted(found)

    # -- writes --------------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One writer at a time, across threads and processes."""
        with self._thread_lock:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    @cached_property
    def writer(self) -> GitWriter:
        from llmkit.gitwrite import GitWriter

        return GitWriter(self)

    def commit_file(
        self,
        rel_path: str,
        content: bytes | None,
        *,
        message: str,
        author_name: str | None = None,
        author_email: str | None = None,
        base: str | None = None,
        create: bool = False,
        precheck: Callable[[], None] | None = None,
    ) -> str:
        """Commit `content` as `rel_path` (None deletes it) and return the new commit sha.

        `base`, when given, is the sha (or prefix) of the commit the caller last saw for this
        file; if the file has moved on since, the write is refused with 409. A file with
        uncommitted edits (in the working tree or staged) is refused with 409 as well.
        `create` refuses (409) when the file already exists, checked under the lock, so two
        writers creating one file at once, in any processes, cannot both succeed.
        While another git process holds `.git/index.lock` the write waits up to
        `lock_timeout_s`, then is refused with RepositoryBusy (503) before anything is
        committed. It returns once HEAD, the working tree and `.git/index` all hold it.
        `precheck`, when given, runs under the write lock before anything is written, and
        refuses the write by raising (a check that another writer could otherwise race).
        """
        self.confine(rel_path)
        return self.writer.commit_file(
            rel_path,
            content,
            message=message,
            author_name=author_name,
            author_email=author_email,
            base=base,
            create=create,
            precheck=precheck,
        )

    def recover(self) -> str | None:
        """Finish or undo a write of llmkit's own that a crash interrupted, so that the
        repository is consistent and writes work again; returns what was done, or None.
        Raises RepositoryBusy while another process holds a lock it needs."""
        with self.lock():
            return self.writer.recover()

    def identity_env(self) -> dict[str, str]:
        """Committer identity from git config, or llmkit's own when none is configured. Asked
        of `git config`: GitPython's config reader ignores GIT_CONFIG_GLOBAL, GIT_CONFIG_NOSYSTEM
        and `-c`, and would answer for a configuration git does not use."""
        if self._identity_env is None:
            env: dict[str, str] = {}
            if not self.out("config", "user.name", check=False):
                env.update(GIT_AUTHOR_NAME="llmkit", GIT_COMMITTER_NAME="llmkit")
            if not self.out("config", "user.email", check=False):
                env.update(
                    GIT_AUTHOR_EMAIL="llmkit@localhost", GIT_COMMITTER_EMAIL="llmkit@localhost"
                )
            self._identity_env = env
        return dict(self._identity_env)


def scan_tree(base: Path) -> Iterator[os.DirEntry[str]]:
    """Every entry below the folder `base` except folders, never entering a symbolic link (a
    link is yielded as itself). Hidden entries and folders that cannot be read are skipped, and
    nothing is yielded when `base` is not a real folder (a link to one included)."""
    try:
        if not stat.S_ISDIR(os.lstat(base).st_mode):
            return
    except OSError:
        return
    stack = [str(base)]
    while stack:
        try:
            with os.scandir(stack.pop()) as found:
                entries = list(found)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_folder:
                stack.append(entry.path)
            else:
                yield entry


def _is_regular(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _resolves_inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def _parse_log(raw: str) -> Iterator[tuple[Commit, list[Change]]]:
    for record in raw.split("\x01"):
        if not record.strip("\x00\n"):
            continue
        fields = record.split("\x1f", 6)
        if len(fields) < 7:
            continue
        sha, name, email, authored, committed, message, rest = fields
        commit = Commit(sha, name, email, int(authored), int(committed), message.strip())
        changes = []
        tokens = [t for t in rest.split("\x00")]
        i = 0
        while i < len(tokens):
            token = tokens[i].lstrip("\n")
            if token.startswith(":") and i + 1 < len(tokens):
                # One colon per parent, then a mode per parent and the result's, a blob id per
                # parent and the result's, then the status letters.
                parents = len(token) - len(token.lstrip(":"))
                meta = token[parents:].split()
                new_blob, status = meta[2 * parents + 1], meta[2 * parents + 2]
                if new_blob == ZERO_SHA:
                    changes.append(Change(tokens[i + 1], "D", None))
                else:
                    changes.append(
                        Change(tokens[i + 1], status[0] if parents == 1 else "M", new_blob)
                    )
                i += 2
            else:
                i += 1
        yield commit, changes
