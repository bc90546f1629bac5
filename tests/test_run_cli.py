"""`llmkit run` and `llmkit logs` as a user runs them over a real repository, the echo model
offline and the fake upstream for a provider that needs a key: in-process through click's
CliRunner, and each command once as a real process (the entry point and its exit code)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from tests.exec_fixtures import (
    FAKE_KEY_ENV,
    FAKE_KEY_VALUE,
    MISSING_KEY_ENV,
    PinnedShas,
    build_exec_repo,
)
from tests.fake_upstream import FakeUpstream
from tests.helpers import invoke, run_llmkit

TRACE_RE = re.compile(r"\[(?P<key>\S+) version (?P<version>\S+), trace (?P<trace>[0-9a-f]+)\]")


@dataclass
class CliRepo:
    root: Path
    shas: PinnedShas


@pytest.fixture(scope="module")
def cli_repo(
    module_fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CliRepo]:
    root = tmp_path_factory.mktemp("cli") / "repo"
    shas = build_exec_repo(root, module_fake.url)
    yield CliRepo(root, shas)


def llmkit(repo: CliRepo, *args: str) -> Result:
    """`llmkit ARGS --repo REPO` in-process, with the fake upstream's key and a wide terminal
    (so that rich does not wrap the logs table's cells)."""
    env = {FAKE_KEY_ENV: FAKE_KEY_VALUE, MISSING_KEY_ENV: None}
    return invoke(*args, "--repo", repo.root, env=env)


def llmkit_process(repo: CliRepo, *args: str) -> subprocess.CompletedProcess[str]:
    """The same as a real `python -m llmkit` process."""
    assert MISSING_KEY_ENV not in os.environ, f"{MISSING_KEY_ENV} must stay unset"
    return run_llmkit(*args, "--repo", repo.root, env={FAKE_KEY_ENV: FAKE_KEY_VALUE})


def trace_of(proc: Result | subprocess.CompletedProcess[str]) -> dict[str, str]:
    match = TRACE_RE.search(proc.stderr)
    assert match, proc.stderr
    return match.groupdict()


def logs_json(repo: CliRepo, *args: str) -> list[dict[str, Any]]:
    proc = llmkit(repo, "logs", *args, "--json")
    assert proc.exit_code == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_run_streams_the_echo_answer_to_stdout(cli_repo: CliRepo) -> None:
    proc = llmkit_process(
        cli_repo, "run", "echo", "--var", "language=French", "-m", "Good morning {{ language }}"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "system: Translate into French.\nuser: Good morning {{ language }}\n"
    assert trace_of(proc)["key"] == "echo" and trace_of(proc)["version"] == "1"


def test_run_a_pinned_version(cli_repo: CliRepo) -> None:
    for spec, number in (
        ("pinned@1", 1),
        ("pinned@stable", 2),
        (f"pinned@{cli_repo.shas.v1[:7]}", 1),
    ):
        proc = llmkit(cli_repo, "run", spec)
        assert proc.exit_code == 0, proc.stderr
        assert proc.stdout == f"system: Version {number} speaking.\n"
        assert trace_of(proc)["version"] == str(number)


def test_run_through_a_provider_with_a_key(cli_repo: CliRepo, fake: FakeUpstream) -> None:
    proc = llmkit(cli_repo, "run", "static", "-m", "hello there")
    assert proc.exit_code == 0, proc.stderr
    assert proc.stdout == "ok: hello there\n"
    [request] = fake.chat_requests
    assert request.body["stream"] is True
    assert request.headers["authorization"] == "Bearer sk-fake-upstream-key"


def test_run_no_stream_and_json(cli_repo: CliRepo) -> None:
    proc = llmkit(cli_repo, "run", "pinned@2", "--no-stream")
    assert (proc.exit_code, proc.stdout) == (0, "system: Version 2 speaking.\n")
    proc = llmkit(cli_repo, "run", "pinned@2", "--json")
    assert proc.exit_code == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["object"] == "chat.completion" and data["model"] == "pinned"


def test_run_errors_are_one_line_messages(cli_repo: CliRepo) -> None:
    proc = llmkit(cli_repo, "run", "echo", "-m", "hi")
    assert proc.exit_code == 1
    assert "Missing variables: language" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = llmkit(cli_repo, "run", "nokey", "-m", "hi")
    assert proc.exit_code == 2  # an unset provider key is a configuration error
    assert MISSING_KEY_ENV in proc.stderr and "Traceback" not in proc.stderr
    proc = llmkit(cli_repo, "run", "pinned@77")
    assert proc.exit_code == 1 and "77" in proc.stderr


def test_logs_shows_the_calls(cli_repo: CliRepo) -> None:
    traces = []
    for question in ("one", "two", "three"):
        proc = llmkit(cli_repo, "run", "team/greet", "--var", "language=Dutch", "-m", question)
        assert proc.exit_code == 0, proc.stderr
        traces.append(trace_of(proc)["trace"])
    rows = logs_json(cli_repo, "--prompt", "team/greet", "-n", "5")
    assert [r["trace_id"] for r in rows] == traces[::-1]
    newest = rows[0]
    assert newest["prompt_key"] == "team/greet" and newest["source"] == "cli"
    assert newest["status"] == "ok" and newest["stream"] is True and newest["model"] == "echo"
    assert newest["response"] == "system: Translate into Dutch.\nuser: three"
    assert newest["version_number"] == 1 and newest["ttft_ms"] is not None
    assert [
        r["trace_id"] for r in logs_json(cli_repo, "--prompt", "team/greet", "-n", "2")
    ] == traces[:0:-1]
    assert logs_json(cli_repo, "--prompt", "team/greet", "--status", "error") == []
    table = llmkit_process(cli_repo, "logs", "--prompt", "team/greet", "-n", "5")
    assert table.returncode == 0, table.stderr
    assert table.stdout.count("team/greet") == 3 and traces[0][:8] in table.stdout


def test_logs_records_failed_provider_calls(cli_repo: CliRepo, fake: FakeUpstream) -> None:
    fake.enqueue(status=500, error="cli boom")
    proc = llmkit(cli_repo, "run", "static", "-m", "fail please")
    assert proc.exit_code == 1 and "cli boom" in proc.stderr
    [row] = logs_json(cli_repo, "--prompt", "static", "--status", "error", "-n", "1")
    assert "cli boom" in row["error"] and row["source"] == "cli"
