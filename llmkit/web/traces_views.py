"""What the traces pages show of run-log rows: the filters as a form sends them, a row's figures
as a person reads them, and a call's messages and answer out of the JSON the run log keeps.
Plain functions over the rows `RunLog` returns, so they are tested without a server."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from llmkit.errors import BadRequest
from llmkit.runlog_entries import version_label
from llmkit.runlog_query import MAX_PAGE_SIZE
from llmkit.runlog_record import canonical_time

DEFAULT_LIMIT = 50
# A filter as long as this is no prompt key, model or version anyone typed.
MAX_FILTER = 500
# The names the form and its links use, in the order they are shown.
FILTER_FIELDS = ("prompt", "version", "model", "status", "from", "to")
FIELD_LABELS = {
    "prompt": "Prompt",
    "version": "Version",
    "model": "Model",
    "status": "Status",
    "from": "From",
    "to": "To",
    "limit": "Rows per page",
    "cursor": "Older",
    "before": "Newer",
}
STATUS_MARKS = {"ok": "✓", "error": "✕", "cancelled": "⊘"}
COMPLETION_PREFIX = "chatcmpl-"


@dataclass
class Filters:
    """The filters of the traces page as the form sent them (every value a string, empty when
    not given), so that the form shows back exactly what was typed, valid or not. Checked
    when they are used: `limit()` and `for_runlog()` raise BadRequest naming the field."""

    values: dict[str, str] = field(default_factory=dict)
    limit_text: str = ""

    @classmethod
    def of(cls, params: Mapping[str, str]) -> Filters:
        values = {name: (params.get(name) or "").strip() for name in FILTER_FIELDS}
        return cls(values, (params.get("limit") or "").strip())

    def get(self, name: str) -> str:
        return self.values.get(name, "")

    def any(self) -> bool:
        return any(self.values.get(name) for name in FILTER_FIELDS)

    def limit(self) -> int:
        """Rows per page: DEFAULT_LIMIT unless the query names another."""
        text = self.limit_text
        if not text:
            return DEFAULT_LIMIT
        if not (text.isascii() and text.isdigit() and len(text) <= 6):
            raise BadRequest(
                f"Rows per page must be a whole number from 1 to {MAX_PAGE_SIZE},"
                f" got {text[:40]!r}",
                param="limit",
            )
        if not 1 <= int(text) <= MAX_PAGE_SIZE:
            raise BadRequest(
                f"Rows per page must be from 1 to {MAX_PAGE_SIZE}, got {int(text)}",
                param="limit",
            )
        return int(text)

    def for_runlog(self) -> dict[str, Any]:
        """The filters as `RunLog.page_after` takes them; BadRequest naming the field that is
        too long or a time that is not one. The run log checks the rest, naming each field."""
        for name in FILTER_FIELDS:
            if len(self.get(name)) > MAX_FILTER:
                raise BadRequest(
                    f"{FIELD_LABELS[name]} is {len(self.get(name))} characters long;"
                    f" at most {MAX_FILTER}",
                    param=name,
                )
        since = canonical_time(self.get("from"), "from") if self.get("from") else None
        until = canonical_time(self.get("to"), "to") if self.get("to") else None
        if since is not None and until is not None and until <= since:
            raise BadRequest(
                f"To ({until}) must be later than From ({since}): the range holds no time",
                param="to",
            )
        return {
            "prompt": self.get("prompt") or None,
            "version": self.get("version") or None,
            "model": self.get("model") or None,
            "status": self.get("status") or None,
            "since": since,
            "until": until,
        }

    def query(self, **extra: str | None) -> str:
        """The page's query string: the filters given, the page size when one was asked, and
        `extra` (a cursor), so that every link keeps the same filtered view."""
        pairs = [(name, self.values[name]) for name in FILTER_FIELDS if self.values.get(name)]
        if self.limit_text:
            pairs.append(("limit", self.limit_text))
        pairs.extend((name, value) for name, value in extra.items() if value)
        return urlencode(pairs)


def time_input_value(text: str) -> str:
    """A time as a datetime-local input holds it (UTC, no zone): a shared link may carry
    `2024-05-01T10:30:00Z`, which such an input would drop. Text that is no time is kept
    as typed, so the form shows what was wrong."""
    if not text:
        return ""
    try:
        moment = canonical_time(text, "time")
    except BadRequest:
        return text
    shown = moment[:19]  # YYYY-MM-DDTHH:MM:SS of the stored UTC shape
    return shown[:16] if shown.endswith(":00") else shown


def problem_text(exc: BadRequest) -> str:
    """An error about a filter, led by the name of the field as the form labels it."""
    label = FIELD_LABELS.get(exc.param or "")
    return f"{label}: {exc.message}" if label else exc.message


def log_id_of(ident: str) -> str:
    """What the run log is asked for: a completion's id `chatcmpl-<id>` names row <id>."""
    if ident.startswith(COMPLETION_PREFIX) and ident[len(COMPLETION_PREFIX) :].isdigit():
        return ident[len(COMPLETION_PREFIX) :]
    return ident


def may_be_written_soon(ident: str) -> bool:
    """Whether `ident` could name a call whose row the writer has yet to write: an id (ids
    and trace ids are handed out when a call starts), never a trace id prefix."""
    if ident.isascii() and ident.isdigit():
        return True
    return len(ident) == 32 and all(c in "0123456789abcdef" for c in ident)


# -- one row ---------------------------------------------------------------------------------


def when(created_at: str) -> str:
    """A stored time (`2026-01-31T09:30:00.123Z`) as a person reads it."""
    return created_at[:19].replace("T", " ") + " UTC"


def version_text(row: dict[str, Any]) -> str:
    label = version_label(row)
    if label == "?":  # logged without a version (by hand, an import)
        return "no version"
    return f"v{label}" if label.isdigit() else label


def version_href(row: dict[str, Any]) -> str:
    """The prompt page at the version the call ran; the served version for a draft (a draft's
    text is in no commit)."""
    base = f"/prompts/{quote(row['prompt_key'])}"
    if row.get("draft"):
        return base
    if row.get("version_number") is not None:
        return f"{base}?{urlencode({'version': row['version_number']})}"
    if row.get("version_sha"):
        return f"{base}?{urlencode({'version': row['version_sha']})}"
    return base


def ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def tokens(row: dict[str, Any]) -> str:
    """Tokens in → out, or a dash when the provider reported none."""
    got, sent = row.get("input_tokens"), row.get("output_tokens")
    if got is None and sent is None:
        return "—"
    return f"{got if got is not None else '?'} → {sent if sent is not None else '?'}"


def cost(value: float | None) -> str:
    """USD, with as many digits as a fraction of a cent needs; a dash for an unpriced model."""
    if value is None:
        return "—"
    if value == 0:
        return "$0"
    return f"${value:.2f}" if value >= 0.01 else f"${value:.6f}".rstrip("0")


def status_mark(status: str) -> str:
    return STATUS_MARKS.get(status, "?")


@dataclass(frozen=True)
class TraceRow:
    """One row of the traces list, every cell as it is shown: formatted once here rather than
    by calls from the template, which cost a page of 50 rows several times more."""

    id: int
    created_at: str
    when: str
    prompt_key: str
    version_href: str
    version: str
    model: str
    status: str
    mark: str
    latency: str
    tokens: str
    cost: str
    source: str


def trace_row(row: dict[str, Any]) -> TraceRow:
    return TraceRow(
        id=row["id"],
        created_at=row["created_at"],
        when=when(row["created_at"]),
        prompt_key=row["prompt_key"],
        version_href=version_href(row),
        version=version_text(row),
        model=row["model"],
        status=row["status"],
        mark=status_mark(row["status"]),
        latency=ms(row.get("latency_ms")),
        tokens=tokens(row),
        cost=cost(row.get("cost")),
        source=row["source"],
    )


# -- one call --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A message of the call as it reached the provider."""

    role: str
    text: str | None
    # What the message carries beside text (tool calls, image parts), as JSON.
    extra: str | None = None


def content_text(content: Any) -> tuple[str | None, list[Any]]:
    """The text of a message's content, and the parts that are not text (images, audio)."""
    if content is None:
        return None, []
    if isinstance(content, str):
        return content, []
    if isinstance(content, list):
        texts, others = [], []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                others.append(part)
        return ("\n".join(texts) if texts else None), others
    return None, [content]


def messages_of(request: Any) -> list[Message] | None:
    """The request's messages, or None when the logged request has none to show (cut to the
    log's field cap, or not a chat call): the page then shows the raw request."""
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        return None
    shown = []
    for message in request["messages"]:
        if not isinstance(message, dict):
            shown.append(Message("?", None, pretty(message)))
            continue
        text, others = content_text(message.get("content"))
        extra: dict[str, Any] = {}
        for name in ("name", "tool_call_id", "tool_calls"):
            if message.get(name) is not None:
                extra[name] = message[name]
        if others:
            extra["content"] = others
        shown.append(Message(str(message.get("role", "?")), text, pretty(extra) if extra else None))
    return shown


@dataclass(frozen=True)
class Answer:
    text: str | None
    tool_calls: str | None  # as JSON


def answer_of(response: Any) -> Answer | None:
    """The answer's text and tool calls from a logged response: a chat completion, a stream's
    assembled text, or a stream's text with its tool calls. None when there is none to show."""
    if response is None:
        return None
    if isinstance(response, str):
        return Answer(response, None)
    if not isinstance(response, dict):
        return None
    message: Any = response
    choices = response.get("choices")
    if isinstance(choices, list):
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        message = first.get("message") or first.get("delta") or {}
    if not isinstance(message, dict) or not ("content" in message or "tool_calls" in message):
        return None
    text, _ = content_text(message.get("content"))
    calls = message.get("tool_calls")
    return Answer(text, pretty(calls) if calls else None)


def pretty(value: Any) -> str:
    """A JSON value as indented text; text that is not JSON (a field cut short) as it is."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
