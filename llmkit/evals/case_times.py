"""When eval files were made and last changed: an eval case's `created_at` and `updated_at`
(LLMKit's fields). A case is a file in git, so these are the times of the first and the last
commit that touched its file, read for a whole listing in one `git log`; a file with no commit
yet is as old as its modification time. (A checkout or a clone sets every file's modification
time, so a committed file's is not used.)"""

from __future__ import annotations

from collections.abc import Iterable

from llmkit.errors import LlmkitError
from llmkit.runlog_rows import format_timestamp
from llmkit.store import GitStore

Times = tuple[str, str]  # (created_at, updated_at)


def file_times(store: GitStore, files: Iterable[str]) -> dict[str, Times]:
    """(created_at, updated_at) of each file, as ISO-8601 UTC times."""
    wanted = set(files)
    if not wanted:
        return {}
    times: dict[str, Times] = {}
    if store.head() is not None:
        raw = store.git(
            "--literal-pathspecs",  # a name is a name, never a pattern
            "log",
            "--format=%x00%ct",
            "--name-only",
            "--no-renames",
            "HEAD",
            "--",
            *sorted(wanted),
            check=False,
        ).stdout.decode("utf-8", "replace")
        # Newest commit first: each later record is an earlier commit of the files it names.
        for record in raw.split("\0")[1:]:
            stamp, _, names = record.partition("\n")
            moment = format_timestamp(int(stamp))
            for name in names.split("\n"):
                if name in wanted:
                    times[name] = (moment, times.get(name, (moment, moment))[1])
    for name in wanted - times.keys():
        modified = _modified(store, name)
        if modified is not None:
            times[name] = (modified, modified)
    return times


def _modified(store: GitStore, name: str) -> str | None:
    try:
        return format_timestamp(store.confine(name).stat().st_mtime)
    except (OSError, LlmkitError):
        return None
