"""Run-log rows as the API and the CLI show them.

A stored row keeps its request and response as JSON text and says what storing changed
(`truncated`, `log_notes`, as JSON lists). An entry gives them back as values, and beside them
LLMKit's names for the same things, so that LLMKit's UI reads an entry as it reads its own.
"""

from __future__ import annotations

import json
from typing import Any

from llmkit.runlog_record import COLUMNS


def entry_from_row(row: Any) -> dict[str, Any]:
    """A row as the API and the CLI show it: ours, and beside them LLMKit's names for what it
    has too (`status_code`, the request and response as JSON text in `request_body` and
    `response_data`, which LLMKit's UI hands to JSON.parse); `model_name` of a row logged
    without one is the model it ran."""
    result = {name: row[name] for name in COLUMNS}
    truncated = _json_list(result["truncated"])
    result["request"], request_text = _json_field(result["request"], "request" in truncated)
    result["response"], response_text = _json_field(result["response"], "response" in truncated)
    result["stream"] = bool(result["stream"])
    result["draft"] = bool(result["draft"])
    result["truncated"] = truncated
    result["log_notes"] = _json_list(result["log_notes"])
    result["model_name"] = result["model_name"] or result["model"]
    result["status_code"] = result["http_status"]
    result["request_body"] = request_text
    result["response_data"] = response_text
    return result


def _json_field(text: str | None, truncated: bool) -> tuple[Any, str | None]:
    """A stored JSON field as its value and as JSON text: the stored text itself when it is
    JSON, else (cut, or stored before it had to be JSON) the JSON of the text it reads as."""
    value = json_value(text, truncated)
    if text is None:
        return None, None
    if value is not text:
        return value, text
    # json_value hands back the very text it was given when that is not JSON (or is cut).
    return value, json.dumps(text, ensure_ascii=False)


def json_value(text: str | None, truncated: bool = False) -> Any:
    """A stored JSON text as its value; text that is not JSON (or was cut) as itself."""
    if text is None:
        return None
    if truncated:
        # A cut JSON text is a prefix, which may parse as some other value ("12345" -> "123"),
        # except a string cut inside its quotes: no proper prefix of a JSON string is one.
        if text.startswith('"'):
            try:
                value = json.loads(text)
            except ValueError:
                return text
            if isinstance(value, str):
                return value
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json_list(text: str | None) -> list[Any]:
    value = json_value(text)
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def version_label(row: dict[str, Any]) -> str:
    """How a row's version is shown: its number, else its sha, or `draft <blob>`."""
    if row.get("draft"):
        blob = row.get("draft_blob")
        return f"draft {blob[:7]}" if blob else "draft"
    if row.get("version_number") is not None:
        return str(row["version_number"])
    return (row.get("version_sha") or "?")[:7]
