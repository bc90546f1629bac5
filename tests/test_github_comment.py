"""The pull-request comment against a fake of GitHub's REST API on 127.0.0.1: one comment per
pull request, found again across pages of comments, and every API failure said out loud."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit import github_comment
from tests.fake_github import REPOSITORY, TOKEN, FakeGitHub
from tests.helpers import PROJECT_ROOT, clean_env


def event_file(tmp_path: Path, number: int | None) -> Path:
    event = {"pull_request": {"number": number}} if number else {"ref": "refs/heads/main"}
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event), "utf-8")
    return path


def comment_env(fake: FakeGitHub, event: Path) -> dict[str, str]:
    return {
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_API_URL": fake.url,
        "GITHUB_REPOSITORY": REPOSITORY,
        "GITHUB_EVENT_PATH": str(event),
    }


def post(markdown: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m llmkit.github_comment`, as the action runs it."""
    return subprocess.run(
        [sys.executable, "-m", "llmkit.github_comment", "--markdown", str(markdown)],
        cwd=PROJECT_ROOT,
        env=clean_env(NO_COLOR="1", COLUMNS="200", **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_first_run_creates_one_comment_and_the_next_updates_it(
    fake_github: FakeGitHub, tmp_path: Path
) -> None:
    for n in range(5):  # earlier discussion: three pages of two before the end
        fake_github.add(7, f"review remark {n}")
    fake_github.add(8, f"{github_comment.marker()}\nanother pull request's comment")
    summary = tmp_path / "eval-summary.md"
    summary.write_text("## ❌ llmkit eval: 1 regression\n| case | before | after |\n", "utf-8")
    env = comment_env(fake_github, event_file(tmp_path, 7))

    first = post(summary, env)
    assert first.returncode == 0, first.stderr
    assert "created comment" in first.stdout and "#7" in first.stdout
    [ours] = fake_github.ours(7)
    assert ours["body"] == f"{github_comment.marker()}\n{summary.read_text('utf-8')}"
    assert fake_github.methods() == ["GET", "GET", "GET", "POST"]  # every page was read

    summary.write_text("## ✅ llmkit eval: all 3 cases pass\n", "utf-8")
    fake_github.add(7, "a later remark")  # ours is now in the middle, on page 3 of 4
    fake_github.requests.clear()
    second = post(summary, env)
    assert second.returncode == 0, second.stderr
    assert f"updated comment {ours['id']}" in second.stdout
    assert [c["id"] for c in fake_github.ours(7)] == [ours["id"]]
    assert fake_github.ours(7)[0]["body"].endswith("all 3 cases pass\n")
    assert "PATCH" in fake_github.methods() and "POST" not in fake_github.methods()
    assert len(fake_github.comments[7]) == 7
    assert len(fake_github.ours(8)) == 1  # the other pull request's comment is left alone


def test_comment_found_past_the_first_page_is_updated_not_duplicated(
    fake_github: FakeGitHub, tmp_path: Path
) -> None:
    for n in range(4):
        fake_github.add(3, f"remark {n}")
    existing = fake_github.add(3, f"{github_comment.marker()}\nold summary")
    # A remark that merely quotes the marker later in its text is not ours.
    fake_github.add(3, f"what is this `{github_comment.marker()}`?")
    summary = tmp_path / "s.md"
    summary.write_text("new summary\n", "utf-8")
    result = post(summary, comment_env(fake_github, event_file(tmp_path, 3)))
    assert result.returncode == 0, result.stderr
    assert [c["id"] for c in fake_github.ours(3)] == [existing]
    assert fake_github.ours(3)[0]["body"].endswith("new summary\n")
    patched = [path for method, path, _ in fake_github.requests if method == "PATCH"]
    assert patched == [f"/repos/{REPOSITORY}/issues/comments/{existing}"]


def test_api_refusal_is_a_clear_error_and_a_failing_exit(
    fake_github: FakeGitHub, tmp_path: Path
) -> None:
    refusal = {"message": "Resource not accessible by integration"}
    fake_github.fail["POST"] = (403, json.dumps(refusal))
    summary = tmp_path / "s.md"
    summary.write_text("summary\n", "utf-8")
    result = post(summary, comment_env(fake_github, event_file(tmp_path, 5)))
    assert result.returncode == 1
    assert "not written" in result.stderr
    assert "POST" in result.stderr and "403" in result.stderr
    assert "Resource not accessible by integration" in result.stderr
    assert TOKEN not in result.stderr + result.stdout
    assert fake_github.ours(5) == []


def test_bad_token_and_unreachable_api_fail_loudly(fake_github: FakeGitHub, tmp_path: Path) -> None:
    summary = tmp_path / "s.md"
    summary.write_text("summary\n", "utf-8")
    env = {**comment_env(fake_github, event_file(tmp_path, 5)), "GITHUB_TOKEN": "ghs_wrong"}
    wrong = post(summary, env)
    assert wrong.returncode == 1
    assert "401" in wrong.stderr and "Bad credentials" in wrong.stderr
    fake_github.fail["GET"] = (500, "<html>oops</html>")
    broken = post(summary, comment_env(fake_github, event_file(tmp_path, 5)))
    assert broken.returncode == 1 and "500" in broken.stderr and "oops" in broken.stderr
    # A port nothing listens on: the server is closed after its port is noted.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    gone = post(
        summary, {**comment_env(fake_github, event_file(tmp_path, 5)), "GITHUB_API_URL": closed}
    )
    assert gone.returncode == 1
    assert "cannot reach GitHub" in gone.stderr


def test_a_link_to_another_host_never_gets_the_token(
    fake_github: FakeGitHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = github_comment.GitHubApi(fake_github.url, TOKEN)
    with pytest.raises(github_comment.CommentError, match="outside"):
        api.request("GET", "http://attacker.invalid/steal")
    assert fake_github.requests == []


def test_usage_errors_and_events_without_a_pull_request(
    fake_github: FakeGitHub, tmp_path: Path
) -> None:
    summary = tmp_path / "s.md"
    summary.write_text("summary\n", "utf-8")
    push = post(summary, comment_env(fake_github, event_file(tmp_path, None)))
    assert push.returncode == 0
    assert "Not a pull request" in push.stdout
    env = comment_env(fake_github, event_file(tmp_path, 9))
    no_token = post(summary, {**env, "GITHUB_TOKEN": ""})
    assert no_token.returncode == 2 and "GITHUB_TOKEN" in no_token.stderr
    bad_repo = post(summary, {**env, "GITHUB_REPOSITORY": "../../etc"})
    assert bad_repo.returncode == 2 and "OWNER/NAME" in bad_repo.stderr
    missing = post(tmp_path / "nope.md", env)
    assert missing.returncode == 2 and "nope.md" in missing.stderr
    assert fake_github.requests == []


def test_a_huge_summary_is_cut_to_fit_a_comment() -> None:
    body = github_comment.comment_body("x" * 200_000)
    assert body.startswith(github_comment.marker())
    assert len(body) < 65_536
    assert "was cut" in body
