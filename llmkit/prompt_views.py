"""Prompts and versions as the HTTP API and the CLI show them: LLMKit's field names, plus sha,
path and draft."""

from __future__ import annotations

from datetime import UTC, datetime

from llmkit.errors import LlmkitError, PromptFormatError
from llmkit.versions import Prompt, Version, unified_diff


def prompt_fields(prompt: Prompt, previous: Version | None = None) -> dict[str, object]:
    """A prompt's served version under LLMKit's field names, plus sha, path and draft."""
    version = prompt.version
    fields: dict[str, object] = {
        "id": prompt.id,
        "key": prompt.key,
        "path": prompt.path,
        "deleted": not prompt.present,
    }
    if version is None:
        return fields
    fields.update(version_fields(version, previous))
    return fields


def version_fields(version: Version, previous: Version | None = None) -> dict[str, object]:
    fields: dict[str, object] = {
        "version_id": version.id,
        "version_number": version.number,
        "sha": version.sha,
        "draft": version.draft,
        "error": version.error,
        "updated_at": iso_time(version.commit.committed_at) if version.commit else None,
    }
    try:
        prompt = version.prompt()
    except PromptFormatError as exc:
        fields["error"] = exc.message
        return fields
    meta = prompt.meta
    fields.update(
        system=prompt.system,
        user=prompt.user,
        model=prompt.model,
        max_tokens=meta.get("max_tokens"),
        temperature=meta.get("temperature"),
        json_mode=prompt.json_mode,
        prompt_type=prompt.prompt_type,
        is_chat=prompt.is_chat,
        description=meta.get("description"),
        messages=[{"role": m.role, "content": m.content} for m in prompt.messages],
        frontmatter=dict(meta),
    )
    if previous is not None:
        try:
            before = previous.prompt()
            fields["system_version_diff"] = unified_diff(
                before.system, prompt.system, "system", "system"
            )
            fields["user_version_diff"] = unified_diff(before.user, prompt.user, "user", "user")
        except PromptFormatError:
            pass
    return fields


def iso_time(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def models_in_use(prompts: list[Prompt]) -> dict[str, list[str]]:
    """The model each served prompt names (an alias or a model string), with its prompts."""
    used: dict[str, list[str]] = {}
    for prompt in prompts:
        if prompt.version is None:
            continue
        try:
            used.setdefault(prompt.version.prompt().model, []).append(prompt.key)
        except LlmkitError:  # a prompt that does not parse names no model
            continue
    return used
