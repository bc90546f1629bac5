"""What the pages show, computed from the core's objects: the tree of prompt keys, the search,
a template with its expressions marked, the variables of a prompt and a side-by-side diff.
Plain functions over plain data, so they are tested without a browser."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import yaml
from markupsafe import Markup, escape

from llmkit.errors import LlmkitError, PromptFormatError
from llmkit.prompt_views import iso_time
from llmkit.promptfile import PromptFile
from llmkit.render import variables_of
from llmkit.store import Commit
from llmkit.versions import Prompt, Version

# A Jinja expression, statement or comment: what the prompt page marks in a section.
EXPRESSION_RE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
MAX_QUERY = 200


@dataclass
class PromptRow:
    """One prompt of the list: what is served, and the last commit that changed it."""

    key: str
    name: str  # the last segment of the key
    model: str | None
    kind: str | None  # the prompt type (static, dynamic_system, dynamic_both), "chat" added
    number: int | None
    draft: bool
    error: str | None
    change: Commit | None
    # Formatted here, once, rather than by calls from the template: the list shows every
    # prompt, and a call per row from Jinja costs more than the rest of the row.
    href: str = ""
    changed_at: str = ""  # ISO 8601, for <time datetime>
    changed_when: str = ""  # as `when` gives it
    subject: str = ""  # the first line of the commit message


@dataclass
class Folder:
    name: str
    path: str
    folders: dict[str, Folder] = field(default_factory=dict)
    prompts: list[PromptRow] = field(default_factory=list)

    def sorted_folders(self) -> list[Folder]:
        return [self.folders[name] for name in sorted(self.folders)]


def matches(prompt: Prompt, query: str) -> bool:
    """The prompt's key or the text of its served file contains `query`, ignoring case."""
    needle = query.casefold()
    if needle in prompt.key.casefold():
        return True
    content = prompt.version.content if prompt.version is not None else None
    return bool(content) and needle in (content or "").casefold()


def prompt_kind(prompt: PromptFile) -> str:
    """The prompt's type as LLMKit names it, with "chat" when it takes a conversation."""
    return f"{prompt.prompt_type} · chat" if prompt.is_chat else prompt.prompt_type


def prompt_row(prompt: Prompt, last_commit: Commit | None) -> PromptRow:
    version = prompt.version
    model = kind = None
    error = version.error if version is not None else None
    if version is not None and version.content is not None:
        try:
            parsed = version.prompt()
            model, kind = parsed.model, prompt_kind(parsed)
        except PromptFormatError as exc:
            error = exc.message
    changed_at = iso_time(last_commit.authored_at) if last_commit is not None else ""
    return PromptRow(
        key=prompt.key,
        name=prompt.key.rsplit("/", 1)[-1],
        model=model,
        kind=kind,
        number=version.number if version else None,
        draft=bool(version and version.draft),
        error=error,
        change=last_commit,
        href=f"/prompts/{quote(prompt.key)}",
        changed_at=changed_at,
        changed_when=_readable(changed_at) if changed_at else "",
        subject=last_commit.message.splitlines()[0] if last_commit and last_commit.message else "",
    )


def tree_of(rows: list[PromptRow]) -> Folder:
    """The rows as folders, the way `prompts/` lays them out."""
    root = Folder("", "")
    for row in sorted(rows, key=lambda r: r.key):
        folder = root
        for part in row.key.split("/")[:-1]:
            path = f"{folder.path}/{part}" if folder.path else part
            folder = folder.folders.setdefault(part, Folder(part, path))
        folder.prompts.append(row)
    return root


def marked(text: str) -> Markup:
    """`text` escaped for HTML, with each template expression in a <mark>."""
    parts: list[str] = []
    last = 0
    for found in EXPRESSION_RE.finditer(text):
        parts.append(escape(text[last : found.start()]))
        parts.append(Markup('<mark class="expr">{}</mark>').format(found.group(0)))
        last = found.end()
    parts.append(escape(text[last:]))
    return Markup("").join(parts)


def variables_in(prompt: PromptFile) -> tuple[list[str], str | None]:
    """The names the prompt's sections read, sorted, and the error of a section that does not
    parse as a template (then the names of the other sections)."""
    names: set[str] = set()
    problem = None
    for message in prompt.messages:
        try:
            names |= variables_of(message.content)
        except LlmkitError as exc:
            problem = problem or f"{message.role} section: {exc.message}"
    return sorted(names), problem


def frontmatter_rows(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) of each frontmatter entry; structured values as YAML."""
    rows = []
    for name, value in meta.items():
        if isinstance(value, dict | list):
            shown = yaml.safe_dump(value, sort_keys=False, allow_unicode=True).strip()
        else:
            shown = yaml.safe_dump(value, allow_unicode=True).strip().removesuffix("\n...")
        rows.append((str(name), shown))
    return rows


def when(commit: Commit | None) -> str | None:
    """When a commit was authored, as a person reads it: `2026-01-31 09:30:00 UTC`."""
    if commit is None:
        return None
    return _readable(iso_time(commit.authored_at))


def _readable(iso: str) -> str:
    return iso.replace("T", " ").removesuffix("Z") + " UTC"


@dataclass(frozen=True)
class DiffRow:
    """One line pair of a side-by-side diff; a side is None where it has no line."""

    kind: str  # "same", "changed", "removed", "added"
    old_number: int | None
    old: str | None
    new_number: int | None
    new: str | None


def side_by_side(old: str, new: str) -> list[DiffRow]:
    """The two texts line by line, paired where they match or replace each other."""
    a, b = old.splitlines(), new.splitlines()
    rows: list[DiffRow] = []
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pairs = zip(range(i1, i2), range(j1, j2), strict=True)
            rows.extend(DiffRow("same", i + 1, a[i], j + 1, b[j]) for i, j in pairs)
            continue
        count = max(i2 - i1, j2 - j1)
        for offset in range(count):
            i, j = i1 + offset, j1 + offset
            old_line = a[i] if i < i2 else None
            new_line = b[j] if j < j2 else None
            if old_line is not None and new_line is not None:
                kind = "changed"
            else:
                kind = "removed" if new_line is None else "added"
            rows.append(
                DiffRow(
                    kind,
                    i + 1 if old_line is not None else None,
                    old_line,
                    j + 1 if new_line is not None else None,
                    new_line,
                )
            )
    return rows


def version_label(version: Version) -> str:
    if version.draft:
        return "draft"
    if version.number is not None:
        return f"version {version.number}"
    return (version.sha or "")[:12]


def clean_query(query: str | None) -> str:
    return (query or "").strip()[:MAX_QUERY]
