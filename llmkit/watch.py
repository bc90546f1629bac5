"""Watcher: keeps the index in step with the files and the git refs.

Editors save in many ways (write in place, write a temp file and rename it, delete and
recreate, swap files), and `git pull`/`checkout`/`rebase` touch many files and refs at once, so
events are not interpreted one by one: any relevant event marks the index stale, and once events
have been quiet for the debounce interval (or at most `max_delay` after the first), one
`Index.sync()` reads the actual state of the tree and the refs.

Serving a ref (`llmkit serve --ref`), the watcher is made with `files=False`: it watches only
the git refs, and never reads or watches a file of the working tree.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from llmkit.config import EVALS_DIR, PROMPTS_DIR
from llmkit.index import Index
from llmkit.index_sync import SyncReport

log = logging.getLogger("llmkit.watch")

WATCHED_DIRS = (PROMPTS_DIR, EVALS_DIR)
ROOT_NAMES = {PROMPTS_DIR, EVALS_DIR, "llmkit.yaml"}
GIT_NAMES = {"HEAD", "packed-refs", "ORIG_HEAD", "FETCH_HEAD"}
RETRY_FIRST_S = 1.0  # after a failed sync (each sync already retries a few times itself)
RETRY_MAX_S = 30.0


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.event_type in ("deleted", "moved") and event.is_directory:
            self.watcher.forget(Path(str(event.src_path)))
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if raw and self.watcher.relevant(Path(str(raw))):
                self.watcher.poke()
                return


class Watcher:
    def __init__(
        self,
        index: Index,
        root: Path,
        debounce_s: float = 0.03,
        max_delay_s: float = 0.2,
        on_sync: Callable[[SyncReport], None] | None = None,
        files: bool = True,
    ) -> None:
        self.index = index
        self.files = files
        self.root = Path(root).resolve()
        self.git_dir = self.root / ".git"
        self.debounce_s = debounce_s
        self.max_delay_s = max_delay_s
        self.on_sync = on_sync
        self.syncs = 0
        self._observer: Observer | None = None  # type: ignore[valid-type]
        # Each watched top folder with the inode it had: a folder removed and created again
        # (rm -r, a checkout without it) needs a new watch, the old one died with it.
        self._watched: dict[Path, tuple[ObservedWatch, int]] = {}
        self._gone: set[Path] = set()
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._last_event = 0.0
        self._retry_s = RETRY_FIRST_S
        self._thread: threading.Thread | None = None

    def relevant(self, path: Path) -> bool:
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return False
        parts = rel.parts
        if not parts:
            return False
        if parts[0] == ".git":
            return (
                len(parts) >= 2
                and (parts[1] in GIT_NAMES or parts[1] == "refs")
                and not rel.name.endswith(".lock")
            )
        if not self.files:
            return False
        if len(parts) == 1:
            return parts[0] in ROOT_NAMES
        return parts[0] in WATCHED_DIRS

    def forget(self, path: Path) -> None:
        """A watched folder was deleted or moved away; watch it again when it comes back."""
        if path in self._watched:
            self._gone.add(path)

    def poke(self) -> None:
        self._last_event = time.monotonic()
        self._pending.set()

    def start(self) -> None:
        observer = Observer()
        handler = _Handler(self)
        if self.files:
            observer.schedule(handler, str(self.root), recursive=False)
        observer.schedule(handler, str(self.git_dir), recursive=False)
        if (self.git_dir / "refs").is_dir():
            observer.schedule(handler, str(self.git_dir / "refs"), recursive=True)
        self._observer = observer
        self._handler = handler
        self._arm_dirs()
        observer.start()
        self._thread = threading.Thread(target=self._run, name="llmkit-watch", daemon=True)
        self._thread.start()

    def _arm_dirs(self) -> None:
        """Watch prompts/ and evals/ recursively, including when they appear after start."""
        assert self._observer is not None
        if not self.files:
            return
        for name in WATCHED_DIRS:
            folder = self.root / name
            try:
                inode = folder.stat().st_ino if folder.is_dir() else None
            except OSError:
                inode = None
            current = self._watched.get(folder)
            if inode is None or (current and current[1] == inode and folder not in self._gone):
                continue
            self._gone.discard(folder)
            if current is not None:
                try:
                    self._observer.unschedule(current[0])
                except (KeyError, OSError):
                    pass
                del self._watched[folder]
            try:
                watch = self._observer.schedule(self._handler, str(folder), recursive=True)
                self._watched[folder] = (watch, inode)
            except OSError as exc:
                log.warning("cannot watch %s: %s", folder, exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._pending.wait(timeout=0.5):
                continue
            first = time.monotonic()
            # Wait for a quiet moment, but never longer than max_delay after the first event.
            while not self._stop.is_set():
                quiet_for = time.monotonic() - self._last_event
                waited = time.monotonic() - first
                if quiet_for >= self.debounce_s or waited >= self.max_delay_s:
                    break
                time.sleep(
                    min(self.debounce_s - quiet_for, self.max_delay_s - waited, 0.01) or 0.001
                )
            self._pending.clear()
            if self._stop.is_set():
                break
            if self.sync_now() is None:
                # The change that called for this sync is not indexed yet: try again later even
                # if nothing else changes, backing off while the failure lasts.
                self._stop.wait(self._retry_s)
                self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
                self._pending.set()
            else:
                self._retry_s = RETRY_FIRST_S

    def sync_now(self) -> SyncReport | None:
        try:
            self._arm_dirs()
            report = self.index.sync()
        except Exception:  # the watcher must survive anything a half-written tree throws at it
            log.exception("index sync failed; it runs again shortly, and on the next change")
            return None
        self.syncs += 1
        if self.on_sync is not None:
            self.on_sync(report)
        return report

    def stop(self) -> None:
        self._stop.set()
        self._pending.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
