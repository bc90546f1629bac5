"""Eval cases as the HTTP API's JSON: ours and LLMKit's fields, both ways. A case from JSON is
checked by the same rules as one read from a file (`spec`).
"""

from __future__ import annotations

import json
from typing import Any

from llmkit.evals.asserts import assertion_to_dict, type_name
from llmkit.evals.cases import (
    CASE_KEYS,
    EvalCase,
    EvalSpecError,
    Problem,
    case_path,
    prompt_key_problem,
)
from llmkit.evals.spec import Checker, read_case
from llmkit.promptfile import surrogate_in
from llmkit.yamlfile import Lines

# Read-only or LLMKit-only fields that case_from_dict accepts and ignores.
_IGNORED_API_KEYS = (
    "id",
    "file",
    "line",
    "prompt_id",
    "evaluation_type",
    "created_at",
    "updated_at",
)


def case_to_dict(case: EvalCase, id: int | str | None = None) -> dict[str, Any]:
    """LLMKit-style JSON for a case; `input_data` (the variables as JSON text, which LLMKit's
    UI hands to JSON.parse) and `system_prompt_input`/`user_prompt_input` are LLMKit's fields,
    kept so its clients keep working."""
    data: dict[str, Any] = {} if id is None else {"id": id}
    user_text = case.user_text
    data.update(
        {
            "prompt_key": case.prompt_key,
            "name": case.name,
            "description": case.description,
            "file": case.file,
            "line": case.line,
            "vars": case.vars,
            "user_vars": case.user_vars,
            "messages": case.messages,
            "model": case.model,
            "repeat": case.repeat,
            "threshold": case.threshold,
            "assert": [assertion_to_dict(a) for a in case.assertions],
            "input_data": json.dumps({**case.vars, **case.user_vars}, ensure_ascii=False),
            "system_prompt_input": json.dumps(case.vars) if case.vars else None,
            "user_prompt_input": json.dumps(case.user_vars)
            if case.user_vars
            else (user_text or ""),
        }
    )
    return data


def _from_llmkit_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Our case fields from LLMKit's, where ours are absent: input_data is the template
    variables (an object, or a string holding one, as LLMKit stores it); system_prompt_input is
    a JSON object of system variables; user_prompt_input is a JSON object of user variables or
    the user message itself."""
    llmkit_keys = ("input_data", "system_prompt_input", "user_prompt_input")
    fields = {k: v for k, v in data.items() if k not in llmkit_keys}
    input_data = data.get("input_data")
    if input_data is not None and "vars" not in data:
        variables = _json_object_or_self(input_data)
        if not isinstance(variables, dict):
            message = (
                "'input_data' must be a JSON object of template variables (or a string holding"
                f" one), got {type_name(input_data)}"
            )
            raise EvalSpecError([Problem("", None, message)])
        fields["vars"] = variables
    system_input = data.get("system_prompt_input")
    if system_input not in (None, "") and "vars" not in fields:
        fields["vars"] = _json_object_or_self(system_input)
    user_input = data.get("user_prompt_input")
    if user_input not in (None, "") and not {"user_vars", "messages", "input"} & data.keys():
        parsed = _json_object_or_self(user_input)
        fields["user_vars" if isinstance(parsed, dict) else "input"] = parsed
    return fields


def _json_object_or_self(value: Any) -> Any:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, dict) else value
    return value


def case_from_dict(
    data: dict[str, Any], prompt_key: str | None = None, file: str | None = None
) -> EvalCase:
    """A case from API JSON (ours or LLMKit's fields). `prompt_key` wins over the body's;
    `file` defaults to case_path(). Raises EvalSpecError naming every bad field."""
    c = Checker(file or "", Lines(), default_line=None)
    if not isinstance(data, dict):
        message = f"an eval case must be a JSON object, got {type_name(data)}"
        raise EvalSpecError([Problem("", None, message)])
    fields = {k: v for k, v in _from_llmkit_fields(data).items() if k not in _IGNORED_API_KEYS}
    body_key = fields.pop("prompt_key", None)
    given = prompt_key or body_key
    problem = prompt_key_problem(given)
    key = None if problem else str(given)
    if problem:
        c.error(None, f"'prompt_key': {problem}")
    c.unknown_keys(fields, CASE_KEYS, "an eval case")
    fields = {k: v for k, v in fields.items() if k in CASE_KEYS and v is not None}
    for name, value in fields.items():
        if surrogate_in(value) is not None:
            # An eval file is UTF-8 text: a lone surrogate can neither be written nor read back.
            c.error(
                None,
                f"'{name}' holds a lone surrogate, which is not a character and cannot"
                " be stored as UTF-8",
            )
    if file is None and key is not None and isinstance(fields.get("name"), str):
        c.path = case_path(key, fields["name"])
    case = read_case(c, fields, key, {}, CASE_KEYS)
    errors = [p for p in c.problems if p.severity == "error"]
    if errors or case is None:
        raise EvalSpecError(errors or [Problem(c.path, None, "invalid eval case")])
    return case
