import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmkit.evals.asserts import (
    ASSERTIONS,
    Assertion,
    AssertionResult,
    Outcome,
    Verdict,
    assertion,
    assertion_to_dict,
    check,
    check_all,
    read_assertion,
    run_passed,
    score,
    text,
)
from llmkit.evals.spec import read_eval_text

ROOT = Path(__file__).resolve().parent.parent


def run_check(assertion: Assertion, outcome: Outcome, judge: Any = None) -> AssertionResult:
    return asyncio.run(check(assertion, outcome, judge))


# (assertion, output text, passes, fragment of the reason)
TEXT_CASES = [
    (Assertion("equals", "Hello"), "  Hello\n", True, "expected output to equal 'Hello'"),
    (Assertion("equals", "Hello"), "hello", False, "expected output to equal 'Hello', got 'hello'"),
    (Assertion("equals", {"a": [1, 2]}), '{"a": [1, 2]}', True, "equal JSON"),
    (Assertion("equals", {"a": 1}), '{"a": true}', False, 'equal JSON {"a": 1}'),
    (Assertion("equals", 42), "42", True, "equal JSON 42"),
    (Assertion("equals", 42), "forty-two", False, "got 'forty-two'"),
    (Assertion("equals", None), "null", True, "equal JSON null"),
    (Assertion("contains", "refund"), "We sent your refund.", True, "to contain 'refund'"),
    (
        Assertion("contains", "refund"),
        "We cannot help",
        False,
        "expected output to contain 'refund', got 'We cannot help'",
    ),
    (Assertion("contains", 42), "answer: 42", True, "contain '42'"),
    (Assertion("icontains", "REFUND"), "a Refund", True, "ignoring case"),
    (Assertion("icontains", "refund"), "nothing", False, "got 'nothing'"),
    (Assertion("not-contains", "sorry"), "Here you go", True, "not to contain 'sorry'"),
    (
        Assertion("not-contains", "sorry"),
        "So sorry",
        False,
        "expected output not to contain 'sorry', got 'So sorry'",
    ),
    (Assertion("not-contains", "sorry", negate=True), "So sorry", True, "to contain 'sorry'"),
    (
        Assertion("contains", "sorry", negate=True),
        "So sorry",
        False,
        "expected output not to contain 'sorry'",
    ),
    (Assertion("starts-with", "Dear"), "\n Dear Ana", True, "start with 'Dear'"),
    (Assertion("starts-with", "Dear"), "Hi Ana", False, "got 'Hi Ana'"),
    (Assertion("regex", r"order #\d+"), "See order #123.", True, r"match /order #\d+/"),
    (Assertion("regex", r"^\d+$"), "12a", False, r"match /^\d+$/, got '12a'"),
    (Assertion("regex", "("), "x", False, "invalid regex '('"),
    (Assertion("is-json"), '{"ok": true}', True, "got valid JSON"),
    (Assertion("is-json"), "Sure! {", False, "invalid JSON (Expecting value"),
    (Assertion("is-json", negate=True), "plain", True, "not to be valid JSON"),
    (
        Assertion(
            "json-schema",
            {
                "type": "object",
                "required": ["priority"],
                "properties": {"priority": {"enum": ["low", "high"]}},
            },
        ),
        '{"priority": "high"}',
        True,
        "match the JSON schema",
    ),
    (
        Assertion(
            "json-schema", {"type": "object", "properties": {"priority": {"enum": ["low", "high"]}}}
        ),
        '{"priority": "urgent"}',
        False,
        "$.priority: 'urgent' is not one of ['low', 'high']",
    ),
    (Assertion("json-schema", {"type": "object"}), "not json", False, "output is not JSON"),
    (
        Assertion("json-schema", {"type": "object"}, negate=True),
        "not json",
        False,
        "output is not JSON",
    ),
    (
        Assertion("json-path", "high", {"path": "$.ticket.priority"}),
        '{"ticket": {"priority": "high"}}',
        True,
        'expected $.ticket.priority to equal "high"',
    ),
    (
        Assertion("json-path", 2, {"path": "$.items[-1]['n']"}),
        '{"items": [{"n": 1}, {"n": 2}]}',
        True,
        "got '2'",
    ),
    (Assertion("json-path", True, {"path": "$.ok"}), '{"ok": 1}', False, "to equal true, got '1'"),
    (Assertion("json-path", 1, {"path": "$.a[3]"}), '{"a": [1]}', False, "got no value there"),
    (Assertion("json-path", 1, {"path": "$.a"}), "[1]", False, "got no value there"),
    (Assertion("json-path", 1, {"path": "$.a"}), "nope", False, "output is not JSON"),
]


@pytest.mark.parametrize(("assertion", "text", "passes", "fragment"), TEXT_CASES)
def test_text_assertions(assertion: Assertion, text: str, passes: bool, fragment: str) -> None:
    result = run_check(assertion, Outcome(text))
    assert result.passed is passes, result.reason
    assert result.score == (1.0 if passes else 0.0)
    assert result.type == assertion.type
    assert fragment in result.reason


def test_reasons_quote_output_on_one_line_and_cut_it() -> None:
    output = "We cannot help with that.\n" + "x" * 500
    result = run_check(Assertion("contains", "refund"), Outcome(output))
    assert result.reason.startswith(
        "expected output to contain 'refund', got 'We cannot help with that.\\nxxx"
    )
    assert result.reason.endswith("…'")
    assert len(result.reason) < 140


FIGURES = Outcome("ok", latency_ms=812.4, input_tokens=50, output_tokens=120, cost=0.0123)


@pytest.mark.parametrize(
    ("assertion", "passes", "reason"),
    [
        (
            Assertion("max-latency-ms", 1000),
            True,
            "expected latency to be at most 1000 ms, got 812 ms",
        ),
        (
            Assertion("max-latency-ms", 500),
            False,
            "expected latency to be at most 500 ms, got 812 ms",
        ),
        (Assertion("max-tokens", 120), True, "expected output tokens to be at most 120, got 120"),
        (Assertion("max-tokens", 100), False, "expected output tokens to be at most 100, got 120"),
        (Assertion("max-cost", 0.05), True, "expected cost to be at most $0.05, got $0.012300"),
        (Assertion("max-cost", 0.01), False, "expected cost to be at most $0.01, got $0.012300"),
    ],
)
def test_figure_assertions(assertion: Assertion, passes: bool, reason: str) -> None:
    result = run_check(assertion, FIGURES)
    assert (result.passed, result.reason) == (passes, reason)


@pytest.mark.parametrize("negate", [False, True])
def test_max_cost_with_unknown_cost_fails_saying_so(negate: bool) -> None:
    result = run_check(Assertion("max-cost", 1.0, negate=negate), Outcome("ok", cost=None))
    assert result.passed is False
    assert "cost is unknown" in result.reason


def test_an_errored_call_fails_every_assertion_with_its_error() -> None:
    outcome = Outcome("", error="UpstreamTimeout: the provider did not answer in 60 s")
    assertions = [
        Assertion("not-contains", "x"),
        Assertion("contains", "x", negate=True),
        Assertion("max-latency-ms", 10**9),
        Assertion("judge", None, {"rubric": "anything"}),
    ]

    async def judge(rubric: str, output: str, model: str | None) -> tuple[bool, str]:
        return True, "fine"

    results = asyncio.run(check_all(assertions, outcome, judge))
    assert [r.passed for r in results] == [False] * 4
    assert {r.reason for r in results} == {outcome.error}
    assert run_passed(outcome, results) is False
    assert run_passed(outcome, []) is False


def _openai_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "call_1",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


TOOL_OUTCOME = Outcome(
    "",
    tool_calls=[
        _openai_call("search", {"q": "shoes"}),
        _openai_call("lookup_order", {"order_id": 42, "fields": {"status": True, "eta": True}}),
    ],
)


@pytest.mark.parametrize(
    ("params", "passes"),
    [
        ({"name": "lookup_order"}, True),
        ({"name": "lookup_order", "arguments": {"order_id": 42}}, True),
        ({"name": "lookup_order", "arguments": {"fields": {"status": True}}}, True),
        ({"name": "lookup_order", "arguments": {"order_id": 43}}, False),
        ({"name": "lookup_order", "arguments": {"order_id": True}}, False),
        ({"name": "search", "arguments": {"order_id": 42}}, False),
        ({"name": "refund"}, False),
    ],
)
def test_tool_call_matches_name_and_an_argument_subset(
    params: dict[str, Any], passes: bool
) -> None:
    result = run_check(Assertion("tool-call", None, params), TOOL_OUTCOME)
    assert result.passed is passes
    assert f"include a call to '{params['name']}'" in result.reason
    assert 'lookup_order({"order_id": 42' in result.reason


def test_tool_call_reads_flat_calls_and_reports_none() -> None:
    flat = Outcome("", tool_calls=[{"name": "refund", "arguments": {"amount": 5}}])
    assert run_check(
        Assertion("tool-call", None, {"name": "refund", "arguments": {"amount": 5}}), flat
    ).passed
    result = run_check(Assertion("tool-call", None, {"name": "refund"}), Outcome("text only"))
    assert result.passed is False
    assert result.reason.endswith("got no tool calls")


def test_judge_without_a_judge_fails_saying_none_is_configured() -> None:
    result = run_check(Assertion("judge", None, {"rubric": "Polite"}, negate=True), Outcome("hi"))
    assert result.passed is False
    assert "no judge model is configured" in result.reason


def test_judge_gets_rubric_output_and_model_and_decides() -> None:
    calls: list[tuple[str, str, str | None]] = []

    async def judge(rubric: str, output: str, model: str | None) -> tuple[bool, str]:
        calls.append((rubric, output, model))
        return "sorry" in output, "apologises" if "sorry" in output else "the reply is curt"

    polite = Assertion("judge", None, {"rubric": "Apologises", "model": "openai/gpt-4o"})
    result = run_check(polite, Outcome("No."), judge)
    assert result.passed is False
    assert result.reason == (
        "expected output to meet the rubric 'Apologises', got fail: 'the reply is curt'"
    )
    assert run_check(polite, Outcome("So sorry."), judge).passed is True
    rude = Assertion("judge", None, {"rubric": "Apologises"}, negate=True)
    assert run_check(rude, Outcome("No."), judge).passed is True
    assert calls == [
        ("Apologises", "No.", "openai/gpt-4o"),
        ("Apologises", "So sorry.", "openai/gpt-4o"),
        ("Apologises", "No.", None),
    ]


def test_a_failing_judge_call_fails_only_its_assertion() -> None:
    async def judge(rubric: str, output: str, model: str | None) -> tuple[bool, str]:
        raise RuntimeError("judge model returned 500")

    assertions = [Assertion("judge", None, {"rubric": "x"}), Assertion("contains", "o")]
    results = asyncio.run(check_all(assertions, Outcome("ok"), judge))
    assert [r.passed for r in results] == [False, True]
    assert results[0].reason == "the judge call failed: RuntimeError: judge model returned 500"


def test_check_all_runs_judges_concurrently_and_keeps_order() -> None:
    arrived: list[str] = []
    both_arrived = asyncio.Event()

    async def judge(rubric: str, output: str, model: str | None) -> tuple[bool, str]:
        arrived.append(rubric)
        if len(arrived) == 2:
            both_arrived.set()
        await both_arrived.wait()  # only returns if the other call started meanwhile
        return rubric == "first", rubric

    async def main() -> list[AssertionResult]:
        assertions = [
            Assertion("judge", None, {"rubric": "first"}),
            Assertion("is-json"),
            Assertion("judge", None, {"rubric": "second"}),
        ]
        return await asyncio.wait_for(check_all(assertions, Outcome("{}"), judge), timeout=10)

    results = asyncio.run(main())
    assert [(r.type, r.passed) for r in results] == [
        ("judge", True),
        ("is-json", True),
        ("judge", False),
    ]


def test_an_unknown_type_fails_instead_of_raising() -> None:
    result = run_check(Assertion("sentiment", "positive"), Outcome("great"))
    assert (result.passed, result.reason) == (False, "unknown assertion type 'sentiment'")


def test_weights_and_threshold_decide_a_run() -> None:
    results = [
        AssertionResult("contains", True, 1.0, "", weight=3.0),
        AssertionResult("regex", False, 0.0, "", weight=1.0),
    ]
    assert score(results) == 0.75
    assert score([]) == 1.0
    ok = Outcome("x")
    assert run_passed(ok, results, threshold=0.75) is True
    assert run_passed(ok, results, threshold=0.8) is False
    assert run_passed(ok, results) is False
    assert run_passed(ok, []) is True


def test_weight_and_not_are_carried_into_results() -> None:
    assertion, problems = read_assertion(
        {"type": "contains", "value": "a", "weight": 2, "not": True}, line=7
    )
    assert problems == []
    assert assertion == Assertion("contains", "a", negate=True, weight=2.0)
    assert assertion is not None and assertion.line == 7
    result = run_check(assertion, Outcome("b"))
    assert (result.passed, result.weight) == (True, 2.0)


# --- the registry of assertion types ------------------------------------------------------


@pytest.fixture
def ends_with() -> Iterator[str]:
    """A type registered the way the built-in ones are, removed again after the test."""

    @assertion("ends-with", value=text, suffix_note=text, optional=("suffix_note",))
    def check_ends_with(a: Assertion, o: Outcome) -> Verdict:
        return Verdict(
            o.text.rstrip().endswith(str(a.value)), "output", f"end with {a.value!r}", repr(o.text)
        )

    try:
        yield "ends-with"
    finally:
        ASSERTIONS.pop("ends-with")


def test_a_registered_type_is_read_checked_and_written_back(ends_with: str) -> None:
    eval_file = read_eval_text(
        "name: x\nassert:\n  - {type: ends-with, value: Bye}\n", "evals/greet/x.yaml"
    )
    assert eval_file.errors == []
    [case] = eval_file.cases
    [read] = case.assertions
    assert assertion_to_dict(read) == {"type": "ends-with", "value": "Bye"}
    passed = run_check(read, Outcome("Good. Bye\n"))
    assert (passed.passed, passed.reason) == (
        True,
        "expected output to end with 'Bye', got 'Good. Bye\\n'",
    )
    assert run_check(read, Outcome("Hello")).passed is False
    problems = read_eval_text(
        "name: x\nassert:\n  - {type: ends-wit, value: 1}\n  - {type: ends-with, value: [1]}\n"
        "  - {type: ends-with, value: a, sufix_note: b}\n  - {type: ends-with}\n",
        "evals/greet/x.yaml",
    ).errors
    assert [(p.line, p.message) for p in problems] == [
        (
            3,
            "unknown assertion type 'ends-wit' (did you mean 'ends-with'?); known types: "
            + ", ".join(ASSERTIONS),
        ),
        (4, "ends-with needs a string value, got a list [1]"),
        (
            5,
            (
                "unknown key 'sufix_note' in a ends-with assertion (did you mean 'suffix_note'?);"
                " known keys: type, not, weight, value, suffix_note"
            ),
        ),
        (6, "a ends-with assertion needs 'value'"),
    ]


def test_a_type_cannot_be_registered_twice_or_with_unknown_optional_keys() -> None:
    with pytest.raises(ValueError, match="'contains' is already registered"):
        assertion("contains", value=text)(lambda a, o: None)
    with pytest.raises(ValueError, match="optional keys \\['colour'\\] are not its keys"):
        assertion("painted", value=text, optional=("colour",))
    assert "painted" not in ASSERTIONS


def test_the_built_in_types_in_order() -> None:
    assert list(ASSERTIONS) == [
        "equals",
        "contains",
        "icontains",
        "not-contains",
        "starts-with",
        "regex",
        "is-json",
        "json-schema",
        "json-path",
        "max-latency-ms",
        "max-tokens",
        "max-cost",
        "tool-call",
        "judge",
    ]
    assert [name for name, spec in ASSERTIONS.items() if spec.judged] == ["judge"]
    assert [name for name, spec in ASSERTIONS.items() if spec.negates] == ["not-contains"]


def test_every_assertion_type_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    listed = re.search(r"^Assertions: (.+?)\n\n", readme, re.MULTILINE | re.DOTALL)
    assert listed, "the README's Evals section lists the assertion types after 'Assertions:'"
    documented = set(re.findall(r"`([a-z-]+)`", listed.group(1)))
    assert set(ASSERTIONS) <= documented, f"undocumented: {set(ASSERTIONS) - documented}"
