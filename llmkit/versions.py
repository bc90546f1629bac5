"""Prompt versions as the index serves them: a version of a prompt (committed or a draft) and a
prompt with the version it serves. Built by `index`, shaped for the API and the CLI in
`prompt_views`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

from llmkit.errors import PromptFormatError
from llmkit.promptfile import PromptFile, parse, path_for_key
from llmkit.store import Commit


@dataclass
class Version:
    key: str
    number: int | None
    sha: str | None
    blob: str
    content: str | None
    error: str | None = None
    commit: Commit | None = None
    draft: bool = False
    # LLMKit's integer `version_id`: a global ordinal of committed versions in commit order,
    # identical after a rebuild. None for a draft, which is not a version until committed.
    id: int | None = None

    @property
    def path(self) -> str:
        return path_for_key(self.key)

    def prompt(self) -> PromptFile:
        """The parsed file; raises PromptFormatError when this version cannot be read."""
        if self.content is None:
            raise PromptFormatError(self.error or "not UTF-8 text", path=self.path, line=1)
        return _parse_cached(self.content, self.path)


@lru_cache(maxsize=2048)
def _parse_cached(content: str, path: str) -> PromptFile:
    return parse(content, path)


@dataclass
class Prompt:
    id: int
    key: str
    path: str
    present: bool
    version: Version | None  # what is served: the draft if any, else the latest commit
    latest_committed: int = 0


def label(version: Version) -> str:
    if version.draft:
        return "draft"
    return str(version.number) if version.number is not None else (version.sha or "")[:12]


NO_FINAL_NEWLINE = "\\ No newline at end of file\n"


def unified_diff(old: str, new: str, old_name: str = "a", new_name: str = "b") -> str:
    """A unified diff as git writes it: a last line without its newline is ended, and marked
    with git's `\\ No newline at end of file`, rather than run into the line after it."""
    lines = difflib.unified_diff(old.splitlines(True), new.splitlines(True), old_name, new_name)
    return "".join(line if line.endswith("\n") else f"{line}\n{NO_FINAL_NEWLINE}" for line in lines)
