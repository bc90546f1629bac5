"""Assertions: what an eval case expects of one response, how they are read and checked.

Each assertion type is one check function registered with `@assertion(...)`, which names the
type and the keys it takes with the check of each key's value; reading a case file, its
"did you mean" messages, writing it back and checking a response all go by that registry.
`check()` turns an Assertion and an Outcome (one provider call, made by the runner) into an
AssertionResult with a specific reason. Model-graded `judge` assertions call a judge function
the runner injects, so nothing here calls a model.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

COMMON_KEYS = ("type", "not", "weight")
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


class CannotCheck(Exception):
    """The assertion cannot be decided for this outcome; it fails, even under `not`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Verdict:
    """What a check found, worded for the reason: "expected {subject} [not ]to {predicate},
    got {observed}"."""

    ok: bool
    subject: str
    predicate: str
    observed: str


# --- the registry of assertion types --------------------------------------------------------

# Checks one key's value: (assertion type, key, value) -> the problem, or None when it is fine.
KeyCheck = Callable[[str, str, Any], str | None]


@dataclass(frozen=True)
class AssertionType:
    """A registered assertion type. `keys`: the keys it takes besides `type`, `not` and
    `weight`, in the order they are written, each with the check of its value; `value` goes to
    Assertion.value, the others to Assertion.params. `negates`: the check's verdict is turned
    round (not-contains is contains negated). `judged`: the check is a coroutine that takes
    the judge function."""

    name: str
    keys: dict[str, KeyCheck]
    required: tuple[str, ...]
    check: Callable[..., Any]
    negates: bool = False
    judged: bool = False


ASSERTIONS: dict[str, AssertionType] = {}


def assertion(
    name: str, /, *, optional: tuple[str, ...] = (), negates: bool = False, **keys: KeyCheck
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated check function as assertion type `name`. Every keyword besides
    `optional` and `negates` is a key the type takes, with the check of its value; keys are
    required unless named in `optional`. The check is `def check(a, o) -> Verdict`, or
    `async def check(a, o, judge) -> Verdict` when it calls the judge model; it raises
    CannotCheck when the outcome cannot decide it."""
    unknown = set(optional) - set(keys)
    if unknown:
        raise ValueError(f"assertion {name!r}: optional keys {sorted(unknown)} are not its keys")

    def register(check: Callable[..., Any]) -> Callable[..., Any]:
        if name in ASSERTIONS:
            raise ValueError(f"assertion type {name!r} is already registered")
        required = tuple(key for key in keys if key not in optional)
        judged = inspect.iscoroutinefunction(check)
        ASSERTIONS[name] = AssertionType(name, dict(keys), required, check, negates, judged)
        return check

    return register


# --- reading -------------------------------------------------------------------------------


def type_name(value: Any) -> str:
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
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


# --- checks of a key's value (the KeyCheck of each key in @assertion) ------------------------


def json_value(kind: str, key: str, value: Any) -> str | None:
    """Any value JSON can hold."""
    return json_problem(value, f"{kind} {key}")


def text(kind: str, key: str, value: Any) -> str | None:
    """A string (a number is taken as its text)."""
    if not isinstance(value, str) and not is_number(value):
        return f"{kind} needs a string {key}, got {type_name(value)} {value!r}"
    return json_value(kind, key, value)


def regex_pattern(kind: str, key: str, value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{kind} needs a string pattern, got {type_name(value)}"
    try:
        compile_regex(value)
    except re.error as exc:
        return f"invalid regex {value!r}: {exc}"
    return None


def json_schema(kind: str, key: str, value: Any) -> str | None:
    return json_schema_problem(value)


def non_negative_number(kind: str, key: str, value: Any) -> str | None:
    if not is_number(value) or value < 0:
        return f"{kind} needs a number of at least 0, got {value!r}"
    return json_value(kind, key, value)


def whole_number(kind: str, key: str, value: Any) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return f"{kind} needs a whole number of at least 0, got {value!r}"
    return None


def json_path(kind: str, key: str, value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{kind} '{key}' must be a string like '$.a.b[0]', got {value!r}"
    try:
        parse_json_path(value)
    except ValueError as exc:
        return str(exc)
    return None


def json_object(kind: str, key: str, value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"{kind} '{key}' must be a mapping, got {type_name(value)}"
    return json_problem(value, key)


def non_empty_text(kind: str, key: str, value: Any) -> str | None:
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
        shorthand = [k for k in data if k in ASSERTIONS]
        hint = f" (write 'type: {shorthand[0]}' and 'value: ...')" if shorthand else ""
        return None, [(None, f"an assertion needs a 'type'{hint}")]
    if not isinstance(kind, str) or kind not in ASSERTIONS:
        close = difflib.get_close_matches(str(kind), tuple(ASSERTIONS), n=1)
        did_you_mean = f" (did you mean '{close[0]}'?)" if close else ""
        known = ", ".join(ASSERTIONS)
        message = f"unknown assertion type {kind!r}{did_you_mean}; known types: {known}"
        return None, [("type", message)]
    spec = ASSERTIONS[kind]
    allowed = (*COMMON_KEYS, *spec.keys)
    problems: list[tuple[Any, str]] = [
        (key, unknown_key_message(key, allowed, f"a {kind} assertion"))
        for key in data
        if key not in allowed
    ]
    problems += [
        (None, f"a {kind} assertion needs '{key}'") for key in spec.required if key not in data
    ]
    negate = data.get("not", False)
    if not isinstance(negate, bool):
        problems.append(("not", f"'not' must be true or false, got {negate!r}"))
    weight = data.get("weight", 1.0)
    if not is_number(weight) or weight <= 0:
        problems.append(("weight", f"'weight' must be a number above 0, got {weight!r}"))
    checks = [(key, check(kind, key, data[key])) for key, check in spec.keys.items() if key in data]
    problems += [(key, message) for key, message in checks if message]
    if problems:
        return None, problems
    params = {key: data[key] for key in spec.keys if key != "value" and key in data}
    return Assertion(kind, data.get("value"), params, line, negate, float(weight)), []


def assertion_to_dict(assertion: Assertion) -> dict[str, Any]:
    spec = ASSERTIONS.get(assertion.type)
    keys = tuple(spec.keys) if spec else ("value", *assertion.params)
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


# --- what checks share ---------------------------------------------------------------------


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
        raise CannotCheck(f"output is not JSON ({why}): {preview(outcome.text)}")
    return data


def _tool_call_parts(call: dict[str, Any]) -> tuple[str, Any]:
    function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else call
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        ok, parsed, _ = _parse_json(arguments)
        arguments = parsed if ok else arguments
    return str(function.get("name", "")), arguments


# --- the assertion types: one registered check each ---------------------------------------


@assertion("equals", value=json_value)
def check_equals(a: Assertion, o: Outcome) -> Verdict:
    if isinstance(a.value, str):
        ok = o.text.strip() == a.value.strip()
        return Verdict(ok, "output", f"equal {preview(a.value)}", preview(o.text))
    parsed, data, _ = _parse_json(o.text)
    expected = json.dumps(a.value, ensure_ascii=False)
    return Verdict(
        parsed and json_equal(data, a.value), "output", f"equal JSON {expected}", preview(o.text)
    )


@assertion("contains", value=text)
def check_contains(a: Assertion, o: Outcome) -> Verdict:
    needle = str(a.value)
    return Verdict(needle in o.text, "output", f"contain {preview(needle)}", preview(o.text))


@assertion("icontains", value=text)
def check_icontains(a: Assertion, o: Outcome) -> Verdict:
    needle = str(a.value)
    return Verdict(
        needle.casefold() in o.text.casefold(),
        "output",
        f"contain {preview(needle)} (ignoring case)",
        preview(o.text),
    )


@assertion("not-contains", value=text, negates=True)
def check_not_contains(a: Assertion, o: Outcome) -> Verdict:
    """contains, negated: so `not: true` on it means contains."""
    return check_contains(a, o)


@assertion("starts-with", value=text)
def check_starts_with(a: Assertion, o: Outcome) -> Verdict:
    prefix = str(a.value)
    return Verdict(
        o.text.lstrip().startswith(prefix),
        "output",
        f"start with {preview(prefix)}",
        preview(o.text),
    )


@assertion("regex", value=regex_pattern)
def check_regex(a: Assertion, o: Outcome) -> Verdict:
    try:
        pattern = compile_regex(a.value)
    except (re.error, TypeError) as exc:
        raise CannotCheck(f"invalid regex {a.value!r}: {exc}") from None
    return Verdict(
        pattern.search(o.text) is not None, "output", f"match /{a.value}/", preview(o.text)
    )


@assertion("is-json")
def check_is_json(a: Assertion, o: Outcome) -> Verdict:
    ok, _, why = _parse_json(o.text)
    observed = "valid JSON" if ok else f"invalid JSON ({why}): {preview(o.text)}"
    return Verdict(ok, "output", "be valid JSON", observed)


@assertion("json-schema", value=json_schema)
def check_json_schema(a: Assertion, o: Outcome) -> Verdict:
    from jsonschema import exceptions, validators

    data = _output_json(o)
    if problem := json_schema_problem(a.value):
        raise CannotCheck(problem)
    validator_class = validators.validator_for(a.value, default=validators.Draft202012Validator)
    error = exceptions.best_match(validator_class(a.value).iter_errors(data))
    observed = (
        preview(o.text)
        if error is None
        else f"{_json_path_text(error.absolute_path)}: {error.message}"
    )
    return Verdict(error is None, "output", "match the JSON schema", observed)


@assertion("json-path", path=json_path, value=json_value)
def check_json_path(a: Assertion, o: Outcome) -> Verdict:
    path = a.params.get("path", "$")
    try:
        steps = parse_json_path(path)
    except ValueError as exc:
        raise CannotCheck(str(exc)) from None
    node = _output_json(o)
    expected = json.dumps(a.value, ensure_ascii=False)
    for step in steps:
        if isinstance(step, int):
            found = isinstance(node, list) and -len(node) <= step < len(node)
        else:
            found = isinstance(node, dict) and step in node
        if not found:
            return Verdict(False, path, f"equal {expected}", "no value there")
        node = node[step]
    observed = preview(json.dumps(node, ensure_ascii=False))
    return Verdict(json_equal(node, a.value), path, f"equal {expected}", observed)


@assertion("max-latency-ms", value=non_negative_number)
def check_max_latency(a: Assertion, o: Outcome) -> Verdict:
    return Verdict(
        o.latency_ms <= a.value, "latency", f"be at most {a.value:g} ms", f"{o.latency_ms:.0f} ms"
    )


@assertion("max-tokens", value=whole_number)
def check_max_tokens(a: Assertion, o: Outcome) -> Verdict:
    return Verdict(
        o.output_tokens <= a.value, "output tokens", f"be at most {a.value}", str(o.output_tokens)
    )


@assertion("max-cost", value=non_negative_number)
def check_max_cost(a: Assertion, o: Outcome) -> Verdict:
    if o.cost is None:
        raise CannotCheck(
            f"cost is unknown for this response (no price for its model), so max-cost {a.value} "
            "cannot be checked"
        )
    return Verdict(o.cost <= a.value, "cost", f"be at most ${a.value:g}", f"${o.cost:.6f}")


@assertion("tool-call", name=non_empty_text, arguments=json_object, optional=("arguments",))
def check_tool_call(a: Assertion, o: Outcome) -> Verdict:
    name = a.params.get("name", "")
    wanted = a.params.get("arguments")
    calls = [_tool_call_parts(call) for call in o.tool_calls]
    ok = any(n == name and (wanted is None or _is_subset(wanted, args)) for n, args in calls)
    predicate = f"include a call to {name!r}"
    if wanted is not None:
        predicate += f" with arguments including {json.dumps(wanted, ensure_ascii=False)}"
    listed = ", ".join(f"{n}({json.dumps(args, ensure_ascii=False)})" for n, args in calls)
    return Verdict(ok, "tool calls", predicate, preview(listed, 200) if calls else "no tool calls")


@assertion("judge", rubric=non_empty_text, model=non_empty_text, optional=("model",))
async def check_judge(a: Assertion, o: Outcome, judge: Judge | None) -> Verdict:
    rubric = a.params.get("rubric", "")
    if judge is None:
        raise CannotCheck("no judge model is configured, so the judge assertion cannot run")
    try:
        ok, explanation = await judge(rubric, o.text, a.params.get("model"))
    except Exception as exc:  # a failing judge call fails this assertion, not the whole run
        raise CannotCheck(f"the judge call failed: {type(exc).__name__}: {exc}") from None
    verdict = "pass" if ok else "fail"
    return Verdict(
        bool(ok),
        "output",
        f"meet the rubric {preview(rubric)}",
        f"{verdict}: {preview(explanation, 300)}",
    )


# --- checking ------------------------------------------------------------------------------


def _failed(assertion: Assertion, reason: str) -> AssertionResult:
    return AssertionResult(assertion.type, False, 0.0, reason, assertion.weight)


async def check(
    assertion: Assertion, outcome: Outcome, judge: Judge | None = None
) -> AssertionResult:
    """Check one assertion against one outcome. Never raises for a bad outcome: an errored
    call, an unknown cost or a missing judge fail the assertion with the reason."""
    if outcome.error is not None:
        return _failed(assertion, outcome.error)
    spec = ASSERTIONS.get(assertion.type)
    if spec is None:
        return _failed(assertion, f"unknown assertion type {assertion.type!r}")
    try:
        if spec.judged:
            verdict: Verdict = await spec.check(assertion, outcome, judge)
        else:
            verdict = spec.check(assertion, outcome)
    except CannotCheck as exc:
        return _failed(assertion, exc.reason)
    negate = assertion.negate != spec.negates
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
