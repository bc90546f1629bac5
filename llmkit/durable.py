"""Files that survive a kill -9: synced writes, files replaced whole, and lock files that hold
their content from their first instant. The git write protocol, the LLMKit import and the served
ref's settings stand on these."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_synced(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)  # whatever the umask
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder, fsync, rename: readers never see half a file.
    The temp file's name is unique and it is removed on failure, so several processes may write
    the same file at once (the last rename wins); a file only a lock holder writes, and whose
    leftover temp file recovery must find, is replace_synced's."""
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


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # some file systems cannot sync a folder
            raise
    finally:
        os.close(fd)


def replace_synced(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically and durably: a synced temp file beside it
    (`<name>.tmp`: what a kill may leave half written), renamed over it, the rename synced."""
    temp = path.with_name(f"{path.name}.tmp")
    write_synced(temp, data, mode)
    os.replace(temp, path)
    fsync_dir(path.parent)


def remove_synced(path: Path) -> None:
    """Remove `path` (if it is there), the removal synced."""
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


def create_lock(lock: Path, staged: Path, content: bytes) -> bool:
    """Create `lock` exclusively, holding `content` from its first instant (a hard link to
    `staged`, a synced file with that content); False when it exists already. Where hard links
    are not supported: an exclusive create, then a write."""
    try:
        os.link(staged, lock)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    return True


def take_lock(
    lock: Path, staged: Path, content: bytes, timeout_s: float, busy: Callable[[], Exception]
) -> None:
    """Create `lock` holding `content` from its first instant (see create_lock; `staged` is
    written, then removed), waiting up to `timeout_s` while someone else holds it, then raising
    what `busy` makes: nobody else's lock is ever removed."""
    write_synced(staged, content)
    deadline = time.monotonic() + timeout_s
    pause = 0.002
    try:
        while not create_lock(lock, staged, content):
            if time.monotonic() >= deadline:
                raise busy()
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
    finally:
        staged.unlink(missing_ok=True)


def outlives(lock: Path, seconds: float) -> bool:
    """Whether `lock` is still there once it is `seconds` old (waiting for that if need be)."""
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return False
        if age >= seconds:
            return True
        time.sleep(min(0.05, seconds - age))


def lock_state(lock: Path, marker: bytes, prepared_sha256: str | None) -> str | None:
    """Whose `lock` is: "marker" or "prepared" when ours (its bytes prove it: our marker, or the
    index we prepared, by its SHA-256), "foreign" when someone else's, None when there is none."""
    data = read_or_none(lock)
    if data is None:
        return None
    if data == marker:
        return "marker"
    if prepared_sha256 and hashlib.sha256(data).hexdigest() == prepared_sha256:
        return "prepared"
    return "foreign"
