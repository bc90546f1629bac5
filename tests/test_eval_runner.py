"""EvalRunner against real parts: a git repository in tmp_path, the offline echo model, and the
fake OpenAI-compatible upstream for provider errors, model overrides and judge assertions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.eval_fixtures import (
    CHAT_EVALS,
    CHAT_MD,
    GREET_EVALS,
    GREET_MD,
    JUDGE_KEY_ENV,
    JUDGE_KEY_VALUE,
    EvalRepo,
    RunnerEnv,
    llmkit_yaml,
    runner_env,
)
from tests.fake_upstream import FakeUpstream

BRIEF_MD = """\
---
model: default
---
<!-- role:system -->
Answer briefly.
"""

UPSTREAM_MD = """\
---
model: upstream
---
<!-- role:system -->
Talk to the upstream.

<!-- role:user -->
{{ question }}
"""

BRIEF_EVALS = """\
cases:
- name: input becomes the user message
  input: what time is it?
  assert:
  - type: equals
    value: "system: Answer briefly.\\nuser: what time is it?"
- name: half the assertions pass
  input: hi
  threshold: 0.5
  assert:
  - type: contains
    value: "user: hi"
  - type: contains
    value: not in the answer
- name: one failing assertion fails the run
  input: hi
  assert:
  - type: contains
    value: "user: hi"
  - type: contains
    value: not in the answer
- name: repeated
  input: again
  repeat: 3
  assert:
  - type: contains
    value: again
- name: on another model
  input: routed
  model: upstream
  assert:
  - type: contains
    value: "ok: routed"
"""

UPSTREAM_EVALS = """\
name: asks upstream
user_vars:
  question: ping
assert:
- type: contains
  value: pong
"""

JUDGE_EVALS = """\
name: judged
input: tell me a joke
assert:
- type: judge
  rubric: The answer is funny.
"""

GREET_BOTH_DRAFT = GREET_MD.replace(
    "Always say hello.", "Always say hello. Say goodbye at the end."
)

MISSING_VAR_EVALS = """\
name: forgets a variable
vars:
  personality: calm
assert:
- type: contains
  value: anything
"""


@pytest.fixture
def env(
    tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunnerEnv]:
    monkeypatch.setenv(JUDGE_KEY_ENV, JUDGE_KEY_VALUE)
    files = {
        "llmkit.yaml": llmkit_yaml(fake_upstream.url),
        "prompts/greet.md": GREET_MD,
        "prompts/chat.md": CHAT_MD,
        "prompts/brief.md": BRIEF_MD,
        "prompts/upstream.md": UPSTREAM_MD,
        "prompts/judged.md": BRIEF_MD,
        "evals/greet/cases.yaml": GREET_EVALS,
        "evals/chat/history.yaml": CHAT_EVALS,
        "evals/brief/cases.yaml": BRIEF_EVALS,
        "evals/upstream/basic.yaml": UPSTREAM_EVALS,
        "evals/judged/joke.yaml": JUDGE_EVALS,
    }
    repo = EvalRepo.create(tmp_path / "repo", files)
    with runner_env(repo.root) as runner_env_:
        yield runner_env_


def by_name(results: list) -> dict:
    return {r.case_name: r for r in results if r.repeat_index == 0}


def test_vars_and_user_vars_render_the_system_and_user_sections(env: RunnerEnv) -> None:
    results = by_name(env.run(env.cases("greet")))
    hello, goodbye = results["says hello"], results["mentions goodbye"]
    expected = "system: You are a cheerful assistant. Always say hello.\nuser: Who are you?"
    assert hello.outcome.text == expected
    assert hello.passed and not goodbye.passed
    assert [(a.type, a.passed) for a in hello.assertions] == [("contains", True)]
    assert goodbye.assertions[0].passed is False
    assert "Say goodbye at the end." in goodbye.assertions[0].reason
    assert hello.version_number == 1 and hello.version_sha == env.ws.store.head()
    assert hello.model == "echo"
    assert hello.outcome.input_tokens > 0 and hello.outcome.output_tokens > 0
    assert hello.outcome.cost == 0.0


def test_messages_pass_through_a_chat_prompt(env: RunnerEnv) -> None:
    [result] = env.run(env.cases("chat"))
    assert result.passed, result.assertions
    assert result.outcome.text.splitlines() == [
        "system: You are a terse assistant.",
        "user: first question",
        "assistant: first answer",
        "user: second question",
    ]


def test_input_thresholds_and_repeats(env: RunnerEnv) -> None:
    results = env.run(env.cases("brief"))
    named = by_name(results)
    assert named["input becomes the user message"].passed
    assert named["input becomes the user message"].outcome.text == (
        "system: Answer briefly.\nuser: what time is it?"
    )
    half, strict = named["half the assertions pass"], named["one failing assertion fails the run"]
    assert [a.passed for a in half.assertions] == [True, False]
    assert half.passed and half.threshold == 0.5
    assert [a.passed for a in strict.assertions] == [True, False]
    assert not strict.passed
    repeated = sorted(r.repeat_index for r in results if r.case_name == "repeated")
    assert repeated == [0, 1, 2]


def test_repeat_option_overrides_every_case(env: RunnerEnv) -> None:
    results = env.run(env.cases("greet"), repeat=2)
    runs = sorted((r.case_name, r.repeat_index) for r in results)
    assert runs == [
        ("mentions goodbye", 0),
        ("mentions goodbye", 1),
        ("says hello", 0),
        ("says hello", 1),
    ]


def test_model_override_per_case(env: RunnerEnv, fake_upstream: FakeUpstream) -> None:
    named = by_name(env.run(env.cases("brief")))
    routed = named["on another model"]
    assert routed.passed, routed.assertions
    assert routed.model == "openai/fake-model"
    assert named["input becomes the user message"].model == "echo"
    [request] = fake_upstream.chat_requests
    assert request.body["model"] == "fake-model"
    assert request.body["messages"][-1] == {"role": "user", "content": "routed"}


def test_provider_error_is_a_failed_result_with_the_error_as_reason(
    env: RunnerEnv, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.enqueue(status=400, error="the model is on fire")
    [result] = env.run(env.cases("upstream"), use_cache=False)
    assert not result.passed
    assert result.outcome.error is not None and "the model is on fire" in result.outcome.error
    [assertion] = result.assertions
    assert not assertion.passed and "the model is on fire" in assertion.reason
    assert len(fake_upstream.chat_requests) == 1


def test_render_error_is_a_failed_result(env: RunnerEnv, fake_upstream: FakeUpstream) -> None:
    env.ws.settings.repo.joinpath("evals/greet/missing.yaml").write_text(MISSING_VAR_EVALS, "utf-8")
    [result] = env.run(env.cases("greet")[2:])
    assert result.case_name == "forgets a variable"
    assert not result.passed
    assert result.outcome.error is not None and "question" in result.outcome.error
    assert "question" in result.assertions[0].reason


def test_upstream_answer_is_checked(env: RunnerEnv, fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(content="pong!")
    [result] = env.run(env.cases("upstream"), use_cache=False)
    assert result.passed and result.outcome.text == "pong!"
    [request] = fake_upstream.chat_requests
    assert request.body["messages"] == [
        {"role": "system", "content": "Talk to the upstream."},
        {"role": "user", "content": "ping"},
    ]


@pytest.mark.parametrize(
    ("answer", "passed", "reason"),
    [
        (json.dumps({"pass": True, "reason": "It made me laugh."}), True, "It made me laugh."),
        (json.dumps({"pass": False, "reason": "Not funny at all."}), False, "Not funny at all."),
        ("I think it is fine", False, "did not answer JSON"),
        (json.dumps({"verdict": "yes"}), False, "without a boolean"),
    ],
)
def test_judge_assertion(
    env: RunnerEnv,
    fake_upstream: FakeUpstream,
    answer: str,
    passed: bool,
    reason: str,
) -> None:
    fake_upstream.enqueue(content=answer)
    [result] = env.run(env.cases("judged"), use_cache=False)
    [assertion] = result.assertions
    assert assertion.type == "judge"
    assert assertion.passed is passed and result.passed is passed
    assert reason in assertion.reason
    [request] = fake_upstream.chat_requests
    assert request.body["model"] == "judge-model"
    assert request.body["response_format"] == {"type": "json_object"}
    judged = request.body["messages"][-1]["content"]
    assert "The answer is funny." in judged and "user: tell me a joke" in judged


def test_judge_error_fails_the_assertion(env: RunnerEnv, fake_upstream: FakeUpstream) -> None:
    # The judge alias has max_retries: 0, so one error answer is the only call.
    fake_upstream.enqueue(status=503, error="judge overloaded")
    [result] = env.run(env.cases("judged"), use_cache=False)
    [assertion] = result.assertions
    assert not assertion.passed and "judge overloaded" in assertion.reason
    assert len(fake_upstream.chat_requests) == 1


def test_second_run_comes_from_the_cache(env: RunnerEnv, fake_upstream: FakeUpstream) -> None:
    cases = env.cases("upstream") + env.cases("judged")
    fake_upstream.enqueue(content="pong")
    fake_upstream.enqueue(content=json.dumps({"pass": True, "reason": "funny"}))
    first = env.run(cases, concurrency=1)
    calls = len(fake_upstream.history)
    assert calls == 2 and not any(r.cached for r in first)
    second = env.run(cases)
    assert len(fake_upstream.history) == calls, "a cached run must not call the provider"
    assert all(r.cached for r in second)
    assert [r.outcome.text for r in second] == [r.outcome.text for r in first]
    assert [r.passed for r in second] == [True, True]
    reasons = [by_name(run)["judged"].assertions[0].reason for run in (first, second)]
    assert reasons[0] == reasons[1] and "funny" in reasons[0]


def test_no_cache_calls_again(env: RunnerEnv, fake_upstream: FakeUpstream) -> None:
    cases = env.cases("upstream")
    env.run(cases)
    assert len(fake_upstream.chat_requests) == 1
    [again] = env.run(cases, use_cache=False)
    assert len(fake_upstream.chat_requests) == 2 and not again.cached
    [cached] = env.run(cases)
    assert len(fake_upstream.chat_requests) == 2 and cached.cached


def test_repeats_have_separate_cache_entries(env: RunnerEnv, fake_upstream: FakeUpstream) -> None:
    cases = env.cases("upstream")
    for answer in ("pong 1", "pong 2", "pong 3"):
        fake_upstream.enqueue(content=answer)
    first = env.run(cases, repeat=3, concurrency=1)
    assert len(fake_upstream.chat_requests) == 3
    assert sorted(r.outcome.text for r in first) == ["pong 1", "pong 2", "pong 3"]
    second = env.run(cases, repeat=3)
    assert len(fake_upstream.chat_requests) == 3
    assert {r.repeat_index: r.outcome.text for r in second} == {
        r.repeat_index: r.outcome.text for r in first
    }
    assert all(r.cached for r in second)
    [row] = env.ws.db.reader().execute("SELECT COUNT(*) FROM response_cache").fetchall()
    assert row[0] == 3


def test_errors_are_not_cached(env: RunnerEnv, fake_upstream: FakeUpstream) -> None:
    cases = env.cases("upstream")
    fake_upstream.enqueue(status=400, error="broken once")
    [failed] = env.run(cases)
    assert failed.outcome.error is not None
    fake_upstream.enqueue(content="pong")
    [passed] = env.run(cases)
    assert passed.passed and not passed.cached
    assert len(fake_upstream.chat_requests) == 2


def test_base_ref_runs_that_refs_version(env: RunnerEnv) -> None:
    repo = EvalRepo(env.ws.settings.repo)
    first = repo.head()
    repo.write("prompts/greet.md", GREET_MD.replace("Always say hello.", "Never say hello."))
    repo.commit("greet v2")
    cases = env.cases("greet")
    now = by_name(env.run(cases))
    then = by_name(env.run(cases, ref=first))
    assert now["says hello"].version_number == 2 and not now["says hello"].passed
    assert then["says hello"].version_number == 1 and then["says hello"].passed
    assert then["says hello"].version_sha == first
    assert "Always say hello." in then["says hello"].outcome.text


def test_cases_of_a_prompt_missing_at_the_base_ref_are_left_out(env: RunnerEnv) -> None:
    repo = EvalRepo(env.ws.settings.repo)
    first = repo.head()
    repo.write("prompts/later.md", BRIEF_MD)
    repo.write("evals/later/basic.yaml", "name: later\ninput: x\n")
    repo.commit("a later prompt")
    cases = env.cases("later")
    assert [r.case_name for r in env.run(cases)] == ["later"]
    assert env.run(cases, ref=first) == []


def test_draft_prompt_is_run_as_it_is_in_the_working_tree(env: RunnerEnv) -> None:
    root = env.ws.settings.repo
    (root / "prompts/greet.md").write_text(GREET_BOTH_DRAFT, "utf-8")
    named = by_name(env.run(env.cases("greet")))
    assert named["mentions goodbye"].passed
    assert named["says hello"].version_sha is None
    assert named["says hello"].version_number is None
    assert named["says hello"].draft_blob == env.ws.index.version("greet").blob
