"""A call to a draft (the working tree's uncommitted file) is logged as a draft: no version
number, no sha, the draft flag and the git blob id of the text it ran. It never passes for the
version the draft later becomes, in the API's logs and stats, `llmkit logs` and eval records;
rows an older llmkit logged under the next number read back as drafts after the migration."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from llmkit.cli import main
from llmkit.db import open_durable
from llmkit.errors import BadRequest
from llmkit.evals import records
from llmkit.evals.records import EvalRecords
from llmkit.runlog import RunLog
from llmkit.runlog_record import RunRecord
from llmkit.runlog_schema import MIGRATIONS
from tests.api_fixtures import ApiEnv, running_api
from tests.helpers import HELLO_PROMPT, Repo

ECHO_PROMPT = HELLO_PROMPT.replace("model: default", "model: echo")
DRAFT_TEXT = ECHO_PROMPT.replace("{{ question }}", "{{ question }} (draft wording)")
COMMITTED_TEXT = ECHO_PROMPT.replace("{{ question }}", "{{ question }} (final wording)")
SHA = "a" * 40
BODY = {"model": "hello", "messages": [], "variables": {"personality": "calm", "question": "Hi?"}}


def complete(api: ApiEnv) -> tuple[str, str]:
    """One call of hello: (the version header, the trace id)."""
    response = api.post("/v1/chat/completions", json=BODY, headers=api.run)
    assert response.status_code == 200, response.text
    return response.headers["x-llmkit-prompt-version"], response.headers["x-llmkit-trace-id"]


def logs(api: ApiEnv, **params: Any) -> list[dict[str, Any]]:
    response = api.get("/v1/ui/logs", params=params)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


def test_a_draft_call_is_logged_as_a_draft_and_never_as_the_version_it_becomes(
    repo: Repo,
) -> None:
    repo.write("prompts/hello.md", DRAFT_TEXT)
    draft_blob = repo.git("hash-object", "prompts/hello.md")
    with running_api(repo.root) as api:
        api.ws.index.sync()
        header, draft_trace = complete(api)
        assert header == "draft"
        # The draft is committed as version 2, with other text than the draft that ran.
        repo.write("prompts/hello.md", COMMITTED_TEXT)
        sha = repo.commit("Final wording")
        api.ws.index.sync()
        header, v2_trace = complete(api)
        assert header == "2"

        row = api.get(f"/v1/ui/logs/{draft_trace}").json()
        assert (row["draft"], row["draft_blob"]) == (True, draft_blob)
        assert (row["version_number"], row["version_sha"]) == (None, None)
        v2 = api.get(f"/v1/ui/logs/{v2_trace}").json()
        assert (v2["draft"], v2["draft_blob"], v2["version_number"], v2["version_sha"]) == (
            False,
            None,
            2,
            sha,
        )
        # Asked for version 2 (by number or sha), only the committed call answers.
        for version in ("2", sha[:8]):
            assert [r["trace_id"] for r in logs(api, prompt="hello", version=version)] == [v2_trace]
            count = api.get("/v1/ui/logs/count", params={"prompt": "hello", "version": version})
            assert count.json() == {"count": 1}
        assert [r["trace_id"] for r in logs(api, version="draft")] == [draft_trace]
        bad = api.get("/v1/ui/logs", params={"version": "draft!"})
        assert bad.status_code == 400 and "'draft'" in bad.json()["error"]["message"]

        stats = api.get("/v1/ui/prompts/hello/stats").json()["versions"]
        assert [
            (s["version_number"], s["version_sha"], s["draft"], s["draft_blob"], s["count"])
            for s in stats
        ] == [(2, sha, False, None, 1), (None, None, True, draft_blob, 1)]

    result = CliRunner().invoke(main, ["logs", "--repo", str(repo.root), "--json"])
    assert result.exit_code == 0, result.output
    by_trace = {r["trace_id"]: r for r in json.loads(result.stdout)}
    assert by_trace[draft_trace]["draft"] is True
    assert by_trace[draft_trace]["version_number"] is None
    table = CliRunner().invoke(main, ["logs", "--repo", str(repo.root)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert f"draft {draft_blob[:7]}" in table.stdout


def test_a_draft_record_cannot_carry_a_version_number_or_sha(durable_url: str) -> None:
    db = open_durable(durable_url)
    runlog = RunLog(db)
    try:
        base: dict[str, Any] = {"prompt_key": "p", "model": "echo", "request": {}}
        for fields in ({"version_number": 2}, {"version_sha": SHA}):
            with pytest.raises(BadRequest, match="draft run record has no version"):
                runlog.log(RunRecord(**base, draft=True, draft_blob="b" * 40, **fields))
        with pytest.raises(BadRequest, match="draft_blob is for drafts only"):
            runlog.log(RunRecord(**base, version_number=1, version_sha=SHA, draft_blob="b" * 40))
        with pytest.raises(BadRequest, match="draft must be true or false"):
            runlog.log(RunRecord(**base, draft="yes"))  # type: ignore[arg-type]
        assert runlog.flush() and runlog.count() == 0
    finally:
        runlog.close()
        db.close()


def test_rows_logged_before_the_migration_read_back_as_drafts(durable_url: str) -> None:
    """An older llmkit logged a draft under the next version number without a sha; the
    migration marks such rows as drafts and leaves committed rows alone (on either backend)."""
    db = open_durable(durable_url)
    db.migrate(MIGRATIONS, stop_before="m003_drafts_marked")
    db.migrate(records.MIGRATIONS, stop_before="m002_drafts_marked")
    with db.write() as conn:
        for trace, number, sha in (
            ("old-draft", 3, None),
            ("old-v2", 2, SHA),
            ("none", None, None),
        ):
            conn.execute(
                "INSERT INTO run_log (trace_id, prompt_key, version_number, version_sha, model,"
                " request, status, source, created_at, latency_ms)"
                " VALUES (?, 'p', ?, ?, 'echo', '{}', 'ok', 'api', '2024-05-01T10:00:00.000Z', 5)",
                (trace, number, sha),
            )
        conn.execute(
            "INSERT INTO eval_runs (run_id, started_at, source) VALUES ('r', '2024-05-01', 'cli')"
        )
        for number, sha in ((3, None), (2, SHA)):
            conn.execute(
                "INSERT INTO eval_results (run_id, prompt_key, version_number, version_sha,"
                " case_name, model, repeat_index, passed, assertions, cached, created_at)"
                " VALUES ('r', 'p', ?, ?, 'c', 'echo', 0, 1, '[]', 0, '2024-05-01')",
                (number, sha),
            )
    db.close()

    db = open_durable(durable_url)
    runlog = RunLog(db)
    try:
        old = runlog.get("old-draft")
        assert old is not None
        assert (old["draft"], old["draft_blob"], old["version_number"]) == (True, None, None)
        committed = runlog.get("old-v2")
        assert committed is not None
        assert (committed["draft"], committed["version_number"]) == (False, 2)
        unknown = runlog.get("none")
        assert unknown is not None and unknown["draft"] is False
        assert [r["trace_id"] for r in runlog.list(version=3)] == []
        assert [r["trace_id"] for r in runlog.list(version="draft")] == ["old-draft"]
        stats = runlog.stats("p")
        assert [(s["version_number"], s["draft"], s["count"]) for s in stats] == [
            (2, False, 1),
            (None, False, 1),
            (None, True, 1),
        ]
        results = EvalRecords(db).results(run_id="r")
        assert [(r["version_number"], r["version_sha"], r["draft"]) for r in results] == [
            (None, None, True),
            (2, SHA, False),
        ]
    finally:
        runlog.close()
        db.close()
