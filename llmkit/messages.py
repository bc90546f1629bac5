"""The conversation a call sends upstream: the prompt's rendered sections, then the caller's
turns, with template variables read from the caller's first messages where the prompt's type says
so, and warnings for the caller about what was not sent as given. Caller text is never rendered
as a template: only the prompt's own sections are."""

from __future__ import annotations

import json
from typing import Any

from llmkit.budgets import MAX_JSON_DEPTH, Limits, json_too_deep
from llmkit.errors import BadRequest, clipped
from llmkit.promptfile import PromptFile, path_for_key
from llmkit.render import render_messages


def build_messages(
    key: str,
    prompt: PromptFile,
    messages: list[dict[str, Any]],
    variables: Any,
    user_variables: dict[str, Any] | None = None,
    *,
    limits: Limits | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The conversation sent upstream: the prompt's rendered sections (within `limits`), then
    the caller's turns; and warnings for the caller about what was not sent as given."""
    kind = prompt.prompt_type
    rest = list(messages)
    system_index = next((i for i, m in enumerate(rest) if m.get("role") == "system"), None)
    caller_system = rest.pop(system_index) if system_index is not None else None
    user_vars = user_variables
    warnings: list[str] = []
    if variables is not None:
        if not isinstance(variables, dict):
            raise BadRequest("variables must be a JSON object", param="variables")
        system_vars = variables
    else:
        system_vars = {}
        if kind in ("dynamic_system", "dynamic_both") and caller_system is not None:
            system_vars = _json_object(caller_system.get("content"), key, kind, "system")
            caller_system = None  # read as the template's variables
        if kind == "dynamic_both":
            user_index = next((i for i, m in enumerate(rest) if m.get("role") == "user"), None)
            if user_index is not None:
                user_vars = _json_object(rest.pop(user_index).get("content"), key, kind, "user")
    if caller_system is not None:
        warnings.append(_dropped_system_warning(key, prompt))
    # The key was validated when it was looked up; errors name the file.
    rendered: list[dict[str, Any]] = render_messages(
        prompt, system_vars, user_vars, limits=limits, path=path_for_key(key)
    )
    if prompt.is_chat:
        return rendered + rest, warnings
    if kind == "dynamic_both" or (rendered and rendered[-1]["role"] == "user"):
        return rendered, warnings
    last_user = next((m for m in reversed(rest) if m.get("role") == "user"), None)
    return rendered + ([last_user] if last_user is not None else []), warnings


def _dropped_system_warning(key: str, prompt: PromptFile) -> str:
    """What the caller is told when its system message is not sent: a prompt's system message
    is the prompt's (its instructions are what is versioned and reviewed), so a caller's never
    replaces it; answered, with this warning, rather than refused, as OpenAI clients send a
    system message by habit."""
    if any(m.role == "system" for m in prompt.messages):
        return (
            f"the caller's system message was not sent: prompt {key!r} sends its own"
            " (to pass template variables in it instead, leave out 'variables')"
        )
    return f"the caller's system message was not sent: prompt {key!r} has no system message"


def _json_object(content: Any, key: str, kind: str, role: str) -> dict[str, Any]:
    if isinstance(content, dict):
        return content
    text = content if isinstance(content, str) else ""
    if json_too_deep(text, MAX_JSON_DEPTH):
        raise BadRequest(
            f"The first {role} message of a call to {key!r} holds template variables nested"
            f" more than {MAX_JSON_DEPTH} levels deep",
            param="messages",
        )
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        shown = clipped(text, 80)
        raise BadRequest(
            f"Prompt {key!r} is {kind}: the first {role} message must be a JSON object of template"
            f" variables (or pass a top-level 'variables' object); got {shown!r}",
            param="messages",
        )
    return value
