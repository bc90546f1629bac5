"""`llmkit import-llmkit`: an LLMKit database into a prompt repository and its durable tables.

What each LLMKit row becomes:
- prompt_version: a commit of `prompts/<key>.md` dated as in LLMKit (and a Restore commit when
  LLMKit's current version is not the last); models on a base URL of their own: llmkit.yaml
  aliases; prompt_eval: `evals/<key>/<slug>.yaml` (planned in `import_history` from the files
  of `import_convert`, landed crash-safe by `import_land`);
- prompt_eval_run: eval_results rows with their human scores; log: run-log rows
  (`import_rows`);
- api_key: listed to be re-created, since LLMKit keeps only hashes, which cannot be checked.

A run imports only what earlier runs did not, so running it again adds nothing, and a run after
LLMKit gained rows adds those. It reads the LLMKit database (`import_source`) inside one read
transaction and holds the store's write lock while it writes; a dry run computes the same plan
and writes nothing at all, not even llmkit's own database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from llmkit.config import Settings
from llmkit.import_history import Summary, make_plan
from llmkit.import_land import check_clean, land, recover
from llmkit.import_rows import (
    MIGRATIONS,
    Recorded,
    count_rows,
    read_recorded,
    record_commits,
    version_refs,
    write_eval_rows,
    write_logs,
)
from llmkit.import_source import open_source
from llmkit.store import GitStore
from llmkit.workspace import Workspace

Progress = Callable[[str, int, int], None]


def import_llmkit(
    settings: Settings,
    db_path: Path,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Summary:
    """Import the LLMKit database at `db_path` into the repository of `settings`."""
    report = progress or (lambda phase, done, total: None)
    with open_source(db_path) as source:
        report("Reading LLMKit", 0, 0)
        if dry_run:
            store = GitStore(settings.repo, settings.lock_path)
            recorded = _recorded_read_only(settings.db_path, source.identity)
            plan = make_plan(store, settings.repo, source, recorded.same_as)
            check_clean(store, plan.finals())
            count_rows(source, plan, recorded)
            return plan.summary
        ws = Workspace(settings)
        try:
            ws.durable.migrate(MIGRATIONS)
            with ws.store.lock():
                # Whatever a killed write or import left is finished or undone first.
                recovered = [ws.store.writer.recover(), recover(ws.store)]
                recorded = read_recorded(ws.durable.reader(), source.identity)
                plan = make_plan(ws.store, settings.repo, source, recorded.same_as)
                plan.summary.dry_run = False
                plan.summary.notes[:0] = [f"Recovery {done}" for done in recovered if done]
                check_clean(ws.store, plan.finals())
                if plan.commits:
                    report("Committing versions", 0, len(plan.commits))
                    land(ws.store, plan)
                    report("Committing versions", len(plan.commits), len(plan.commits))
                ws.index.sync()
                refs = version_refs(ws, source, plan)
                record_commits(ws, plan)
                write_eval_rows(ws, source, plan, refs, recorded, report)
                write_logs(ws, source, plan, refs, recorded, report)
            return plan.summary
        finally:
            ws.close()


def _recorded_read_only(path: Path, identity: str) -> Recorded:
    """What earlier imports recorded, read without creating or changing llmkit's database."""
    if not path.is_file():
        return read_recorded(None, identity)
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return read_recorded(conn, identity)
    finally:
        conn.close()
