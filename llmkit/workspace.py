"""Workspace: one prompt repository opened for work: settings, git store, database, index.

The CLI and the API both start from here, so they share one way of opening things."""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING

from llmkit.config import Settings
from llmkit.db import Database, DurableStore, open_durable
from llmkit.errors import LlmkitError
from llmkit.index import Index
from llmkit.store import GitStore

if TYPE_CHECKING:
    from llmkit.keys import KeyStore
    from llmkit.models import ModelRegistry
    from llmkit.refserve import RefTarget
    from llmkit.runlog import RunLog

log = logging.getLogger("llmkit.workspace")


class Workspace:
    """`ref`, when given, serves that branch or tag as committed (`llmkit serve --ref`): the
    store and the index see REF instead of HEAD and the working tree, the index has a database
    of its own beside the durable one, and git writes are refused."""

    def __init__(self, settings: Settings, ref: RefTarget | None = None) -> None:
        self.settings = settings
        self.ref = ref
        # The index is a local SQLite cache per replica; the durable tables share its file,
        # unless LLMKIT_DATABASE_URL puts them in PostgreSQL.
        self.db = Database(settings.db_path)
        self.durable: DurableStore = (
            open_durable(settings.database_url) if settings.database_url else self.db
        )
        self._index_db: Database | None = None
        self.config_file = settings.config_file
        limit = lambda: self.models.limits().prompt_file_bytes
        if ref is None:
            self.store = GitStore(
                settings.repo, settings.lock_path, lock_timeout_s=settings.git_lock_timeout_s
            )
            self.index = Index(self.store, self.db, prompt_file_bytes=limit)
        else:
            from llmkit.refserve import RefIndex, RefStore, ref_data_path

            store = RefStore(
                settings.repo, ref, settings.lock_path, lock_timeout_s=settings.git_lock_timeout_s
            )
            data_dir, name = settings.data_dir, store.local_ref
            self._index_db = Database(ref_data_path(data_dir, name, "index", ".db"))
            # llmkit.yaml as committed at REF, copied there at each sync.
            self.config_file = ref_data_path(data_dir, name, "llmkit", ".yaml")
            self.store = store
            self.index = RefIndex(
                store, self._index_db, prompt_file_bytes=limit, config_file=self.config_file
            )

    @classmethod
    def open(
        cls, repo: str | None = None, ref: RefTarget | None = None, **overrides: object
    ) -> Workspace:
        return cls(Settings.resolve(repo, **overrides), ref)

    @cached_property
    def keys(self) -> KeyStore:
        from llmkit.keys import KeyStore

        return KeyStore(self.durable)

    @cached_property
    def models(self) -> ModelRegistry:
        from llmkit.models import ModelRegistry

        return ModelRegistry(self.config_file)

    @cached_property
    def runlog(self) -> RunLog:
        from llmkit.runlog import RunLog

        return RunLog(
            self.durable,
            batch_ms=self.settings.log_batch_ms,
            durable=self.settings.log_durable,
            durable_wait_s=self.settings.log_durable_wait_s,
            field_max_bytes=self.settings.log_field_max_bytes,
            max_queued=self.settings.log_max_queued,
        )

    def recover_writes(self) -> None:
        """Finish or undo a git write that a crash interrupted, before anything is served from
        the repository. A lock held by another git process only postpones it: every write
        tries again first, and answers 503 until it can."""
        try:
            done = self.store.recover()
        except LlmkitError as exc:
            log.warning("an interrupted git write is not finished yet: %s", exc.message)
            return
        if done:
            log.warning("recovered an interrupted git write: %s", done)

    def close(self) -> None:
        if "runlog" in self.__dict__:
            self.runlog.close()
        if "keys" in self.__dict__:
            self.keys.flush()
        if self.durable is not self.db:
            self.durable.close()
        self.db.close()
        if self._index_db is not None:
            self._index_db.close()
        self.store.close()
