"""A prompt's history as rows: what `llmkit history` prints and `GET .../versions` answers.

Both front ends read the rows built here, so a version reads the same (its fields, author,
date, message and diff) whichever way it is asked for.
"""

from __future__ import annotations

from typing import Any

from llmkit.index import Index
from llmkit.prompt_views import iso_time, version_fields

DRAFT_MESSAGE = "Uncommitted changes in the working tree"


def history_rows(index: Index, ident: str | int) -> list[dict[str, Any]]:
    """Every version of a prompt, oldest first (the draft, if any, last): its fields as the API
    names them, who committed it when and why, and the unified diff from the version before."""
    rows = []
    previous = None
    for version, diff in index.history(ident):
        commit = version.commit
        row = version_fields(version, previous)
        row.update(
            number=version.number,
            author=commit.author_name if commit else None,
            author_email=commit.author_email if commit else None,
            date=iso_time(commit.authored_at) if commit else None,
            message=commit.message if commit else DRAFT_MESSAGE,
            diff=diff,
        )
        rows.append(row)
        previous = version
    return rows
