"""Budgets: what one input may cost the server, so that no file or request can stall or sink it.

Everything that a few bytes of input can multiply has a bound:
- templates render off the event loop within a CPU time, an output size and a `range()` length
  (enforced in `render`);
- YAML may not use anchors or aliases, nor nest deeper than MAX_YAML_DEPTH (enforced in
  `yamlfile`, before anything is composed);
- a prompt file is at most `prompt_file_bytes` long: larger files are an error in the index and
  in lint, never parsed or served;
- a JSON request body nests at most `Settings.max_body_depth` levels.

The `limits:` section of llmkit.yaml sets the first and the third (each key is optional):

```yaml
limits:
  render_cpu_ms: 1000           # CPU time of one render (all sections of one call)
  render_output_chars: 1048576  # characters one render may produce, and the largest value
                                # (string or list) a template may build
  render_range: 10000           # items one range() may yield
  prompt_file_bytes: 262144     # size of a prompt file
```
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from itertools import accumulate
from typing import Any

MAX_YAML_DEPTH = 64
# JSON nesting allowed in a request body (the default of Settings.max_body_depth) and in
# variables passed as a message's JSON text.
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class Limits:
    render_cpu_ms: int = 1000
    render_output_chars: int = 1024 * 1024
    render_range: int = 10_000
    prompt_file_bytes: int = 256 * 1024


# The largest value each limit may be set to: a budget that could not protect anything is a
# configuration error, not a silent choice.
LIMIT_CEILINGS = {
    "render_cpu_ms": 60_000,
    "render_output_chars": 64 * 1024 * 1024,
    "render_range": 10_000_000,
    "prompt_file_bytes": 16 * 1024 * 1024,
}
DEFAULT_LIMITS = Limits()


def limits_from(data: Any) -> Limits:
    """The `limits:` section of llmkit.yaml; raises ValueError naming the key that is wrong."""
    if data is None:
        return DEFAULT_LIMITS
    if not isinstance(data, dict):
        # ValueError like every other bad limit: the caller reports them all the same way.
        raise ValueError("'limits' must map limit names to whole numbers")  # noqa: TRY004
    known = [f.name for f in fields(Limits)]
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ValueError(f"unknown limit(s) {', '.join(unknown)} (known: {', '.join(known)})")
    for name, value in data.items():
        ceiling = LIMIT_CEILINGS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ceiling:
            raise ValueError(
                f"limits.{name} must be a whole number from 1 to {ceiling}, got {value!r}"
            )
    return Limits(**data)


# -- JSON -----------------------------------------------------------------------------------

# A JSON string, escapes included; what remains outside strings is structure and scalars.
_JSON_STRING_RE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
# Opening brackets become 1 and closing ones 255, which is -1 as a signed byte.
_DEPTH_STEPS = bytes.maketrans(_BRACKETS, b"\x01\xff\x01\xff")


def json_too_deep(data: bytes | str, max_depth: int) -> bool:
    """Whether JSON text nests more than `max_depth` arrays and objects deep, found without
    parsing it (a parser recurses once per level). Costs two byte counts when the text holds
    fewer brackets than the limit, else a few passes in C."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False
    steps = _JSON_STRING_RE.sub(b"", raw).translate(_DEPTH_STEPS, _NOT_BRACKETS)
    return max(accumulate(memoryview(steps).cast("b")), default=0) > max_depth


def json_value(text: str) -> Any:
    """A variable's value given as JSON text, or ValueError saying why it is not one (one
    nested more than MAX_JSON_DEPTH levels is refused before the parser recurses into it)."""
    if json_too_deep(text, MAX_JSON_DEPTH):
        raise ValueError(f"it nests more than {MAX_JSON_DEPTH} levels")
    return json.loads(text)
