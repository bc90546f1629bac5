"""`llmkit eval` and `POST /v1/ui/prompt-eval-runs/{key}/version/{version_id}` run through one core
(llmkit/evals/session.py): the same eval, asked of either, selects the same cases, runs them
the same way and records the same results, summary and run-log rows."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from llmkit.cli import main
from tests.eval_fixtures import GREET_BOTH_MD, EvalRepo, eval_api

# What differs between two runs of one eval by its nature: the row's identity and timing.
RUN_ONLY = ("id", "run_id", "created_at", "latency_ms")


def api_run(repo: EvalRepo, number: int | None, rounds: int) -> dict[str, Any]:
    """A run of greet's version `number` over HTTP, named by its integer id as LLMKit's UI
    names it; None runs the version served (a draft has no id)."""
    with eval_api(repo.root) as api:
        version = "served"
        if number is not None:
            found = api.request("GET", f"/v1/ui/prompts/greet/versions/{number}")
            version = found.json()["version_id"]
        response = api.request(
            "POST", f"/v1/ui/prompt-eval-runs/greet/version/{version}?rounds={rounds}"
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def cli_run(repo: EvalRepo, *args: str) -> str:
    """`llmkit eval` in-process; returns the id of the run it recorded."""
    before = {r["run_id"] for r in repo.query("SELECT run_id FROM eval_runs")}
    result = CliRunner().invoke(main, ["eval", "--repo", str(repo.root), *args])
    assert result.exit_code in (0, 1), result.output
    [run_id] = {r["run_id"] for r in repo.query("SELECT run_id FROM eval_runs")} - before
    return run_id


def results(repo: EvalRepo, run_id: str) -> list[dict[str, Any]]:
    rows = repo.query("SELECT * FROM eval_results WHERE run_id = ?", (run_id,))
    kept = [{k: v for k, v in row.items() if k not in RUN_ONLY} for row in rows]
    return sorted(kept, key=lambda r: (r["case_name"], r["repeat_index"]))


def run_row(repo: EvalRepo, run_id: str) -> dict[str, Any]:
    [row] = repo.query(
        "SELECT ref, base_ref, source, summary FROM eval_runs WHERE run_id = ?", (run_id,)
    )
    return row


def eval_calls(repo: EvalRepo) -> list[tuple[Any, ...]]:
    rows = repo.query(
        "SELECT source, prompt_key, version_number, version_sha, draft, draft_blob, request"
        " FROM run_log ORDER BY request"
    )
    return [tuple(row.values()) for row in rows]


def test_a_committed_version_gives_the_same_records_from_the_cli_and_the_api(
    eval_repo: EvalRepo,
) -> None:
    sha = eval_repo.head()
    # The API runs first, on an empty cache; the CLI then skips the cache, so neither run
    # reads what the other stored and every column can be compared.
    body = api_run(eval_repo, 1, rounds=2)
    after_api = eval_calls(eval_repo)
    cli_id = cli_run(eval_repo, "--prompt", "greet", "--ref", sha, "--repeat", "2", "--no-cache")

    from_api, from_cli = results(eval_repo, body["run_id"]), results(eval_repo, cli_id)
    assert from_api == from_cli
    assert [(r["case_name"], r["repeat_index"], r["passed"]) for r in from_api] == [
        ("mentions goodbye", 0, 0),
        ("mentions goodbye", 1, 0),
        ("says hello", 0, 1),
        ("says hello", 1, 1),
    ]
    assert {(r["version_number"], r["version_sha"], r["draft"]) for r in from_api} == {(1, sha, 0)}
    api_row, cli_row = run_row(eval_repo, body["run_id"]), run_row(eval_repo, cli_id)
    assert (api_row["source"], cli_row["source"]) == ("api", "cli")
    assert api_row["ref"] == cli_row["ref"] == sha
    assert api_row["summary"] == cli_row["summary"] and api_row["summary"] is not None
    # Both logged the same provider calls, as eval calls.
    calls = eval_calls(eval_repo)
    assert len(after_api) == 4 and sorted(calls) == sorted(after_api * 2)
    assert {call[0] for call in calls} == {"eval"}


def test_a_draft_gives_the_same_draft_records_from_the_cli_and_the_api(
    eval_repo: EvalRepo,
) -> None:
    eval_repo.write("prompts/greet.md", GREET_BOTH_MD)
    blob = eval_repo.git("hash-object", "prompts/greet.md")
    body = api_run(eval_repo, None, rounds=1)  # the draft is served, as number 2
    assert (body["version_number"], body["version_id"], body["draft"]) == (2, None, True)
    cli_id = cli_run(eval_repo, "--prompt", "greet", "--no-cache")

    from_api, from_cli = results(eval_repo, body["run_id"]), results(eval_repo, cli_id)
    assert from_api == from_cli
    assert [(r["case_name"], r["passed"]) for r in from_api] == [
        ("mentions goodbye", 1),
        ("says hello", 1),
    ]
    assert {
        (r["version_number"], r["version_sha"], r["draft"], r["draft_blob"]) for r in from_api
    } == {(None, None, 1, blob)}
    assert {call[2:6] for call in eval_calls(eval_repo)} == {(None, None, 1, blob)}

    # Committed with other text as version 2, the draft's results are not version 2's.
    eval_repo.write("prompts/greet.md", GREET_BOTH_MD + "\nOne more line.\n")
    eval_repo.commit("greet v2")
    with eval_api(eval_repo.root) as api:
        v2 = api.request("GET", "/v1/ui/prompts/greet/versions/2").json()["version_id"]
        listed = api.request("GET", f"/v1/ui/prompt-eval-runs/greet/version/{v2}")
        assert listed.status_code == 200 and listed.json() == []
        no_draft = api.request("GET", "/v1/ui/prompt-eval-runs/greet/version/null")
        assert no_draft.status_code == 404, no_draft.text
        performance = api.request("GET", "/v1/ui/prompts/greet/performance").json()
    assert [
        (v["version_number"], v["draft"], v["draft_blob"], v["result_count"]) for v in performance
    ] == [(1, False, None, 0), (2, False, None, 0), (None, True, blob, 4)]


@pytest.mark.parametrize("broken_in", ["evals/chat/bad.yaml", "evals/greet/bad.yaml"])
def test_a_broken_eval_file_stops_the_runs_that_read_it_alike(
    eval_repo: EvalRepo, broken_in: str
) -> None:
    eval_repo.write(broken_in, "name: [unclosed\n")
    reads_it = broken_in.startswith("evals/greet/")
    with eval_api(eval_repo.root) as api:
        response = api.request("POST", "/v1/ui/prompt-eval-runs/greet/version/served")
    cli = CliRunner().invoke(main, ["eval", "--repo", str(eval_repo.root), "--prompt", "greet"])
    everything = CliRunner().invoke(main, ["eval", "--repo", str(eval_repo.root)])
    assert everything.exit_code == 2 and broken_in in everything.output
    if reads_it:
        assert response.status_code == 422, response.text
        assert broken_in in response.json()["error"]["message"]
        assert cli.exit_code == 2 and broken_in in cli.output
        assert eval_repo.query("SELECT run_id FROM eval_runs") == []
    else:
        assert response.status_code == 200, response.text
        assert cli.exit_code in (0, 1), cli.output
        assert len(eval_repo.query("SELECT run_id FROM eval_runs")) == 2


FORMAL_MD = """\
---
model: default
---
<!-- role:system -->
You are formal.
"""
FORMAL_CASE = """\
name: is formal
assert:
- type: contains
  value: formal
"""


def test_a_prompt_selects_its_own_cases_not_those_of_prompts_below_it(
    eval_repo: EvalRepo,
) -> None:
    """greet/formal's cases live under evals/greet/formal/: a run of greet neither runs them nor
    stops on a broken file there, from the CLI or the API."""
    eval_repo.write("prompts/greet/formal.md", FORMAL_MD)
    eval_repo.write("evals/greet/formal/basic.yaml", FORMAL_CASE)
    eval_repo.commit("greet/formal")
    body = api_run(eval_repo, 1, rounds=1)
    cli_id = cli_run(eval_repo, "--prompt", "greet", "--no-cache")
    for run_id in (body["run_id"], cli_id):
        assert {r["prompt_key"] for r in results(eval_repo, run_id)} == {"greet"}
    both = cli_run(eval_repo, "--prompt", "greet/formal", "--prompt", "greet")
    assert {r["prompt_key"] for r in results(eval_repo, both)} == {"greet", "greet/formal"}

    eval_repo.write("evals/greet/formal/bad.yaml", "name: [unclosed\n")
    assert api_run(eval_repo, 1, rounds=1)["total"] == 2
    cli_run(eval_repo, "--prompt", "greet")
    refused = CliRunner().invoke(
        main, ["eval", "--repo", str(eval_repo.root), "--prompt", "greet/formal"]
    )
    assert refused.exit_code == 2 and "evals/greet/formal/bad.yaml" in refused.output
