"""Writing prompts: each change is one git commit of one file, then the index catches up."""

from __future__ import annotations

import logging
from collections.abc import Callable

from llmkit.config import PROMPTS_DIR
from llmkit.errors import (
    BadRequest,
    Conflict,
    IndexUnavailable,
    InvalidKey,
    NotFound,
    PayloadTooLarge,
    PromptFormatError,
)
from llmkit.promptfile import (
    PROMPT_SUFFIX,
    PromptFile,
    case_conflict,
    key_from_path,
    path_for_key,
    serialize,
)
from llmkit.render import check_templates
from llmkit.store import ALREADY_EXISTS, blob_id
from llmkit.versions import Prompt, label
from llmkit.workspace import Workspace

log = logging.getLogger("llmkit.authoring")


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
    try:
        text = serialize(prompt)
    except PromptFormatError as exc:
        raise PromptFormatError(exc.detail, path=path) from None
    # Reading the text back refuses what a file cannot hold (NUL, lone surrogates) by line.
    problems = check_templates(_with_lines(prompt, path))
    if problems:
        line, detail = problems[0]
        raise BadRequest(f"{path}:{line}: {detail}", param="template")
    data = text.encode("utf-8")
    limit = ws.models.limits().prompt_file_bytes
    if len(data) > limit:
        raise PayloadTooLarge(
            f"{path} would be {len(data):,} bytes, over the limit of {limit:,} for a prompt file"
            " (limits.prompt_file_bytes in llmkit.yaml)",
            param="content",
        )
    if not create and not _exists(ws, key):
        raise NotFound(f"No prompt found with key {key!r}", param="key")
    verb = "Create" if create else "Update"
    try:
        sha = _commit_unless_current(
            ws,
            path,
            data,
            message=message or f"{verb} prompt {key}",
            author_name=author_name,
            author_email=author_email,
            base=base,
            create=create,
            # Under the store's lock: two writers creating `Foo` and `foo` cannot both succeed.
            precheck=(lambda: _refuse_case_conflict(ws, key)) if create else None,
        )
    except Conflict as exc:
        if exc.code == ALREADY_EXISTS:
            raise Conflict(
                f"Prompt {key!r} already exists", param="key", code=ALREADY_EXISTS
            ) from None
        raise
    _catch_up(ws, sha, path)
    return ws.index.get_prompt(key)


def delete_prompt(
    ws: Workspace,
    key: str,
    *,
    base: str | None = None,
    message: str | None = None,
    author_name: str | None = None,
    author_email: str | None = None,
) -> str:
    """Commit the removal of a prompt file; its history stays readable. Returns the commit."""
    if not _exists(ws, key):
        raise NotFound(f"No prompt found with key {key!r}", param="key")
    sha = ws.store.commit_file(
        path_for_key(key),
        None,
        message=message or f"Delete prompt {key}",
        author_name=author_name,
        author_email=author_email,
        base=base,
    )
    try:
        _catch_up(ws, sha, path_for_key(key))
    except IndexUnavailable as exc:
        # The answer (the commit) needs nothing from the index; it catches up at its next sync.
        log.warning("%s", exc.message)
    return sha


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
    sha = _commit_unless_current(
        ws,
        path_for_key(key),
        version.content.encode("utf-8"),
        message=message
        or f"Restore {key} to version {label(version)} ({(version.sha or 'draft')[:12]})",
        author_name=author_name,
        author_email=author_email,
        base=base,
    )
    _catch_up(ws, sha, path_for_key(key))
    return ws.index.get_prompt(key)


def _catch_up(ws: Workspace, sha: str | None, path: str) -> None:
    """Bring the index to the commit just made (`sha`; None when there was nothing to commit).
    The commit stands whatever happens here, so when the index cannot catch up the error says
    that the write is committed, with its sha, rather than inviting the caller to send it again
    (which would be refused with 409)."""
    try:
        ws.index.sync()
    except IndexUnavailable as exc:
        if sha is None:
            raise
        raise IndexUnavailable(
            f"The change to {path} is committed as {sha}, but the index could not catch up, so"
            f" it is not served yet; do not send it again, it is served once the index syncs."
            f" {exc.message}",
            code="committed_not_indexed",
            headers={"x-llmkit-commit": sha},
        ) from exc


def _commit_unless_current(
    ws: Workspace,
    path: str,
    data: bytes,
    *,
    message: str,
    author_name: str | None,
    author_email: str | None,
    base: str | None,
    create: bool = False,
    precheck: Callable[[], None] | None = None,
) -> str | None:
    """Commit `data` as `path` and return the commit. A write that would change nothing
    succeeds without a commit (None), so a retried PUT, or setting the version already served,
    is not an error; the store's checks (base version, uncommitted or staged edits) still run
    first and still refuse."""
    try:
        return ws.store.commit_file(
            path,
            data,
            message=message,
            author_name=author_name,
            author_email=author_email,
            base=base,
            create=create,
            precheck=precheck,
        )
    except BadRequest as exc:
        # The store says "unchanged" with a plain BadRequest naming no parameter; a bad base
        # version (param) or a refused path (InvalidKey) is still the caller's error.
        unchanged = type(exc) is BadRequest and exc.param is None
        if not unchanged or not _already_current(ws, path, data):
            raise
        return None


def _already_current(ws: Workspace, path: str, data: bytes) -> bool:
    """The last commit and the working tree both hold `data`."""
    target = ws.store.confine(path)
    if ws.store.blob_at_head(path) != blob_id(data) or not target.is_file():
        return False
    return target.read_bytes() == data


def _exists(ws: Workspace, key: str) -> bool:
    target = ws.store.confine(path_for_key(key))
    return target.exists() or ws.store.blob_at_head(path_for_key(key)) is not None


def _refuse_case_conflict(ws: Workspace, key: str) -> None:
    """A new key may not differ only in case from a prompt (or a folder of prompts) that
    exists: the repository could not be checked out on macOS or Windows."""
    existing = set()
    for rel in ws.store.working_files(PROMPTS_DIR, (PROMPT_SUFFIX,)):
        try:
            existing.add(key_from_path(rel))
        except InvalidKey:
            continue
    existing.update(p.key for p in ws.index.list_prompts())
    other = case_conflict(key, existing)
    if other is not None:
        raise Conflict(
            f"Prompt key {key!r} differs only in case from the existing prompt {other!r}; on"
            " macOS and Windows both would be one file. Choose another key",
            param="key",
            code="case_conflict",
        )


def _with_lines(prompt: PromptFile, path: str | None = None) -> PromptFile:
    from llmkit.promptfile import parse

    return parse(serialize(prompt), path)
