"""Prompts and versions as the HTTP API and the CLI show them: LLMKit's field names, plus sha,
path and draft."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from llmkit.errors import PromptFormatError
from llmkit.models import ModelRegistry, effective_settings, model_id, provider_name_of
from llmkit.versions import Prompt, Version, unified_diff


def prompt_fields(
    prompt: Prompt, previous: Version | None = None, models: ModelRegistry | None = None
) -> dict[str, object]:
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
    fields.update(version_fields(version, previous, models))
    return fields


def version_fields(
    version: Version, previous: Version | None = None, models: ModelRegistry | None = None
) -> dict[str, object]:
    """A version under LLMKit's names. With `models` (llmkit.yaml's aliases), a max_tokens or
    temperature the file leaves to the model is the number the call runs with (the alias's,
    else the documented defaults), as LLMKit's UI needs numbers; `frontmatter` still says what
    the file sets. The diffs against `previous` are null for a first version."""
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
    max_tokens, temperature = meta.get("max_tokens"), meta.get("temperature")
    if models is not None and (max_tokens is None or temperature is None):
        default_temperature, default_max_tokens = effective_settings(models, prompt.model)
        max_tokens = default_max_tokens if max_tokens is None else max_tokens
        temperature = default_temperature if temperature is None else temperature
    fields.update(
        system=prompt.system,
        user=prompt.user,
        model=prompt.model,
        model_id=model_id(prompt.model),
        provider=provider_name_of(models, prompt.model),
        max_tokens=max_tokens,
        temperature=temperature,
        json_mode=prompt.json_mode,
        prompt_type=prompt.prompt_type,
        is_chat=prompt.is_chat,
        description=meta.get("description"),
        messages=[{"role": m.role, "content": m.content} for m in prompt.messages],
        frontmatter=dict(meta),
    )
    fields["system_version_diff"] = fields["user_version_diff"] = None
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


def version_performance(
    versions: list[Version], figures: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """LLMKit's performance array: one item per committed version, oldest first, with the eval
    figures recorded for it (`run_count` 0 and `avg_score` null when none were), then drafts
    and versions no longer in history that have figures. `version_date` is the commit's date
    (for the others, their last run's)."""
    by_sha = {f["version_id"]: f for f in figures if not f.get("draft") and f.get("version_id")}
    empty = {"run_count": 0, "result_count": 0, "pass_rate": None, "avg_score": None}
    rows: list[dict[str, Any]] = []
    for version in versions:
        if version.draft or version.sha is None:
            continue
        found = by_sha.pop(version.sha, None)
        rows.append(
            {
                **empty,
                "scored_count": 0,
                "last_run_at": None,
                **(found or {}),
                "version_id": version.id,
                "version_number": version.number,
                "version_date": iso_time(version.commit.committed_at) if version.commit else None,
                "sha": version.sha,
                "draft": False,
                "draft_blob": None,
            }
        )
    others = [f for f in figures if f.get("draft") or f.get("version_id") in by_sha]
    for found in others:
        rows.append(
            {
                **found,
                "version_id": None,
                "version_date": found.get("last_run_at"),
                "sha": None if found.get("draft") else found.get("version_id"),
            }
        )
    return rows
