import json
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmkit.errors import InvalidKey
from llmkit.evals.asserts import Assertion
from llmkit.evals.case_json import case_from_dict, case_to_dict
from llmkit.evals.case_yaml import serialize_case
from llmkit.evals.cases import EvalCase, EvalSpecError, case_path, prompt_key_from_path
from llmkit.evals.spec import (
    lint_evals,
    load_eval_file,
    load_eval_text,
    load_evals,
    read_eval_text,
)
from llmkit.promptfile import validate_key

PATH = "evals/support/triage/basic.yaml"


def test_single_case_file_reads_every_field() -> None:
    text = """\
# a comment first
name: refund request
description: asks for money back
model: openai/gpt-4o-mini
repeat: 3
threshold: 0.5
vars:
  company: Acme
  since: 2024-01-01
user_vars: {question: "where is my refund?"}
input: I want a refund
assert:
  - type: icontains
    value: refund
  - type: json-path
    path: $.priority
    value: high
    weight: 2
  - type: regex
    value: "^(Hi|Hello)"
    not: true
  - type: tool-call
    name: lookup_order
    arguments: {order_id: 42}
  - type: judge
    rubric: Apologises politely.
    model: openai/gpt-4o
"""
    eval_file = load_eval_text(text, PATH)
    assert eval_file.prompt_key == "support/triage"
    assert eval_file.problems == []
    [case] = eval_file.cases
    assert case == EvalCase(
        prompt_key="support/triage",
        name="refund request",
        file=PATH,
        vars={"company": "Acme", "since": "2024-01-01"},
        user_vars={"question": "where is my refund?"},
        messages=[{"role": "user", "content": "I want a refund"}],
        model="openai/gpt-4o-mini",
        repeat=3,
        threshold=0.5,
        description="asks for money back",
        assertions=[
            Assertion("icontains", "refund"),
            Assertion("json-path", "high", {"path": "$.priority"}, weight=2.0),
            Assertion("regex", "^(Hi|Hello)", negate=True),
            Assertion("tool-call", None, {"name": "lookup_order", "arguments": {"order_id": 42}}),
            Assertion("judge", None, {"rubric": "Apologises politely.", "model": "openai/gpt-4o"}),
        ],
    )
    assert case.line == 2
    assert [a.line for a in case.assertions] == [13, 15, 19, 22, 25]


def test_multi_case_file_merges_file_defaults() -> None:
    text = """\
prompt: support/other
vars: {company: Acme, tone: calm}
model: openai/gpt-4o-mini
repeat: 2
threshold: 0.5
assert:
  - {type: max-latency-ms, value: 5000}
cases:
  - name: first
    vars: {tone: angry}
    messages:
      - {role: system, content: be brief}
      - {role: user, content: hi}
    assert:
      - {type: contains, value: hello}
  - name: second
    model: anthropic/claude-3-5-haiku
    repeat: 1
    threshold: 1
"""
    first, second = load_eval_text(text, PATH).cases
    assert first.prompt_key == second.prompt_key == "support/other"
    assert first.vars == {"company": "Acme", "tone": "angry"}
    assert first.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert [a.type for a in first.assertions] == ["contains", "max-latency-ms"]
    assert (first.model, first.repeat, first.threshold) == ("openai/gpt-4o-mini", 2, 0.5)
    assert second.vars == {"company": "Acme", "tone": "calm"}
    assert [a.type for a in second.assertions] == ["max-latency-ms"]
    assert (second.model, second.repeat, second.threshold) == ("anthropic/claude-3-5-haiku", 1, 1.0)
    assert (first.line, second.line) == (9, 16)


def test_yaml_anchors_aliases_and_merge_keys_are_refused_by_line() -> None:
    text = """\
cases:
  - &base
    name: one
    vars: {a: 1}
    assert: [{type: is-json}]
  - <<: *base
    name: two
"""
    with pytest.raises(EvalSpecError) as raised:
        load_eval_text(text, PATH)
    assert [(p.line, p.message.split(" is not allowed")[0]) for p in raised.value.problems] == [
        (2, "YAML anchor &base")
    ]


def test_an_alias_bomb_or_deep_nesting_in_an_eval_file_is_refused_before_loading() -> None:
    bomb = (
        "name: bomb\nvars:\n  a: &a [x,x,x,x,x,x,x,x,x,x]\n"
        "  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
        "  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        "  d: [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    )
    eval_file = read_eval_text(bomb, PATH)
    assert eval_file.cases == []
    assert [(p.line, p.message.split(" is not")[0]) for p in eval_file.problems] == [
        (3, "YAML anchor &a")
    ]
    # libyaml's composer would overflow the C stack on this: a crash, not an exception.
    deep = "name: deep\nvars:\n  x: " + "[" * 100_000 + "]" * 100_000 + "\n"
    assert [(p.line, p.message) for p in read_eval_text(deep, PATH).problems] == [
        (3, "YAML nests deeper than 64 levels")
    ]


def test_prompt_key_comes_from_the_folder() -> None:
    assert prompt_key_from_path("evals/support/triage/basic.yaml") == "support/triage"
    assert prompt_key_from_path("evals/greet/a.yml") == "greet"
    assert prompt_key_from_path("evals/loose.yaml") is None
    assert prompt_key_from_path("other/greet/a.yaml") is None


# (file text, line of the error, fragment of its message)
BAD_FILES = [
    ("name: x\nassert: [{type: contains, value: a}\n", 3, "YAML syntax error"),
    ("name: x\n\tassert: []\n", 2, "YAML syntax error"),
    ("name: a\n---\nname: b\n", 2, "YAML syntax error"),
    ("- name: x\n", 1, "put the cases under a top-level 'cases:' key"),
    ("description: no name\n", 1, "needs a 'name' (one case) or a 'cases' list"),
    (
        "name: x\nnmae: y\nassert: []\n",
        2,
        "unknown key 'nmae' in an eval case (did you mean 'name'?)",
    ),
    (
        "cases: []\nvar: {}\n",
        2,
        "unknown key 'var' in an eval file with 'cases' (did you mean 'vars'?)",
    ),
    (
        "name: x\nassert:\n  - type: contains\n    valeu: a\n",
        4,
        "unknown key 'valeu' in a contains",
    ),
    ("name: x\nassert:\n  - type: contains\n", 3, "a contains assertion needs 'value'"),
    (
        "name: x\nassert:\n  - type: contain\n    value: a\n",
        3,
        "unknown assertion type 'contain' (did you mean 'contains'?)",
    ),
    ("name: x\nassert:\n  - contains: refund\n", 3, "write 'type: contains'"),
    ("name: x\nassert:\n  - type: [contains]\n", 3, "unknown assertion type ['contains']"),
    ("name: x\nassert:\n  - just text\n", 3, "assert[0] must be a mapping"),
    ("name: x\nassert:\n  - type: regex\n    value: '(unclosed'\n", 4, "invalid regex '(unclosed'"),
    (
        "name: x\nassert:\n  - type: json-schema\n    value: {type: thing}\n",
        4,
        "invalid JSON schema at $.type",
    ),
    (
        "name: x\nassert:\n  - type: json-schema\n    value: [1]\n",
        4,
        "a JSON schema must be a mapping",
    ),
    (
        "name: x\nassert:\n  - type: json-path\n    path: a.b\n    value: 1\n",
        4,
        "must start with '$'",
    ),
    (
        "name: x\nassert:\n  - type: json-path\n    path: $.a[x]\n    value: 1\n",
        4,
        "not understood",
    ),
    ("name: x\nassert:\n  - type: tool-call\n", 3, "a tool-call assertion needs 'name'"),
    (
        "name: x\nassert:\n  - type: judge\n    rubric: ''\n",
        4,
        "judge 'rubric' must be a non-empty",
    ),
    (
        "name: x\nassert:\n  - type: contains\n    value: a\n    not: yes please\n",
        5,
        "'not' must be true or false",
    ),
    (
        "name: x\nassert:\n  - type: contains\n    value: a\n    weight: 0\n",
        5,
        "'weight' must be a number above 0",
    ),
    (
        "name: x\nassert:\n  - type: max-tokens\n    value: 1.5\n",
        4,
        "max-tokens needs a whole number",
    ),
    ("name: x\nassert:\n  - type: max-cost\n    value: cheap\n", 4, "max-cost needs a number"),
    ("name: x\nassert:\n  - type: contains\n    value: [a]\n", 4, "contains needs a string value"),
    ("name: x\nassert: {type: is-json}\n", 2, "'assert' must be a list"),
    ("name: x\nrepeat: 0\nassert: []\n", 2, "'repeat' must be a whole number from 1 to 100, got 0"),
    ("name: x\nrepeat: true\nassert: []\n", 2, "'repeat' must be a whole number"),
    (
        "name: x\nthreshold: 1.5\nassert: []\n",
        2,
        "'threshold' must be a number from 0 to 1, got 1.5",
    ),
    ("name: 42\nassert: []\n", 1, "'name' must be a non-empty string, got 42"),
    ("name: x\nvars: [a, b]\nassert: []\n", 2, "'vars' must be a mapping"),
    ("name: x\nvars: {1: a}\nassert: []\n", 2, "keys must be strings"),
    ("name: x\nuser_vars: {a: !!binary aGk=}\nassert: []\n", 2, "JSON cannot hold"),
    ("name: x\nmodel: ''\nassert: []\n", 2, "'model' must be a non-empty model name"),
    (
        "name: x\ninput: hi\nmessages: [{role: user, content: hi}]\nassert: []\n",
        2,
        "give either 'messages' or 'input', not both",
    ),
    (
        "name: x\nmessages:\n  - {role: robot, content: hi}\nassert: []\n",
        3,
        "messages[0].role must be one of system, user, assistant, tool, got 'robot'",
    ),
    ("name: x\nmessages:\n  - {role: user}\nassert: []\n", 3, "messages[0] needs 'content'"),
    ("name: x\nname: y\nassert: []\n", 2, "duplicate key 'name'"),
    (
        "cases:\n  - name: a\n    assert: []\n  - name: a\n    assert: []\n",
        4,
        "duplicate case name 'a' (first at line 2)",
    ),
    ("cases:\n  - name: a\n  - 7\n", 3, "cases[1] must be a mapping"),
    ("cases: {name: a}\n", 1, "'cases' must be a list"),
    ("prompt: ../etc\nname: x\nassert: []\n", 1, "'prompt': Invalid prompt key '../etc'"),
    (
        "name: x\nassert:\n  - type: contains\n    value: a\n    value: b\n",
        5,
        "duplicate key 'value'",
    ),
]


@pytest.mark.parametrize(("text", "line", "fragment"), BAD_FILES)
def test_a_bad_file_gets_a_problem_at_the_right_line(text: str, line: int, fragment: str) -> None:
    eval_file = read_eval_text(text, PATH)
    assert eval_file.cases == []
    matching = [p for p in eval_file.errors if fragment in p.message]
    assert matching, [str(p) for p in eval_file.problems]
    assert (matching[0].path, matching[0].line) == (PATH, line)


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    text = """\
cases:
  - name: a
    repeat: 0
    assert:
      - {type: regex, value: '['}
  - name: b
    colour: red
    assert:
      - {type: nope}
"""
    problems = read_eval_text(text, PATH).problems
    assert [(p.line, p.severity) for p in problems] == [
        (3, "error"),
        (5, "error"),
        (7, "error"),
        (9, "error"),
    ]


def test_a_case_without_assertions_is_kept_with_a_warning() -> None:
    eval_file = load_eval_text("name: smoke\ninput: hello\n", PATH)
    assert [c.name for c in eval_file.cases] == ["smoke"]
    [problem] = eval_file.problems
    assert problem.severity == "warning"
    assert "no assertions" in problem.message
    assert str(problem) == f"{PATH}:1: warning: {problem.message}"


def test_a_file_outside_a_prompt_folder_needs_a_prompt_key() -> None:
    problems = read_eval_text("name: x\nassert: [{type: is-json}]\n", "evals/loose.yaml").errors
    assert "cannot tell which prompt" in problems[0].message
    eval_file = load_eval_text(
        "prompt: greet\nname: x\nassert: [{type: is-json}]\n", "evals/loose.yaml"
    )
    assert eval_file.cases[0].prompt_key == "greet"
    [bad_folder] = read_eval_text(
        "name: x\nassert: [{type: is-json}]\n", "evals/my prompt/x.yaml"
    ).errors
    assert bad_folder.line == 1
    assert bad_folder.message.startswith("the folder does not give a prompt key (Invalid prompt")


def test_load_eval_text_raises_naming_path_and_line() -> None:
    with pytest.raises(EvalSpecError) as caught:
        load_eval_text("name: x\nthreshold: 2\nrepeat: 0\nassert: []\n", PATH)
    error = caught.value
    assert error.status == 400
    assert str(error).startswith(f"{PATH}:2: 'threshold' must be")
    assert str(error).endswith("(and 1 more problems)")
    assert [p.line for p in error.problems] == [2, 3]


def _write(root: Path, rel: str, content: str | bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def test_lint_evals_reports_every_file_and_one_bad_file_stops_none(tmp_path: Path) -> None:
    for key in ("greet", "support/triage"):
        _write(tmp_path, f"prompts/{key}.md", "Hello\n")
    _write(tmp_path, "evals/greet/a.yaml", "name: hi\nassert: [{type: contains, value: Hi}]\n")
    _write(tmp_path, "evals/greet/b.yml", "name: hi\nassert: [{type: is-json}]\n")
    _write(tmp_path, "evals/greet/c.yaml", "name: [broken\n")
    _write(tmp_path, "evals/support/triage/d.yaml", b"name: caf\xe9\nassert: [{type: is-json}]\n")
    _write(tmp_path, "evals/support/triage/e.yaml", "name: ok\nassert: [{type: is-json}]\n")
    _write(tmp_path, "evals/missing/f.yaml", "name: x\nassert: [{type: is-json}]\n")
    _write(tmp_path, "evals/greet/README.md", "not an eval file\n")
    _write(tmp_path, "evals/.hidden/g.yaml", "name: [broken\n")
    problems = lint_evals(tmp_path)
    found = {(p.path, p.line): p.message for p in problems}
    assert set(found) == {
        ("evals/greet/c.yaml", 2),
        ("evals/support/triage/d.yaml", 1),
        ("evals/missing/f.yaml", 1),
        ("evals/greet/b.yml", 1),
    }
    assert "YAML syntax error" in found[("evals/greet/c.yaml", 2)]
    assert "not UTF-8" in found[("evals/support/triage/d.yaml", 1)]
    assert "0xe9" in found[("evals/support/triage/d.yaml", 1)]
    assert "prompts/missing.md does not exist" in found[("evals/missing/f.yaml", 1)]
    assert found[("evals/greet/b.yml", 1)] == (
        "duplicate case name 'hi' for prompt 'greet' (first at evals/greet/a.yaml:1)"
    )
    cases, _ = load_evals(tmp_path)
    assert sorted((c.prompt_key, c.name) for c in cases) == [
        ("greet", "hi"),
        ("greet", "hi"),
        ("missing", "x"),
        ("support/triage", "ok"),
    ]


def test_lint_evals_without_an_evals_folder_finds_nothing(tmp_path: Path) -> None:
    assert lint_evals(tmp_path) == []


def test_load_eval_file_gives_repo_relative_paths(tmp_path: Path) -> None:
    _write(tmp_path, PATH, "name: x\nassert: [{type: is-json}]\n")
    eval_file = load_eval_file(tmp_path / PATH, tmp_path)
    assert eval_file.cases[0].file == PATH
    _write(tmp_path, "evals/greet/bad.yaml", b"\xff\xfe")
    with pytest.raises(EvalSpecError, match="evals/greet/bad.yaml:1: not UTF-8"):
        load_eval_file(tmp_path / "evals/greet/bad.yaml", tmp_path)


def test_serialize_case_writes_the_canonical_file() -> None:
    case = EvalCase(
        prompt_key="support/triage",
        name="refund request",
        file=PATH,
        vars={"company": "Acme", "since": "2024-01-01", "flag": "yes"},
        messages=[{"role": "user", "content": "Line one\nLine two\n"}],
        threshold=0.5,
        assertions=[
            Assertion("contains", "refund"),
            Assertion("json-path", 3, {"path": "$.a[0]"}, negate=True),
            Assertion("judge", None, {"rubric": "Polite.\nShort."}, weight=2.0),
        ],
    )
    assert (
        serialize_case(case)
        == """\
name: refund request
threshold: 0.5
vars:
  company: Acme
  since: '2024-01-01'
  flag: 'yes'
input: |
  Line one
  Line two
assert:
  - type: contains
    value: refund
  - type: json-path
    path: $.a[0]
    value: 3
    not: true
  - type: judge
    rubric: |-
      Polite.
      Short.
    weight: 2.0
"""
    )
    assert load_eval_text(serialize_case(case), PATH).cases == [case]


def test_serialize_case_names_the_prompt_when_the_path_does_not() -> None:
    case = EvalCase("greet", "hi", file=PATH, assertions=[Assertion("is-json")])
    text = serialize_case(case)
    assert text.startswith("prompt: greet\nname: hi\n")
    assert load_eval_text(text, PATH).cases == [case]


def test_case_path_slugs_the_name() -> None:
    assert case_path("support/triage", "Refund request: EU!") == (
        "evals/support/triage/refund-request-eu.yaml"
    )
    assert case_path("greet", "¿?") == "evals/greet/case.yaml"


def test_case_from_dict_reads_llmkit_fields() -> None:
    case = case_from_dict(
        {
            "id": 7,
            "prompt_id": 3,
            "name": "legacy",
            "system_prompt_input": '{"personality": "cheerful"}',
            "user_prompt_input": "How are you?",
        },
        prompt_key="greet",
    )
    assert case.vars == {"personality": "cheerful"}
    assert case.messages == [{"role": "user", "content": "How are you?"}]
    assert case.file == "evals/greet/legacy.yaml"
    both = case_from_dict(
        {"prompt_key": "greet", "name": "b", "user_prompt_input": {"question": "why"}}
    )
    assert both.user_vars == {"question": "why"}
    assert both.messages == []


def test_case_to_dict_carries_llmkit_fields() -> None:
    case = EvalCase(
        "greet",
        "hi",
        file="evals/greet/hi.yaml",
        vars={"p": 1},
        messages=[{"role": "user", "content": "yo"}],
    )
    data = case_to_dict(case, id=5)
    assert data["id"] == 5
    assert json.loads(data["system_prompt_input"]) == {"p": 1}
    assert data["user_prompt_input"] == "yo"
    assert data["assert"] == []


def test_case_from_dict_names_every_bad_field() -> None:
    with pytest.raises(EvalSpecError) as caught:
        case_from_dict(
            {
                "prompt_key": "a/../b",
                "name": "",
                "repeat": "many",
                "colour": 1,
                "assert": [{"type": "regex", "value": "("}],
            }
        )
    messages = [p.message for p in caught.value.problems]
    assert any(m.startswith("'prompt_key': Invalid prompt key 'a/../b'") for m in messages)
    assert any("unknown key 'colour'" in m for m in messages)
    assert any("'name' must be a non-empty string" in m for m in messages)
    assert any("'repeat' must be a whole number" in m for m in messages)
    assert any("invalid regex '('" in m for m in messages)
    with pytest.raises(EvalSpecError, match="must be a JSON object"):
        case_from_dict(["not", "a", "dict"])  # type: ignore[arg-type]


# --- round trips -------------------------------------------------------------------------

_segment = st.builds(
    str.__add__,
    st.sampled_from(string.ascii_letters),
    st.text(string.ascii_letters + string.digits + "._-", max_size=7),
)


def _valid_key(key: str) -> bool:
    """Keys the generator builds may still be refused (`con`, a segment ending in '.')."""
    try:
        validate_key(key)
    except InvalidKey:
        return False
    return True


_prompt_keys = st.lists(_segment, min_size=1, max_size=3).map("/".join).filter(_valid_key)
_names = st.text(min_size=1, max_size=30).filter(
    lambda s: s.strip() != "" and "\n" not in s and "\r" not in s
)
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
_variables = st.dictionaries(st.text(max_size=12), _json_values, max_size=4)
_texts = st.text(min_size=1, max_size=60).filter(lambda s: s.strip() != "")
_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=60)}
    ),
    max_size=3,
)
_schemas = st.sampled_from(
    [
        {"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}},
        {"type": "array", "items": {"enum": [1, 2]}},
    ]
)
_assertions = st.one_of(
    st.builds(
        Assertion,
        st.sampled_from(["contains", "icontains", "not-contains", "starts-with"]),
        _texts | st.integers(),
    ),
    st.builds(Assertion, st.just("equals"), _json_values),
    st.builds(Assertion, st.just("regex"), st.sampled_from(["^a", r"\d+", "(?i)yes|no"])),
    st.builds(Assertion, st.just("is-json")),
    st.builds(Assertion, st.just("json-schema"), _schemas),
    st.builds(
        Assertion,
        st.just("json-path"),
        _json_values,
        st.sampled_from([{"path": "$.a"}, {"path": "$.a[0]['b c']"}]),
    ),
    st.builds(
        Assertion,
        st.sampled_from(["max-latency-ms", "max-tokens"]),
        st.integers(min_value=0, max_value=10**6),
    ),
    st.builds(Assertion, st.just("max-cost"), st.floats(min_value=0, max_value=10)),
    st.builds(
        Assertion,
        st.just("tool-call"),
        st.none(),
        st.fixed_dictionaries({"name": _texts}, optional={"arguments": _variables}),
    ),
    st.builds(
        Assertion,
        st.just("judge"),
        st.none(),
        st.fixed_dictionaries({"rubric": _texts}, optional={"model": _texts}),
    ),
)


@st.composite
def _cases(draw: st.DrawFn) -> EvalCase:
    key, name = draw(_prompt_keys), draw(_names)
    assertions = draw(st.lists(_assertions, max_size=4))
    for assertion in assertions:
        assertion.negate = draw(st.booleans())
        assertion.weight = draw(st.sampled_from([1.0, 0.5, 3.0]))
    return EvalCase(
        prompt_key=key,
        name=name,
        file=draw(st.sampled_from([case_path(key, name), "evals/elsewhere.yaml"])),
        vars=draw(_variables),
        user_vars=draw(_variables),
        messages=draw(_messages),
        model=draw(st.none() | _texts),
        repeat=draw(st.integers(min_value=1, max_value=5)),
        threshold=draw(st.floats(min_value=0, max_value=1)),
        assertions=assertions,
        description=draw(st.none() | st.text(max_size=40)),
    )


_fast = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fast
@given(_cases())
def test_serialized_case_loads_back_equal(case: EvalCase) -> None:
    text = serialize_case(case)
    assert load_eval_text(text, case.file).cases == [case]
    assert serialize_case(load_eval_text(text, case.file).cases[0]) == text


@_fast
@given(_cases())
def test_case_dict_round_trips_through_json(case: EvalCase) -> None:
    data = json.loads(json.dumps(case_to_dict(case)))
    assert case_from_dict(data, file=case.file) == case


_case_like = st.fixed_dictionaries(
    {},
    optional={
        key: _json_values
        for key in (
            "name",
            "vars",
            "messages",
            "input",
            "assert",
            "repeat",
            "threshold",
            "cases",
            "prompt",
            "model",
        )
    },
)


@_fast
@given(st.text(max_size=200) | _case_like.map(lambda d: yaml.safe_dump(d)))
def test_reading_any_text_never_raises(text: str) -> None:
    eval_file = read_eval_text(text, PATH)
    assert all(p.path == PATH and p.line and p.line >= 1 for p in eval_file.problems)
    assert eval_file.cases == [] or not eval_file.errors
