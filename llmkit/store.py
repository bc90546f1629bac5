"""GitStore: the prompt repository as the source of truth.

Reads are done in bulk: one `git log --raw` pass yields every change to `prompts/` and `evals/`
with the blob id of each new content, and one `git cat-file --batch` process reads any number of
blobs. Nothing runs one git process per file or per version.

Writes commit exactly one file without touching what an author has staged: the commit is built
in a private index (`GIT_INDEX_FILE`), the working-tree file is replaced atomically, and the
branch moves with a compare-and-swap `git update-ref`. All writes hold one lock that spans
threads and processes. If any step fails, the file and the branch are put back as they were.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
import threading
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import BadRequest, ConfigError, Conflict, InvalidKey, LlmkitError, NotFound

TRACKED_DIRS = ("prompts", "evals")
ZERO_SHA = "0" * 40
ALREADY_EXISTS = "already_exists"
_SHA_RE = re.compile(r"^[0-9a-f]{4,40}$")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_LOG_FORMAT = "%x01%H%x1f%an%x1f%ae%x1f%at%x1f%ct%x1f%B%x1f"


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
    def __init__(self, root: Path, lock_path: Path | None = None) -> None:
        self.root = Path(root).resolve()
        if not (self.root / ".git").exists():
            raise ConfigError(f"{self.root} is not a git repository (no .git)")
        self.lock_path = lock_path or self.root / ".llmkit" / "write.lock"
        self._thread_lock = threading.Lock()
        self._identity_env: dict[str, str] | None = None

    # -- running git ---------------------------------------------------------------------

    def git(
        self,
        *args: str,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        full_env = None
        if env:
            full_env = {**os.environ, **env}
        proc = subprocess.run(
            ["git", "-c", "core.quotePath=false", *args],
            cwd=self.root,
            input=input,
            capture_output=True,
            env=full_env,
        )
        if check and proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()
            raise GitError(f"git {args[0]} failed: {err}")
        return proc

    def out(self, *args: str, **kwargs: object) -> str:
        return self.git(*args, **kwargs).stdout.decode("utf-8", "replace").strip()  # type: ignore[arg-type]

    # -- refs ----------------------------------------------------------------------------

    def head(self) -> str | None:
        """The commit HEAD points to, or None on an unborn branch."""
        proc = self.git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
        return proc.stdout.decode().strip() or None

    def branch(self) -> str | None:
        proc = self.git("symbolic-ref", "--quiet", "--short", "HEAD", check=False)
        return proc.stdout.decode().strip() or None

    def resolve_ref(self, ref: str) -> str | None:
        """A commit sha for a branch, tag, or sha prefix; None when there is no such ref."""
        if not ref or ref.startswith("-") or any(c in ref for c in " \t\n\x00:?*[\\") or ".." in ref:
            return None
        proc = self.git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", check=False)
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
            "log", "-z", "--reverse", "--topo-order", "--no-renames", "--raw", "--no-abbrev", "-c",
            f"--format={_LOG_FORMAT}", rev, "--", *TRACKED_DIRS,
        ).stdout.decode("utf-8", "surrogateescape")
        return list(_parse_log(raw))

    def read_blobs(self, ids: Iterable[str]) -> dict[str, bytes]:
        """Contents of many blobs through one `git cat-file --batch` process."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        proc = subprocess.Popen(
            ["git", "cat-file", "--batch"],
            cwd=self.root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdin is not None and proc.stdout is not None

        def feed() -> None:
            try:
                proc.stdin.write("".join(f"{sha}\n" for sha in wanted).encode())  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        result: dict[str, bytes] = {}
        out = proc.stdout
        for sha in wanted:
            header = out.readline().split()
            if len(header) < 3 or header[1] != b"blob":
                continue  # missing object
            size = int(header[2])
            result[sha] = out.read(size)
            out.read(1)
        writer.join()
        proc.wait()
        return result

    def file_at(self, commit: str, path: str) -> bytes | None:
        proc = self.git("cat-file", "blob", f"{commit}:{path}", check=False)
        return proc.stdout if proc.returncode == 0 else None

    def last_commit_touching(self, path: str, ref: str = "HEAD") -> str | None:
        proc = self.git("log", "-1", "--format=%H", ref, "--", path, check=False)
        return proc.stdout.decode().strip() or None

    def commit_info(self, sha: str) -> Commit:
        raw = self.git("log", "-1", f"--format={_LOG_FORMAT}", sha).stdout.decode("utf-8", "replace")
        for commit, _ in _parse_log(raw):
            return commit
        raise NotFound(f"No commit {sha}")

    def blob_at_head(self, path: str) -> str | None:
        proc = self.git("rev-parse", "--verify", "--quiet", f"HEAD:{path}", check=False)
        return proc.stdout.decode().strip() or None

    # -- the working tree ----------------------------------------------------------------

    def confine(self, rel_path: str) -> Path:
        """The absolute path of `rel_path`, refused unless it stays inside prompts/ or evals/."""
        if not rel_path or "\x00" in rel_path or rel_path.startswith("/") or "\\" in rel_path:
            raise InvalidKey(f"Path {rel_path!r} is not allowed")
        parts = rel_path.split("/")
        if parts[0] not in TRACKED_DIRS or len(parts) < 2:
            raise InvalidKey(f"Path {rel_path!r} is outside prompts/ and evals/")
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise InvalidKey(f"Path {rel_path!r} has an empty, hidden or '..' segment")
        base = (self.root / parts[0]).resolve()
        if not base.is_relative_to(self.root):
            raise InvalidKey(f"{parts[0]}/ is a link that leaves the repository")
        target = self.root / rel_path
        parent = target.parent.resolve()
        if not parent.is_relative_to(base) or target.is_symlink():
            raise InvalidKey(f"Path {rel_path!r} leaves {parts[0]}/ through a symbolic link")
        return target

    def working_files(self, top: str, suffixes: tuple[str, ...]) -> dict[str, Path]:
        """Files under `top` with one of `suffixes`, as repo-relative paths; hidden entries and
        links that leave the repository are skipped."""
        found: dict[str, Path] = {}
        base = self.root / top
        if not base.is_dir() or not base.resolve().is_relative_to(self.root):
            return found
        stack = [base]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                if entry.is_symlink() and not path.resolve().is_relative_to(base.resolve()):
                    continue
                if entry.is_dir():
                    stack.append(path)
                elif entry.name.endswith(suffixes) and entry.is_file():
                    found[path.relative_to(self.root).as_posix()] = path
        return found

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
    ) -> str:
        """Commit `content` as `rel_path` (None deletes it) and return the new commit sha.

        `base`, when given, is the sha (or prefix) of the commit the caller last saw for this
        file; if the file has moved on since, the write is refused with 409. A file with
        uncommitted edits (in the working tree or staged) is refused with 409 as well.
        `create` refuses (409) when the file already exists, checked under the lock, so two
        writers creating one file at once, in any processes, cannot both succeed.
        """
        target = self.confine(rel_path)
        with self.lock():
            head = self.head()
            head_blob = self.blob_at_head(rel_path) if head else None
            if create and (head_blob is not None or target.exists()):
                raise Conflict(f"{rel_path} already exists", param="key", code=ALREADY_EXISTS)
            if base is not None:
                self._check_base(rel_path, base, head)
            on_disk = target.read_bytes() if target.exists() else None
            if (blob_id(on_disk) if on_disk is not None else None) != head_blob:
                raise Conflict(
                    f"{rel_path} has uncommitted changes in the working tree; commit or discard"
                    " them before writing through the API"
                )
            if head and self.git("diff", "--cached", "--quiet", head, "--", rel_path, check=False).returncode:
                raise Conflict(f"{rel_path} has staged changes; commit or unstage them first")
            if content is None and head_blob is None:
                raise NotFound(f"{rel_path} does not exist")
            new_blob = None
            if content is not None:
                new_blob = self.out("hash-object", "-w", "--stdin", input=content)
                if new_blob == head_blob:
                    raise BadRequest(f"{rel_path} is unchanged; nothing to commit")
            commit = self._commit_tree(rel_path, new_blob, head, message, author_name, author_email)
            self._swap_in(target, rel_path, content, on_disk, commit, head)
            return commit

    def _check_base(self, rel_path: str, base: str, head: str | None) -> None:
        last = self.last_commit_touching(rel_path) if head else None
        wanted = base.strip().lower()
        if not _SHA_RE.match(wanted):
            raise BadRequest(f"Base version {base!r} is not a commit sha", param="base_version")
        if last is None or not last.startswith(wanted):
            raise Conflict(
                f"{rel_path} has moved on: its latest version is {last[:12] if last else 'none'},"
                f" not {base}; reload it and apply your change again"
            )

    def _commit_tree(
        self,
        rel_path: str,
        blob: str | None,
        head: str | None,
        message: str,
        author_name: str | None,
        author_email: str | None,
    ) -> str:
        env = self.identity_env()
        name, email = sanitize_identity(author_name), sanitize_identity(author_email)
        if name:
            env["GIT_AUTHOR_NAME"] = name
        if email:
            env["GIT_AUTHOR_EMAIL"] = email
        elif name:
            # A new author name with the committer's address would misattribute; say so instead.
            env["GIT_AUTHOR_EMAIL"] = "unknown@llmkit.invalid"
        fd, index_file = tempfile.mkstemp(prefix="index-", dir=self.lock_path.parent)
        os.close(fd)
        os.unlink(index_file)
        index_env = {**env, "GIT_INDEX_FILE": index_file}
        try:
            if head:
                self.git("read-tree", head, env=index_env)
            else:
                self.git("read-tree", "--empty", env=index_env)
            if blob is None:
                self.git("update-index", "--force-remove", "--", rel_path, env=index_env)
            else:
                self.git("update-index", "--add", "--cacheinfo", f"100644,{blob},{rel_path}", env=index_env)
            tree = self.out("write-tree", env=index_env)
        finally:
            if os.path.exists(index_file):
                os.unlink(index_file)
        parents = ["-p", head] if head else []
        msg = sanitize_message(message, f"Update {rel_path}")
        return self.out("commit-tree", tree, *parents, input=msg.encode(), env=env)

    def _swap_in(
        self,
        target: Path,
        rel_path: str,
        content: bytes | None,
        previous: bytes | None,
        commit: str,
        head: str | None,
    ) -> None:
        """Put the file in place, then move the branch; undo the file if the branch won't move."""
        new_dirs = [d for d in target.parents if d.is_relative_to(self.root) and not d.exists()]
        if content is None:
            target.unlink()
        else:
            write_atomic(target, content)
        try:
            self.git("update-ref", "-m", f"llmkit: {rel_path}", "HEAD", commit, head or "")
        except GitError as exc:
            if previous is None:
                target.unlink(missing_ok=True)
                for folder in new_dirs:  # innermost first
                    try:
                        folder.rmdir()
                    except OSError:
                        break
            else:
                write_atomic(target, previous)
            raise Conflict(f"The branch moved while writing {rel_path}; try again ({exc.message})")
        # Keep the author's index in step for this one path only, so `git status` is clean.
        if content is None:
            self.git("update-index", "--force-remove", "--", rel_path, check=False)
        else:
            blob = blob_id(content)
            self.git("update-index", "--add", "--cacheinfo", f"100644,{blob},{rel_path}", check=False)

    def identity_env(self) -> dict[str, str]:
        """Committer identity from git config, or llmkit's own when none is configured."""
        if self._identity_env is None:
            env: dict[str, str] = {}
            if not self.out("config", "user.name", check=False):
                env.update(GIT_AUTHOR_NAME="llmkit", GIT_COMMITTER_NAME="llmkit")
            if not self.out("config", "user.email", check=False):
                env.update(GIT_AUTHOR_EMAIL="llmkit@localhost", GIT_COMMITTER_EMAIL="llmkit@localhost")
            self._identity_env = env
        return dict(self._identity_env)


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder, fsync, rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
                    changes.append(Change(tokens[i + 1], status[0] if parents == 1 else "M", new_blob))
                i += 2
            else:
                i += 1
        yield commit, changes
