"""Writing prompts: each change is one git commit of one file, then the index catches up."""

from __future__ import annotations

from llmkit.errors import BadRequest, Conflict, NotFound
from llmkit.index import Prompt, label
from llmkit.promptfile import PromptFile, path_for_key, serialize
from llmkit.render import check_templates
from llmkit.workspace import Workspace


def save_prompt(
    ws: Workspace,
    key: str,
    prompt: PromptFile,
    *,
    create: bool = False,
    base: str | None = None,
    message: str | None = None,
    author_name: str | None = None,
    author_email: str | None = None,
) -> Prompt:
    """Create (`create=True`) or update the prompt `key` with `prompt`, as one commit."""
    path = path_for_key(key)
    text = serialize(prompt)
    problems = check_templates(_with_lines(prompt))
    if problems:
        line, detail = problems[0]
        raise BadRequest(f"{path}: {detail}", param="template")
    exists = _exists(ws, key)
    if create and exists:
        raise Conflict(f"Prompt {key!r} already exists", param="key")
    if not create and not exists:
        raise NotFound(f"No prompt found with key {key!r}", param="key")
    verb = "Create" if create else "Update"
    ws.store.commit_file(
        path,
        text.encode("utf-8"),
        message=message or f"{verb} prompt {key}",
        author_name=author_name,
        author_email=author_email,
        base=base,
    )
    ws.index.sync()
    return ws.index.get_prompt(key)


def delete_prompt(
    ws: Workspace,
    key: str,
    *,
    base: str | None = None,
    message: str | None = None,
    author_name: str | None = None,
    author_email: str | None = None,
) -> None:
    """Commit the removal of a prompt file; its history stays readable."""
    if not _exists(ws, key):
        raise NotFound(f"No prompt found with key {key!r}", param="key")
    ws.store.commit_file(
        path_for_key(key),
        None,
        message=message or f"Delete prompt {key}",
        author_name=author_name,
        author_email=author_email,
        base=base,
    )
    ws.index.sync()


def restore_version(
    ws: Workspace,
    key: str,
    spec: str | int,
    *,
    base: str | None = None,
    message: str | None = None,
    author_name: str | None = None,
    author_email: str | None = None,
) -> Prompt:
    """Write version `spec` of a prompt as a new commit, so history stays linear."""
    version = ws.index.version(key, spec)
    if version.content is None:
        raise BadRequest(f"Version {label(version)} of {key!r} is not readable text")
    ws.store.commit_file(
        path_for_key(key),
        version.content.encode("utf-8"),
        message=message or f"Restore {key} to version {label(version)} ({(version.sha or 'draft')[:12]})",
        author_name=author_name,
        author_email=author_email,
        base=base,
    )
    ws.index.sync()
    return ws.index.get_prompt(key)


def _exists(ws: Workspace, key: str) -> bool:
    target = ws.store.confine(path_for_key(key))
    return target.exists() or ws.store.blob_at_head(path_for_key(key)) is not None


def _with_lines(prompt: PromptFile) -> PromptFile:
    from llmkit.promptfile import parse

    return parse(serialize(prompt))
