"""Values the run log can always store and always read back.

A run-log row carries whatever a caller, a template or an upstream put in a call: a lone
surrogate from a JSON `\\ud800` escape (valid JSON, but no UTF-8 encoding exists for it), a NUL,
a NaN, an integer wider than SQLite's 64 bits, an object JSON cannot express, a render of
hundreds of megabytes. Each would make SQLite, the UTF-8 codec or a JSON reader refuse the row
or the page that lists it. `Shaper` turns such values into ones everyone accepts and says what
it changed, field by field, in notes stored with the row, so nothing is changed silently.

Text is cut to a byte cap per field (`truncated` names the fields that were cut). A JSON string
(a streamed answer) is cut inside its quotes and stays a JSON string; any other cut JSON field is
stored as the text prefix it was cut to, and read back as that text.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

REPLACEMENT = "\ufffd"
# Lone surrogates have no UTF-8 encoding; NUL ends text for SQLite's own string functions.
_UNSTORABLE = re.compile("[\ud800-\udfff\x00]")
_INT64 = (-(2**63), 2**63 - 1)
# Deeper structures are stored as a marker: json.dumps would hit the recursion limit anyway.
MAX_DEPTH = 100
MAX_INT_BITS = 10_000


def utc_now() -> str:
    """Now as ISO-8601 UTC with milliseconds; this fixed shape sorts as text."""
    return format_time(datetime.now(UTC))


def format_time(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_timestamp(seconds: float) -> str:
    """A Unix time (seconds since the epoch) in format_time's shape."""
    return format_time(datetime.fromtimestamp(seconds, UTC))


def storable_text(text: str) -> tuple[str, int]:
    """`text` with every lone surrogate and NUL replaced by U+FFFD, and how many were."""
    if text.isascii():
        if "\x00" not in text:
            return text, 0
    elif _UNSTORABLE.search(text) is None:
        return text, 0
    return _UNSTORABLE.subn(REPLACEMENT, text)


def cut_to_bytes(text: str, max_bytes: int) -> tuple[str, int]:
    """`text` cut to at most `max_bytes` of UTF-8 on a character boundary, and its own size in
    bytes (measured only when it might be over: a character is at most 4 bytes)."""
    if len(text) * 4 <= max_bytes:
        return text, -1
    if len(text) <= max_bytes:
        size = len(text.encode("utf-8", "replace"))
        if size <= max_bytes:
            return text, size
    else:
        size = -1  # over the cap whatever its encoding: not worth encoding all of it to say
    head = text[:max_bytes].encode("utf-8", "replace")[:max_bytes]
    return head.decode("utf-8", "ignore"), size


class Shaper:
    """Shapes one row's values; `notes` says what was changed and `truncated` which fields
    were cut."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.notes: list[str] = []
        self.truncated: list[str] = []
        self._as_text_count = 0

    def text(self, name: str, value: str | None) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.notes.append(f"{name}: a {type(value).__name__} stored as text")
            value = _as_text(value)
        value, replaced = storable_text(value)
        if replaced:
            self.notes.append(
                f"{name}: {replaced} character(s) that UTF-8 or SQLite cannot store replaced"
                " with U+FFFD"
            )
        return self._capped(name, value)

    def json(self, name: str, value: Any) -> str:
        """`value` as JSON text: strict JSON (no NaN), encodable, capped."""
        self._as_text_count = 0
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False, default=self._default)
            if self._as_text_count:
                self.notes.append(
                    f"{name}: {self._as_text_count} value(s) JSON cannot express stored as text"
                )
        except (TypeError, ValueError, RecursionError) as exc:
            self.notes.append(f"{name}: not JSON as it was ({type(exc).__name__}); made JSON-able")
            text = self._jsonable_text(name, value)
        except MemoryError:
            text = json.dumps(f"<{name} not stored: too large to serialize>")
            self.notes.append(f"{name}: too large to serialize (MemoryError); not stored")
            self.truncated.append(name)
            return text
        # json.dumps escapes NUL, so only lone surrogates can be left in the text.
        text, replaced = storable_text(text)
        if replaced:
            self.notes.append(
                f"{name}: {replaced} lone surrogate(s) that UTF-8 cannot encode replaced with"
                " U+FFFD"
            )
        if isinstance(value, str):
            return self._capped_string(name, text)
        return self._capped(name, text)

    def _capped_string(self, name: str, text: str) -> str:
        """A JSON string over the cap is cut inside its quotes, so it stays a JSON string (a
        streamed answer reads back as the text it began with, not as a broken literal)."""
        cut, size = cut_to_bytes(text, self.max_bytes)
        if cut is text:
            return text
        value: str = json.loads(text)
        budget = self.max_bytes - 2
        # Escapes make the JSON longer than the string's own bytes: shrink until it fits.
        for _ in range(8):
            head, _ = cut_to_bytes(value, max(budget, 0))
            cut = json.dumps(head, ensure_ascii=False)
            over = len(cut.encode("utf-8")) - self.max_bytes
            if over <= 0:
                break
            budget -= over
        else:
            return self._capped(name, text)
        shown = f"{size:,} bytes" if size >= 0 else f"{len(text):,} characters"
        self.notes.append(f"{name}: cut from {shown} to {self.max_bytes:,} bytes")
        self.truncated.append(name)
        return cut

    def integer(self, name: str, value: int | None) -> int | None:
        if value is not None and not _INT64[0] <= value <= _INT64[1]:
            self.notes.append(f"{name}: {value} does not fit in 64 bits; stored as null")
            return None
        return value

    def number(self, name: str, value: float | None) -> float | None:
        if value is None:
            return None
        if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            self.notes.append(f"{name}: {value} does not fit in 64 bits; stored as null")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.notes.append(f"{name}: {value} is not a finite number; stored as null")
            return None
        return value

    def _capped(self, name: str, text: str) -> str:
        cut, size = cut_to_bytes(text, self.max_bytes)
        if cut is not text:
            shown = f"{size:,} bytes" if size >= 0 else f"{len(text):,} characters"
            self.notes.append(f"{name}: cut from {shown} to {self.max_bytes:,} bytes")
            self.truncated.append(name)
        return cut

    def _default(self, value: object) -> Any:
        """What json.dumps cannot express by itself: stored as text, and counted for the note."""
        self._as_text_count += 1
        if isinstance(value, (set, frozenset)):
            return list(value)
        if isinstance(value, (bytes, bytearray)):
            return bytes(value).decode("utf-8", "replace")
        return _as_text(value)

    def _jsonable_text(self, name: str, value: Any) -> str:
        try:
            return json.dumps(_jsonable(value, 0, set()), ensure_ascii=False, allow_nan=False)
        except Exception as exc:  # the walk guards every known case; this is the last resort
            return json.dumps(f"<{name} not stored: {type(exc).__name__}>")


def _as_text(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _jsonable(value: Any, depth: int, path: set[int]) -> Any:
    """A copy of `value` that strict json.dumps takes: keys as text, non-finite floats as text,
    cycles and deep nesting as markers, other objects as their text."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        # Python will not write an integer of more than 4300 digits as text (a DoS guard).
        if value.bit_length() > MAX_INT_BITS:
            return f"<an integer of {value.bit_length()} bits>"
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= MAX_DEPTH:
        return "<nested too deep>"
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        if id(value) in path:
            return "<circular reference>"
        path.add(id(value))
        try:
            if isinstance(value, dict):
                return {_key(k): _jsonable(v, depth + 1, path) for k, v in value.items()}
            return [_jsonable(v, depth + 1, path) for v in value]
        finally:
            path.discard(id(value))
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return _as_text(value)


def _key(key: object) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, float) and not math.isfinite(key):
        return str(key)
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    return _as_text(key)


def scrubbed(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Every value of a row in a form SQLite binds whatever it was: for a row that reached the
    writer unshaped, or that still failed once shaped."""
    result: list[Any] = []
    for value in values:
        if value is None or isinstance(value, bool):
            result.append(None if value is None else int(value))
        elif isinstance(value, int):
            result.append(value if _INT64[0] <= value <= _INT64[1] else None)
        elif isinstance(value, float):
            result.append(value if math.isfinite(value) else None)
        elif isinstance(value, str):
            result.append(storable_text(value)[0])
        else:
            result.append(storable_text(_as_text(value))[0])
    return tuple(result)
