"""The eval judge is called as every other call is: through the executor, so a fallback alias
keeps its own api_base and key, and each judge call is a run-log row (source "judge") that the
prompt's per-version figures leave out. A key that is not set stops `llmkit eval` with one
message and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.eval_fixtures import JOKE_MD, JUDGED_CASE, EvalRepo, eval_api, runner_env
from tests.fake_upstream import FakeUpstream
from tests.helpers import run_llmkit


def judge_yaml(primary: FakeUpstream, backup: FakeUpstream) -> str:
    """`judge` on one upstream, falling back to the alias `judge_backup` on the other, each
    with its own key variable; no retries, so a scripted failure moves on at once."""
    return (
        "models:\n"
        "  default: echo\n"
        "  judge:\n"
        "    model: openai/judge-a\n"
        f"    api_base: {primary.url}\n"
        "    api_key_env: JUDGE_A_KEY\n"
        "    max_retries: 0\n"
        "    fallbacks: [judge_backup]\n"
        "  judge_backup:\n"
        "    model: openai/judge-b\n"
        f"    api_base: {backup.url}\n"
        "    api_key_env: JUDGE_B_KEY\n"
        "    max_retries: 0\n"
    )


def judged_repo(root: Path, config: str) -> EvalRepo:
    return EvalRepo.create(
        root,
        {
            "llmkit.yaml": config,
            "prompts/joke.md": JOKE_MD,
            "evals/joke/judged.yaml": JUDGED_CASE,
        },
    )


@pytest.fixture
def judged(
    tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> EvalRepo:
    """The judged repository, judging on `upstreams`, with both judges' keys set."""
    monkeypatch.setenv("JUDGE_A_KEY", "secret-a")
    monkeypatch.setenv("JUDGE_B_KEY", "secret-b")
    return judged_repo(tmp_path / "repo", judge_yaml(*upstreams))


def test_judge_fallback_alias_calls_its_own_upstream_with_its_own_key(
    judged: EvalRepo, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = upstreams
    a.enqueue(status=500, error="judge a is down")
    b.enqueue(content=json.dumps({"pass": True, "reason": "cats throughout"}))
    with runner_env(judged.root) as env:
        [result] = env.run(env.cases(), use_cache=False)
        assert env.ws.runlog.flush()
        rows = env.ws.runlog.list(prompt="joke")
        stats = env.ws.runlog.stats("joke")

    assert result.passed, result.assertions[0].reason
    assert "cats throughout" in result.assertions[0].reason
    [to_a] = a.chat_requests
    assert (to_a.body["model"], to_a.headers["authorization"]) == ("judge-a", "Bearer secret-a")
    [to_b] = b.chat_requests
    assert (to_b.body["model"], to_b.headers["authorization"]) == ("judge-b", "Bearer secret-b")
    assert to_b.body["response_format"] == {"type": "json_object"}
    assert "The answer is about cats." in to_b.body["messages"][-1]["content"]

    by_source = {row["source"]: row for row in rows}
    assert sorted(by_source) == ["eval", "judge"], rows
    judge_row, case_row = by_source["judge"], by_source["eval"]
    assert judge_row["model"] == "openai/judge-a"
    assert (judge_row["version_sha"], judge_row["status"]) == (case_row["version_sha"], "ok")
    assert "cats throughout" in json.dumps(judge_row["response"])
    # The judge's call is about the version, not of it: the version's figures count one call.
    [version_stats] = stats
    assert version_stats["count"] == 1


def test_a_failed_judge_call_is_logged_as_an_error(
    judged: EvalRepo, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = upstreams
    a.enqueue(status=500, error="judge a is down")
    b.enqueue(status=400, error="judge b refuses")
    with runner_env(judged.root) as env:
        [result] = env.run(env.cases(), use_cache=False)
        assert env.ws.runlog.flush()
        [judge_row] = [r for r in env.ws.runlog.list(prompt="joke") if r["source"] == "judge"]
    assert not result.passed and "judge b refuses" in result.assertions[0].reason
    assert judge_row["status"] == "error" and "judge b refuses" in judge_row["error"]


def test_eval_with_an_unset_judge_key_exits_2_with_one_message(
    tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = upstreams
    repo = judged_repo(tmp_path / "repo", judge_yaml(a, b))
    repo.write("evals/joke/more.yaml", JUDGED_CASE.replace("name: judged", "name: judged again"))
    repo.commit("A second judged case")
    proc = run_llmkit("eval", cwd=repo.root, env={"JUDGE_B_KEY": "secret-b"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("JUDGE_A_KEY") == 1, proc.stderr
    assert proc.stderr.count("Error:") == 1
    assert "FAIL" not in proc.stderr and "FAIL" not in proc.stdout
    assert "configuration error (exit 2)" in proc.stderr
    assert a.chat_requests == [] and b.chat_requests == []


UNSET_KEY_YAML = """\
models:
  default: echo
  remote:
    model: openai/remote-model
    api_base: http://127.0.0.1:9/v1
    api_key_env: EVAL_UNSET_KEY
"""
REMOTE_MD = JOKE_MD.replace("model: default", "model: remote")
REMOTE_EVALS = """\
cases:
- name: first
  input: one
  assert: [{type: contains, value: one}]
- name: second
  input: two
  assert: [{type: contains, value: two}]
"""


@pytest.fixture
def unset_key_repo(tmp_path: Path) -> EvalRepo:
    """A prompt on a model whose key variable is not set, with two eval cases."""
    return EvalRepo.create(
        tmp_path / "repo",
        {
            "llmkit.yaml": UNSET_KEY_YAML,
            "prompts/remote.md": REMOTE_MD,
            "evals/remote/cases.yaml": REMOTE_EVALS,
        },
    )


def test_eval_with_an_unset_model_key_exits_2_with_one_message(
    unset_key_repo: EvalRepo, tmp_path: Path
) -> None:
    repo = unset_key_repo
    proc = run_llmkit("eval", "--json", str(tmp_path / "out.json"), cwd=repo.root)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = [text for text in proc.stderr.splitlines() if "EVAL_UNSET_KEY" in text]
    assert line.startswith("Error: No API key for openai: set EVAL_UNSET_KEY")
    assert "FAIL" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out.json").exists()
    # Nothing of the run was saved as results: a later run with the key is the first.
    assert repo.query("SELECT COUNT(*) AS n FROM eval_runs") == [{"n": 0}]


def test_eval_api_with_an_unset_model_key_answers_503(unset_key_repo: EvalRepo) -> None:
    with eval_api(unset_key_repo.root) as api:
        response = api.request("POST", "/v1/ui/prompt-eval-runs/remote/version/served")
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "provider_not_configured" and "EVAL_UNSET_KEY" in error["message"]
