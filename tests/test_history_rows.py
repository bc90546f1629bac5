"""`llmkit history --json` and `GET /v1/ui/prompts/{id}/versions` read one set of rows: the
same fields, author, date, message and diff for every version, the draft included."""

from __future__ import annotations

import json

from click.testing import CliRunner

from llmkit.cli import main
from tests.api_fixtures import running_api
from tests.helpers import HELLO_PROMPT, Repo

HELLO_V2 = HELLO_PROMPT.replace("{{ question }}", "{{ question }}\nAnswer in one line.")


def cli_history(repo: Repo, key: str) -> list[dict[str, object]]:
    result = CliRunner().invoke(
        main, ["history", key, "--repo", str(repo.root), "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_cli_and_api_history_rows_are_the_same(repo: Repo) -> None:
    repo.write("prompts/hello.md", HELLO_V2)
    repo.commit("Ask for one line\n\nLong answers were cut off by the widget.")
    repo.write("prompts/hello.md", HELLO_V2 + "\nwork in progress\n")  # a draft
    from_cli = cli_history(repo, "hello")
    with running_api(repo.root) as api:
        response = api.get("/v1/ui/prompts/hello/versions")
        assert response.status_code == 200, response.text
        from_api = response.json()
    assert from_cli == from_api
    shas = list(reversed(repo.log("--", "prompts/hello.md")))
    assert [(r["number"], r["sha"], r["draft"]) for r in from_api] == [
        (1, shas[0], False),
        (2, shas[1], False),
        (3, None, True),
    ]
    assert str(from_api[1]["message"]).strip() == (
        "Ask for one line\n\nLong answers were cut off by the widget."
    )
    assert from_api[2]["message"] == "Uncommitted changes in the working tree"
    assert from_api[2]["author"] is None and from_api[2]["date"] is None
    assert {r["author_email"] for r in from_api[:2]} == {"author@example.com"}
    assert "+work in progress\n" in str(from_api[2]["diff"])
    # The fields of a version (its parsed prompt) come along in both, with the diff of its
    # system section against the version before.
    assert from_api[1]["user_version_diff"] and "Answer in one line." in str(
        from_api[1]["user_version_diff"]
    )


def test_cli_history_text_names_the_draft(repo: Repo) -> None:
    repo.write("prompts/hello.md", HELLO_V2)
    result = CliRunner().invoke(
        main, ["history", "hello", "--repo", str(repo.root)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "draft" in result.stdout
    assert "Uncommitted changes in the working tree" in result.stdout
