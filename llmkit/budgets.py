"""Budgets: what one input may cost the server, so that no file or request can stall or sink it.

Everything that a few bytes of input can multiply has a bound:
- templates render off the event loop within a CPU time, an output size and a `range()` length
  (enforced in `render`);
- YAML may not use anchors or aliases, nor nest deeper than MAX_YAML_DEPTH: a 435-byte alias
  bomb otherwise expands to hundreds of megabytes wherever it is serialized, and libyaml's
  composer overflows the C stack (a crash, not an exception) on deep nesting;
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

import re
from dataclasses import dataclass, fields
from itertools import accumulate
from typing import Any

import yaml

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
        raise ValueError("'limits' must map limit names to whole numbers")
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


# -- YAML -----------------------------------------------------------------------------------

_YamlLoader = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader
_OPENS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSES = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def yaml_problem(text: str, max_depth: int = MAX_YAML_DEPTH) -> tuple[int, str] | None:
    """The first anchor, alias or too deeply nested collection in YAML `text`, as (1-based line,
    message), or None. Reads parser events only, and stops at the first problem, so neither a
    bomb nor deep nesting is ever expanded or composed. A syntax error is left to the loader,
    which reports it with its own line."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_YamlLoader):
            if isinstance(event, yaml.AliasEvent):
                return _line(event), (
                    f"YAML alias *{event.anchor} is not allowed: write the value out in full"
                    " (anchors and aliases are refused, as they can expand a small file into a"
                    " huge value)"
                )
            anchor = getattr(event, "anchor", None)
            if anchor is not None:
                return _line(event), (
                    f"YAML anchor &{anchor} is not allowed: write the value out in full"
                    " (anchors and aliases are refused, as they can expand a small file into a"
                    " huge value)"
                )
            if isinstance(event, _OPENS):
                depth += 1
                if depth > max_depth:
                    return _line(event), f"YAML nests deeper than {max_depth} levels"
            elif isinstance(event, _CLOSES):
                depth -= 1
    except yaml.YAMLError:
        return None
    return None


def _line(event: yaml.Event) -> int:
    return event.start_mark.line + 1 if event.start_mark is not None else 1


# -- JSON -----------------------------------------------------------------------------------

# A JSON string, escapes included; what remains outside strings is structure and scalars.
_JSON_STRING_RE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
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

