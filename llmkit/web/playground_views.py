"""What the playground shows and reads, as plain functions: the form's fields from a prompt's
template, and the call's body from what the form sent. Tested without a browser.

A variable's value is text, or JSON when its box is ticked (as `llmkit run --var NAME:=JSON`
takes it). A variable the template loops over or reads a field of is shown ticked: text
would fail there. One that stands alone on its own line gets a text area: it is a passage, not
a word."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, TemplateSyntaxError, nodes

from llmkit import budgets
from llmkit.errors import BadRequest, clipped
from llmkit.promptfile import TEMPLATE_RE, PromptFile

# How many turns of a conversation the form takes: two fields each, within the 100 fields a
# form may have (`deps.MAX_FORM_FIELDS`), with room left for the variables.
MAX_TURNS = 20
TURN_ROLES = ("user", "assistant")
# A value this long, or on several lines, is edited in a text area when the form comes back.
LONG_VALUE = 80
VAR_FIELD = "var:"
JSON_FIELD = "json:"

_parser = Environment()


@dataclass(frozen=True)
class VariableField:
    """One input of the form: a template variable and what was typed into it."""

    name: str
    value: str = ""
    as_json: bool = False
    structured: bool = False  # looped over, or a field of it read: JSON, not text
    long: bool = False

    @property
    def input_name(self) -> str:
        return VAR_FIELD + self.name

    @property
    def json_name(self) -> str:
        return JSON_FIELD + self.name


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


def next_turn(turns: list[Turn]) -> Turn:
    """An empty turn that answers the last one: a conversation alternates."""
    last = turns[-1].role if turns else "assistant"
    return Turn("assistant" if last == "user" else "user", "")


def _structured_names(source: str) -> set[str]:
    """Names the template iterates over or reads an attribute or item of."""
    try:
        tree = _parser.parse(source)
    except (TemplateSyntaxError, RecursionError):
        return set()
    found: set[str] = set()
    for loop in tree.find_all(nodes.For):
        if isinstance(loop.iter, nodes.Name):
            found.add(loop.iter.name)
    for access in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = getattr(access, "node", None)
        if isinstance(target, nodes.Name):
            found.add(target.name)
    return found


def _on_own_line(name: str, source: str) -> bool:
    pattern = rf"^[ \t]*\{{\{{-?\s*{re.escape(name)}\s*(\|[^}}]*)?-?\}}\}}[ \t]*$"
    return re.search(pattern, source, re.MULTILINE) is not None


def variable_fields(
    prompt: PromptFile,
    names: list[str],
    values: dict[str, str] | None = None,
    as_json: set[str] | None = None,
) -> list[VariableField]:
    """The form's inputs for `names` (the variables the prompt reads), with `values` typed
    before; a ticked JSON box is kept as it was sent, else ticked for a structured variable."""
    values = values or {}
    sources = [m.content for m in prompt.messages if TEMPLATE_RE.search(m.content)]
    structured: set[str] = set()
    for source in sources:
        structured |= _structured_names(source)
    fields = []
    for name in names:
        value = values.get(name, "")
        is_structured = name in structured
        long = (
            is_structured
            or any(_on_own_line(name, s) for s in sources)
            or len(value) > LONG_VALUE
            or "\n" in value
        )
        ticked = (name in as_json) if as_json is not None else is_structured
        fields.append(VariableField(name, value, ticked, is_structured, long))
    return fields


def conversation_kind(prompt: PromptFile) -> str | None:
    """What the caller adds to the rendered sections: "chat" (a conversation of turns, for a
    chat prompt), "message" (one user message, for a prompt that does not end with a user
    section, whose caller's last user message is sent), or None (nothing is read)."""
    if prompt.is_chat:
        return "chat"
    if not prompt.messages or prompt.messages[-1].role != "user":
        return "message"
    return None


def read_variables(fields: dict[str, str], names: list[str]) -> dict[str, Any]:
    """The variables of a form: each named one's text, or its JSON value when its box is
    ticked; a value that is not JSON is a 400 naming the variable. A field left empty is not
    sent, so that the template names it if it needs it (`missing_variables`)."""
    variables: dict[str, Any] = {}
    for name in names:
        text = fields.get(VAR_FIELD + name, "").replace("\r\n", "\n")
        if not text:
            continue
        if not fields.get(JSON_FIELD + name):
            variables[name] = text
            continue
        variables[name] = json_value(name, text)
    return variables


def json_value(name: str, text: str) -> Any:
    """`text` read as the JSON value of variable `name`, or a 400 saying why it is not one."""
    try:
        return budgets.json_value(text)
    except ValueError as exc:
        shown = clipped(text, 80)
        raise BadRequest(
            f"Variable {name!r} is marked as JSON but is not a JSON value ({exc}): got"
            f" {shown!r}. Untick its JSON box to send the text itself",
            param=f"variables.{name}",
        ) from None


def read_turns(fields: dict[str, str]) -> list[Turn]:
    """The conversation of a chat prompt's form, in order: `role:N` and `content:N` for N from
    0; a turn left empty is dropped, a role other than user or assistant is a 400."""
    turns = []
    for index in range(MAX_TURNS):
        role = fields.get(f"role:{index}")
        if role is None:
            break
        content = fields.get(f"content:{index}", "").replace("\r\n", "\n")
        if role not in TURN_ROLES:
            raise BadRequest(
                f"Turn {index + 1} has role {role[:40]!r}; a turn is a user or assistant turn",
                param=f"role:{index}",
            )
        turns.append(Turn(role, content))
    return turns


def request_body(
    key: str,
    version: str | None,
    variables: dict[str, Any],
    turns: list[Turn],
    model: str | None,
) -> dict[str, Any]:
    """The chat completions body the playground sends (the page's script builds the same one,
    with `stream`)."""
    body: dict[str, Any] = {
        "model": f"{key}@{version}" if version else key,
        "variables": variables,
        "messages": [{"role": t.role, "content": t.content} for t in turns if t.content],
    }
    if model:
        body["model_override"] = model
    return body


@dataclass(frozen=True)
class Figures:
    """A call's run-log entry as the page shows it (the page's script writes the same)."""

    tokens: str
    cost: str
    latency: str
    ttft: str
    log_id: int | None
    trace_id: str | None
    status: str


def _count(value: Any) -> str:
    return str(value) if isinstance(value, int) else "?"


def milliseconds(value: Any) -> str:
    return f"{round(value):,} ms" if isinstance(value, int | float) else "not measured"


def dollars(value: Any) -> str:
    if not isinstance(value, int | float):
        return "not known for this model"
    if value and value < 0.000001:
        return "under $0.000001"
    return f"${value:.6f}".rstrip("0").rstrip(".") if value else "$0"


def figures(entry: dict[str, Any]) -> Figures:
    given = entry.get("input_tokens") is not None or entry.get("output_tokens") is not None
    tokens = (
        f"{_count(entry.get('input_tokens'))} in / {_count(entry.get('output_tokens'))} out"
        if given
        else "not reported"
    )
    ttft = milliseconds(entry.get("ttft_ms")) if entry.get("stream") else "not streamed"
    log_id = entry.get("id")
    return Figures(
        tokens=tokens,
        cost=dollars(entry.get("cost")),
        latency=milliseconds(entry.get("latency_ms")),
        ttft=ttft,
        log_id=log_id if isinstance(log_id, int) else None,
        trace_id=entry.get("trace_id"),
        status=str(entry.get("status") or ""),
    )
