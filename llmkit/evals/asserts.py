"""Assertions: what an eval case expects of one response, how they are read and checked.

`check()` turns an Assertion and an Outcome (one provider call, made by the runner) into an
AssertionResult with a specific reason. Model-graded `judge` assertions call a judge function
the runner injects, so nothing here calls a model.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

# Keys each assertion type takes besides `type`, `not` and `weight`; `value` goes to
# Assertion.value, the others to Assertion.params.
ASSERTION_KEYS: dict[str, tuple[str, ...]] = {
    "equals": ("value",),
    "contains": ("value",),
    "icontains": ("value",),
    "not-contains": ("value",),
    "starts-with": ("value",),
    "regex": ("value",),
    "is-json": (),
    "json-schema": ("value",),
    "json-path": ("path", "value"),
    "max-latency-ms": ("value",),
    "max-tokens": ("value",),
    "max-cost": ("value",),
    "tool-call": ("name", "arguments"),
    "judge": ("rubric", "model"),
}
ASSERTION_TYPES = tuple(ASSERTION_KEYS)
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    **{kind: ("value",) for kind, keys in ASSERTION_KEYS.items() if "value" in keys},
    "json-path": ("path", "value"),
    "tool-call": ("name",),
    "judge": ("rubric",),
}
COMMON_KEYS = ("type", "not", "weight")
_TEXT_TYPES = ("contains", "icontains", "not-contains", "starts-with")

PREVIEW_CHARS = 80

# (rubric, output, model or None for the default judge model) -> (passed, explanation)
Judge = Callable[[str, str, str | None], Awaitable[tuple[bool, str]]]


@dataclass
class Assertion:
    type: str
    value: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    line: int | None = field(default=None, compare=False)
    negate: bool = False
    weight: float = 1.0


@dataclass
class Outcome:
    """One provider call as the runner saw it. `tool_calls` are in OpenAI's shape
    ({"function": {"name", "arguments": JSON text}}) or flat ({"name", "arguments": {...}})."""

    text: str
    response: dict[str, Any] | None = None
    latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


@dataclass
class AssertionResult:
    type: str
    passed: bool
    score: float
    reason: str
    weight: float = 1.0


# --- reading -------------------------------------------------------------------------------


def type_name(value: Any) -> str:
    names = {
        dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
        int: "a number", float: "a number",
    }
    return "null" if value is None else names.get(type(value), f"a {type(value).__name__}")


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_problem(value: Any, where: str) -> str | None:
    """Where `value` holds something JSON cannot carry, or None."""
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value}, which JSON cannot hold"
    if isinstance(value, list):
        problems = (json_problem(v, f"{where}[{i}]") for i, v in enumerate(value))
        return next((p for p in problems if p), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has the key {key!r}; keys must be strings"
            if problem := json_problem(item, f"{where}.{key}"):
                return problem
        return None
    return f"{where} is {type_name(value)}, which JSON cannot hold"


def unknown_key_message(key: Any, allowed: tuple[str, ...], where: str) -> str:
    hint = difflib.get_close_matches(str(key), allowed, n=1)
    did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
    return f"unknown key {key!r} in {where}{did_you_mean}; known keys: {', '.join(allowed)}"


@lru_cache(maxsize=256)
def compile_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


_PATH_STEP = re.compile(r"""\.([^.\[\]\s]+)|\[(-?\d+)\]|\[(?:'([^']*)'|"([^"]*)")\]""")


@lru_cache(maxsize=256)
def parse_json_path(path: str) -> tuple[str | int, ...]:
    """`$.a.b[0]['c d']` -> ("a", "b", 0, "c d"). Raises ValueError naming the bad part."""
    if not path.startswith("$"):
        raise ValueError(f"JSON path {path!r} must start with '$'")
    steps: list[str | int] = []
    pos = 1
    while pos < len(path):
        match = _PATH_STEP.match(path, pos)
        if match is None:
            raise ValueError(f"JSON path {path!r} is not understood at {path[pos:]!r}")
        name, index, single, double = match.groups()
        if index is not None:
            steps.append(int(index))
        else:
            steps.append(next(s for s in (name, single, double) if s is not None))
        pos = match.end()
    return tuple(steps)


def _json_path_text(steps: Any) -> str:
    return "$" + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps)


def json_schema_problem(schema: Any) -> str | None:
    """Why `schema` is not a valid JSON schema, or None."""
    from jsonschema import exceptions, validators

    if not isinstance(schema, dict):
        return f"a JSON schema must be a mapping, got {type_name(schema)}"
    validator_class = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        validator_class.check_schema(schema)
    except exceptions.SchemaError as exc:
        return f"invalid JSON schema at {_json_path_text(exc.absolute_path)}: {exc.message}"
    return None


def _value_problem(kind: str, value: Any) -> str | None:
    if kind in _TEXT_TYPES and not isinstance(value, str) and not is_number(value):
        return f"{kind} needs a string value, got {type_name(value)} {value!r}"
    if kind == "regex":
        if not isinstance(value, str):
            return f"regex needs a string pattern, got {type_name(value)}"
        try:
            compile_regex(value)
        except re.error as exc:
            return f"invalid regex {value!r}: {exc}"
    if kind == "json-schema":
        return json_schema_problem(value)
    if kind in ("max-latency-ms", "max-cost") and (not is_number(value) or value < 0):
        return f"{kind} needs a number of at least 0, got {value!r}"
    whole = isinstance(value, int) and not isinstance(value, bool)
    if kind == "max-tokens" and (not whole or value < 0):
        return f"max-tokens needs a whole number of at least 0, got {value!r}"
    return json_problem(value, f"{kind} value")


def _param_problem(kind: str, key: str, value: Any) -> str | None:
    if key == "path":
        if not isinstance(value, str):
            return f"json-path 'path' must be a string like '$.a.b[0]', got {value!r}"
        try:
            parse_json_path(value)
        except ValueError as exc:
            return str(exc)
        return None
    if key == "arguments":
        if not isinstance(value, dict):
            return f"tool-call 'arguments' must be a mapping, got {type_name(value)}"
        return json_problem(value, "arguments")
    if not isinstance(value, str) or not value.strip():
        return f"{kind} '{key}' must be a non-empty string, got {value!r}"
    return None


def read_assertion(
    data: dict[Any, Any], line: int | None = None
) -> tuple[Assertion | None, list[tuple[Any, str]]]:
    """An Assertion from its mapping, or None and every problem as (key it is on or None,
    message)."""
    kind = data.get("type")
    if kind is None:
        shorthand = [k for k in data if k in ASSERTION_KEYS]
        hint = f" (write 'type: {shorthand[0]}' and 'value: ...')" if shorthand else ""
        return None, [(None, f"an assertion needs a 'type'{hint}")]
    if not isinstance(kind, str) or kind not in ASSERTION_KEYS:
        hint = difflib.get_close_matches(str(kind), ASSERTION_TYPES, n=1)
        did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
        known = ", ".join(ASSERTION_TYPES)
        message = f"unknown assertion type {kind!r}{did_you_mean}; known types: {known}"
        return None, [("type", message)]
    allowed = (*COMMON_KEYS, *ASSERTION_KEYS[kind])
    problems: list[tuple[Any, str]] = [
        (key, unknown_key_message(key, allowed, f"a {kind} assertion"))
        for key in data if key not in allowed
    ]
    problems += [(None, f"a {kind} assertion needs '{key}'")
                 for key in REQUIRED_KEYS.get(kind, ()) if key not in data]
    negate = data.get("not", False)
    if not isinstance(negate, bool):
        problems.append(("not", f"'not' must be true or false, got {negate!r}"))
    weight = data.get("weight", 1.0)
    if not is_number(weight) or weight <= 0:
        problems.append(("weight", f"'weight' must be a number above 0, got {weight!r}"))
    params = {key: data[key] for key in ASSERTION_KEYS[kind] if key != "value" and key in data}
    checks = [(key, _param_problem(kind, key, value)) for key, value in params.items()]
    if "value" in data and "value" in ASSERTION_KEYS[kind]:
        checks.append(("value", _value_problem(kind, data["value"])))
    problems += [(key, message) for key, message in checks if message]
    if problems:
        return None, problems
    return Assertion(kind, data.get("value"), params, line, negate, float(weight)), []


def assertion_to_dict(assertion: Assertion) -> dict[str, Any]:
    keys = ASSERTION_KEYS.get(assertion.type, ("value", *assertion.params))
    data: dict[str, Any] = {"type": assertion.type}
    for key in keys:
        if key == "value":
            data["value"] = assertion.value
        elif key in assertion.params:
            data[key] = assertion.params[key]
    if assertion.weight != 1:
        data["weight"] = assertion.weight
    if assertion.negate:
        data["not"] = True
    return data


# --- checking ------------------------------------------------------------------------------


class _CannotCheck(Exception):
    """The assertion cannot be decided for this outcome; it fails, even under `not`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Verdict:
    ok: bool
    subject: str
    predicate: str
    observed: str


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    """`text` quoted on one line, cut to `limit` characters."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values in which true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if is_number(a) and is_number(b):
        return bool(a == b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and bool(a == b)


def _is_subset(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and _is_subset(value, actual[key]) for key, value in expected.items()
        )
    return json_equal(expected, actual)


def _parse_json(text: str) -> tuple[bool, Any, str]:
    """(parsed, value, why not)."""
    try:
        return True, json.loads(text), ""
    except ValueError as exc:
        return False, None, str(exc)


def _output_json(outcome: Outcome) -> Any:
    ok, data, why = _parse_json(outcome.text)
    if not ok:
        raise _CannotCheck(f"output is not JSON ({why}): {preview(outcome.text)}")
    return data


def _check_equals(a: Assertion, o: Outcome) -> _Verdict:
    if isinstance(a.value, str):
        ok = o.text.strip() == a.value.strip()
        return _Verdict(ok, "output", f"equal {preview(a.value)}", preview(o.text))
    parsed, data, _ = _parse_json(o.text)
    expected = json.dumps(a.value, ensure_ascii=False)
    return _Verdict(parsed and json_equal(data, a.value), "output", f"equal JSON {expected}",
                    preview(o.text))


def _check_contains(a: Assertion, o: Outcome) -> _Verdict:
    needle = str(a.value)
    if a.type == "icontains":
        return _Verdict(needle.casefold() in o.text.casefold(), "output",
                        f"contain {preview(needle)} (ignoring case)", preview(o.text))
    return _Verdict(needle in o.text, "output", f"contain {preview(needle)}", preview(o.text))


def _check_starts_with(a: Assertion, o: Outcome) -> _Verdict:
    prefix = str(a.value)
    return _Verdict(o.text.lstrip().startswith(prefix), "output", f"start with {preview(prefix)}",
                    preview(o.text))


def _check_regex(a: Assertion, o: Outcome) -> _Verdict:
    try:
        pattern = compile_regex(a.value)
    except (re.error, TypeError) as exc:
        raise _CannotCheck(f"invalid regex {a.value!r}: {exc}") from None
    return _Verdict(pattern.search(o.text) is not None, "output", f"match /{a.value}/",
                    preview(o.text))


def _check_is_json(a: Assertion, o: Outcome) -> _Verdict:
    ok, _, why = _parse_json(o.text)
    observed = "valid JSON" if ok else f"invalid JSON ({why}): {preview(o.text)}"
    return _Verdict(ok, "output", "be valid JSON", observed)


def _check_json_schema(a: Assertion, o: Outcome) -> _Verdict:
    from jsonschema import exceptions, validators

    data = _output_json(o)
    if problem := json_schema_problem(a.value):
        raise _CannotCheck(problem)
    validator_class = validators.validator_for(a.value, default=validators.Draft202012Validator)
    error = exceptions.best_match(validator_class(a.value).iter_errors(data))
    observed = (preview(o.text) if error is None
                else f"{_json_path_text(error.absolute_path)}: {error.message}")
    return _Verdict(error is None, "output", "match the JSON schema", observed)


def _check_json_path(a: Assertion, o: Outcome) -> _Verdict:
    path = a.params.get("path", "$")
    try:
        steps = parse_json_path(path)
    except ValueError as exc:
        raise _CannotCheck(str(exc)) from None
    node = _output_json(o)
    expected = json.dumps(a.value, ensure_ascii=False)
    for step in steps:
        if isinstance(step, int):
            found = isinstance(node, list) and -len(node) <= step < len(node)
        else:
            found = isinstance(node, dict) and step in node
        if not found:
            return _Verdict(False, path, f"equal {expected}", "no value there")
        node = node[step]  # type: ignore[index]
    observed = preview(json.dumps(node, ensure_ascii=False))
    return _Verdict(json_equal(node, a.value), path, f"equal {expected}", observed)


def _check_max_latency(a: Assertion, o: Outcome) -> _Verdict:
    return _Verdict(o.latency_ms <= a.value, "latency", f"be at most {a.value:g} ms",
                    f"{o.latency_ms:.0f} ms")


def _check_max_tokens(a: Assertion, o: Outcome) -> _Verdict:
    return _Verdict(o.output_tokens <= a.value, "output tokens", f"be at most {a.value}",
                    str(o.output_tokens))


def _check_max_cost(a: Assertion, o: Outcome) -> _Verdict:
    if o.cost is None:
        raise _CannotCheck(
            f"cost is unknown for this response (no price for its model), so max-cost {a.value} "
            "cannot be checked"
        )
    return _Verdict(o.cost <= a.value, "cost", f"be at most ${a.value:g}", f"${o.cost:.6f}")


def _tool_call_parts(call: dict[str, Any]) -> tuple[str, Any]:
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        ok, parsed, _ = _parse_json(arguments)
        arguments = parsed if ok else arguments
    return str(function.get("name", "")), arguments


def _check_tool_call(a: Assertion, o: Outcome) -> _Verdict:
    name = a.params.get("name", "")
    wanted = a.params.get("arguments")
    calls = [_tool_call_parts(call) for call in o.tool_calls]
    ok = any(n == name and (wanted is None or _is_subset(wanted, args)) for n, args in calls)
    predicate = f"include a call to {name!r}"
    if wanted is not None:
        predicate += f" with arguments including {json.dumps(wanted, ensure_ascii=False)}"
    listed = ", ".join(f"{n}({json.dumps(args, ensure_ascii=False)})" for n, args in calls)
    return _Verdict(ok, "tool calls", predicate, preview(listed, 200) if calls else "no tool calls")


_CHECKERS: dict[str, Callable[[Assertion, Outcome], _Verdict]] = {
    "equals": _check_equals,
    "contains": _check_contains,
    "icontains": _check_contains,
    "not-contains": _check_contains,
    "starts-with": _check_starts_with,
    "regex": _check_regex,
    "is-json": _check_is_json,
    "json-schema": _check_json_schema,
    "json-path": _check_json_path,
    "max-latency-ms": _check_max_latency,
    "max-tokens": _check_max_tokens,
    "max-cost": _check_max_cost,
    "tool-call": _check_tool_call,
}


async def _check_judge(a: Assertion, o: Outcome, judge: Judge | None) -> _Verdict:
    rubric = a.params.get("rubric", "")
    if judge is None:
        raise _CannotCheck("no judge model is configured, so the judge assertion cannot run")
    try:
        ok, explanation = await judge(rubric, o.text, a.params.get("model"))
    except Exception as exc:  # a failing judge call fails this assertion, not the whole run
        raise _CannotCheck(f"the judge call failed: {type(exc).__name__}: {exc}") from None
    verdict = "pass" if ok else "fail"
    return _Verdict(bool(ok), "output", f"meet the rubric {preview(rubric)}",
                    f"{verdict}: {preview(explanation, 300)}")


def _failed(assertion: Assertion, reason: str) -> AssertionResult:
    return AssertionResult(assertion.type, False, 0.0, reason, assertion.weight)


async def check(
    assertion: Assertion, outcome: Outcome, judge: Judge | None = None
) -> AssertionResult:
    """Check one assertion against one outcome. Never raises for a bad outcome: an errored
    call, an unknown cost or a missing judge fail the assertion with the reason."""
    if outcome.error is not None:
        return _failed(assertion, outcome.error)
    try:
        if assertion.type == "judge":
            verdict = await _check_judge(assertion, outcome, judge)
        elif assertion.type in _CHECKERS:
            verdict = _CHECKERS[assertion.type](assertion, outcome)
        else:
            raise _CannotCheck(f"unknown assertion type {assertion.type!r}")
    except _CannotCheck as exc:
        return _failed(assertion, exc.reason)
    # not-contains is contains negated, so `not: true` on it means contains.
    negate = assertion.negate != (assertion.type == "not-contains")
    passed = verdict.ok != negate
    expectation = f"{verdict.subject} {'not ' if negate else ''}to {verdict.predicate}"
    reason = f"expected {expectation}, got {verdict.observed}"
    return AssertionResult(assertion.type, passed, 1.0 if passed else 0.0, reason, assertion.weight)


async def check_all(
    assertions: list[Assertion], outcome: Outcome, judge: Judge | None = None
) -> list[AssertionResult]:
    """Every assertion's result, in order; judge calls run concurrently."""
    return list(await asyncio.gather(*(check(a, outcome, judge) for a in assertions)))


def score(results: list[AssertionResult]) -> float:
    """The weighted fraction of passed assertions (1.0 when there are none)."""
    total = sum(r.weight for r in results)
    return sum(r.weight * r.score for r in results) / total if total else 1.0


def meets_threshold(fraction: float, threshold: float) -> bool:
    return fraction >= threshold - 1e-9


def run_passed(outcome: Outcome, results: list[AssertionResult], threshold: float = 1.0) -> bool:
    """Whether one run passes: no error, and the weighted pass fraction reaches `threshold`."""
    return outcome.error is None and meets_threshold(score(results), threshold)
