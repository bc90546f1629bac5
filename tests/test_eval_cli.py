"""`llmkit eval` end to end: a prompt repository with real git branches in tmp_path, the offline
echo model, and the command run in-process through click's CliRunner (stderr is not a
terminal); the first test runs it as a real process, for the entry point and its exit code."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.eval_fixtures import GREET_BOTH_MD, EvalRepo, feature_files
from tests.helpers import git, invoke, run_llmkit

REPORT_ARGS = ("--junit", "j.xml", "--json", "k.json", "--markdown", "m.md")
PROGRESS_LINE = re.compile(r"^\[(\d+)/(\d+)\] (pass|FAIL) ([\w./-]+)@(\S+) (.+)$")


@pytest.fixture
def feature(eval_repo: EvalRepo) -> EvalRepo:
    """On branch `feature`: greet changed (one regression, one fix) and a new case."""
    eval_repo.branch("feature", feature_files(), "Say goodbye instead")
    return eval_repo


def cases_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["case_name"]: c for c in report["cases"]}


def stored_runs(repo: EvalRepo) -> int:
    if not repo.db_path.exists():
        return 0
    if not repo.query("SELECT name FROM sqlite_master WHERE name = 'eval_runs'"):
        return 0
    return len(repo.query("SELECT run_id FROM eval_runs"))


def progress_lines(stderr: str) -> list[re.Match[str]]:
    matches = [PROGRESS_LINE.match(line) for line in stderr.splitlines()]
    return [m for m in matches if m]


def test_regression_against_base_branch(feature: EvalRepo) -> None:
    root = feature.root
    proc = run_llmkit("eval", "--base", "main", *REPORT_ARGS, cwd=root)
    assert proc.returncode == 1, proc.stderr

    report = json.loads((root / "k.json").read_text("utf-8"))
    assert report["ok"] is False and report["base_ref"] == "main" and report["compared"] is True
    cases = cases_of(report)
    assert {name: c["status"] for name, c in cases.items()} == {
        "says hello": "regression",
        "mentions goodbye": "fixed",
        "asks who": "pass",  # a new case of a prompt that exists on main runs there too
        "says farewell": "new",  # its prompt is new: no base run
        "passes the history through": "pass",
    }
    hello = cases["says hello"]
    assert (hello["before"]["passed"], hello["after"]["passed"]) == (True, False)
    assert (hello["before"]["version_number"], hello["after"]["version_number"]) == (1, 2)
    assert hello["after"]["version_sha"] == feature.head()
    assert hello["before"]["version_sha"] == feature.git("rev-parse", "main")
    goodbye = cases["mentions goodbye"]
    assert (goodbye["before"]["passed"], goodbye["after"]["passed"]) == (False, True)
    assert cases["asks who"]["before"]["version_number"] == 1
    farewell = cases["says farewell"]
    assert farewell["before"] is None and farewell["after"]["passed"] is True
    assert report["summary"] == {
        "cases": 5,
        "passed": 4,
        "failed": 1,
        "regressions": 1,
        "fixed": 1,
        "new": 1,
        "runs": 5,
        "cached_runs": 0,
    }
    failed_run = hello["runs"][0]
    assert "Always say hello." in failed_run["assertions"][0]["reason"]

    markdown = (root / "m.md").read_text("utf-8")
    assert "Before: prompt versions on main" in markdown
    assert "### greet · v1 → v2" in markdown
    regression_row = r"^\| 🔻 regression \| \*\*says hello\*\* \| ✅ 1/1 \| ❌ 0/1 \|"
    assert re.search(regression_row, markdown, re.MULTILINE)
    assert re.search(
        r"^\| ✨ fixed \| mentions goodbye \| ❌ 0/1 \| ✅ 1/1 \|", markdown, re.MULTILINE
    )
    assert re.search(r"^\| 🆕 new \| says farewell \| — \| ✅ 1/1 \|", markdown, re.MULTILINE)
    assert "**Regressions** (passed before, fail now)" in markdown

    suites = ET.parse(root / "j.xml").getroot()
    assert suites.tag == "testsuites"
    assert (suites.get("tests"), suites.get("failures"), suites.get("errors")) == ("5", "1", "0")
    testcases = {tc.get("name"): tc for tc in suites.iter("testcase")}
    assert set(testcases) == set(cases)
    failure = testcases["says hello"].find("failure")
    assert failure is not None and failure.get("type") == "regression"
    assert "regression (passed on main)" in (failure.get("message") or "")
    assert all(testcases[n].find("failure") is None for n in cases if n != "says hello")

    # Progress goes to stderr as plain lines: every run once, numbered up to the real total
    # (the new case has no base run).
    lines = progress_lines(proc.stderr)
    assert [int(m.group(1)) for m in lines] == list(range(1, 10))
    assert {m.group(2) for m in lines} == {"9"}
    assert any(
        m.group(3) == "FAIL" and m.group(4) == "greet" and m.group(6) == "says hello" for m in lines
    )
    assert "\x1b[" not in proc.stderr
    assert "1 regression(s)" in proc.stdout


def test_all_passing_exits_zero(eval_repo: EvalRepo) -> None:
    eval_repo.branch("fix", {"prompts/greet.md": GREET_BOTH_MD}, "Hello and goodbye")
    proc = invoke("eval", "--base", "main", "--json", "k.json", cwd=eval_repo.root)
    assert proc.exit_code == 0, proc.stdout + proc.stderr
    report = json.loads((eval_repo.root / "k.json").read_text("utf-8"))
    assert report["ok"] is True
    assert report["summary"]["regressions"] == 0 and report["summary"]["fixed"] == 1


def test_failure_without_base_exits_one(eval_repo: EvalRepo) -> None:
    proc = invoke("eval", "--json", "k.json", cwd=eval_repo.root)
    assert proc.exit_code == 1
    report = json.loads((eval_repo.root / "k.json").read_text("utf-8"))
    assert report["compared"] is False
    assert {n: c["status"] for n, c in cases_of(report).items()} == {
        "says hello": "pass",
        "mentions goodbye": "fail",
        "passes the history through": "pass",
    }


def test_usage_and_config_errors_exit_two(feature: EvalRepo) -> None:
    root = feature.root
    proc = invoke("eval", "--base", "no-such-branch", cwd=root)
    assert proc.exit_code == 2
    assert "--base 'no-such-branch' is not a branch, tag or commit" in proc.stderr

    proc = invoke("eval", "--ref", "no-such-ref", cwd=root)
    assert proc.exit_code == 2 and "--ref 'no-such-ref'" in proc.stderr

    proc = invoke("eval", "--prompt", "nope", cwd=root)
    assert proc.exit_code == 2 and "No eval cases for prompt(s): nope" in proc.stderr

    proc = invoke("eval", "evals/nowhere", cwd=root)
    assert proc.exit_code == 2 and "evals/nowhere does not exist" in proc.stderr

    proc = invoke("eval", "--junit", "missing-dir/j.xml", cwd=root)
    assert proc.exit_code == 2 and "missing-dir" in proc.stderr
    assert stored_runs(feature) == 0, "a usage error runs nothing"

    broken = "name: broken\nassert:\n- type: containz\n  value: x\n"
    feature.write("evals/greet/broken.yaml", broken)
    proc = invoke("eval", cwd=root)
    assert proc.exit_code == 2
    assert "evals/greet/broken.yaml:3: unknown assertion type 'containz'" in proc.stderr
    assert "Traceback" not in proc.stderr

    feature.write("evals/greet/broken.yaml", "name: [unclosed\n")
    proc = invoke("eval", cwd=root)
    assert proc.exit_code == 2 and "evals/greet/broken.yaml:" in proc.stderr
    assert "YAML syntax error" in proc.stderr


def test_broken_llmkit_yaml_is_a_config_error(eval_repo: EvalRepo) -> None:
    eval_repo.write("llmkit.yaml", "models:\n  default: {}\n")
    proc = invoke("eval", "--json", "k.json", cwd=eval_repo.root)
    assert proc.exit_code == 2, proc.stdout
    assert "llmkit.yaml: alias 'default' needs a 'model' string" in proc.stderr
    assert not (eval_repo.root / "k.json").exists()


def test_unknown_option_is_a_usage_error(eval_repo: EvalRepo) -> None:
    proc = invoke("eval", "--no-such-flag", cwd=eval_repo.root)
    assert proc.exit_code == 2 and "No such option" in proc.stderr


def test_base_origin_main_in_a_clone(feature: EvalRepo, tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(feature.root), str(remote))
    git(tmp_path, "clone", "-q", str(remote), str(tmp_path / "clone"))
    clone = EvalRepo(tmp_path / "clone")
    clone.identify()
    clone.checkout("feature")
    assert clone.git("rev-parse", "origin/main") == feature.git("rev-parse", "main")
    assert clone.git("branch", "--list", "main") == ""  # only the remote-tracking branch

    proc = invoke("eval", "--base", "origin/main", "--json", "k.json", cwd=clone.root)
    assert proc.exit_code == 1, proc.stderr
    report = json.loads((clone.root / "k.json").read_text("utf-8"))
    assert report["base_ref"] == "origin/main"
    statuses = {n: c["status"] for n, c in cases_of(report).items()}
    assert statuses["says hello"] == "regression" and statuses["mentions goodbye"] == "fixed"


def test_ref_runs_that_refs_prompt_versions(feature: EvalRepo) -> None:
    proc = invoke(
        "eval", "--ref", "main", "--prompt", "greet", "--json", "k.json", cwd=feature.root
    )
    assert proc.exit_code == 1
    cases = cases_of(json.loads((feature.root / "k.json").read_text("utf-8")))
    assert {n: (c["after"]["version_number"], c["passed"]) for n, c in cases.items()} == {
        "says hello": (1, True),
        "mentions goodbye": (1, False),
        "asks who": (1, True),
    }

    # A prompt that does not exist at --ref is named, not silently left out.
    proc = invoke("eval", "--ref", "main", cwd=feature.root)
    assert proc.exit_code == 2 and "No prompt farewell at --ref main" in proc.stderr


def test_repeat_jobs_and_the_cache(feature: EvalRepo) -> None:
    root = feature.root
    proc = invoke(
        "eval", "-j", "1", "--repeat", "3", "--prompt", "chat", "--json", "k.json", cwd=root
    )
    assert proc.exit_code == 0, proc.stderr
    report = json.loads((root / "k.json").read_text("utf-8"))
    [case] = report["cases"]
    assert case["after"]["runs"] == 3 and case["after"]["passed_runs"] == 3
    assert sorted(r["repeat_index"] for r in case["runs"]) == [0, 1, 2]
    assert report["summary"]["cached_runs"] == 0
    assert [int(m.group(1)) for m in progress_lines(proc.stderr)] == [1, 2, 3]

    proc = invoke(
        "eval", "-j", "4", "--repeat", "3", "--prompt", "chat", "--json", "k.json", cwd=root
    )
    report = json.loads((root / "k.json").read_text("utf-8"))
    assert report["summary"]["cached_runs"] == 3
    assert "3/3 runs from cache" in proc.stdout

    proc = invoke(
        "eval", "--repeat", "3", "--prompt", "chat", "--no-cache", "--json", "k.json", cwd=root
    )
    report = json.loads((root / "k.json").read_text("utf-8"))
    assert report["summary"]["cached_runs"] == 0

    proc = invoke("eval", "-j", "0", cwd=root)
    assert proc.exit_code == 2


def test_paths_and_prompt_filter_the_cases(feature: EvalRepo) -> None:
    root = feature.root

    def names(*args: str) -> set[str]:
        proc = invoke("eval", *args, "--json", "k.json", cwd=root)
        assert proc.exit_code in (0, 1), proc.stderr
        return set(cases_of(json.loads((root / "k.json").read_text("utf-8"))))

    assert names("evals/chat") == {"passes the history through"}
    assert names("evals/greet/new.yaml") == {"asks who"}
    assert names("evals/greet/new.yaml", "evals/chat/history.yaml") == {
        "asks who",
        "passes the history through",
    }
    assert names("--prompt", "greet") == {"says hello", "mentions goodbye", "asks who"}
    assert names("--prompt", "greet", "--prompt", "farewell") == {
        "says hello",
        "mentions goodbye",
        "asks who",
        "says farewell",
    }
    assert names("--prompt", "greet", "evals/greet/cases.yaml") == {
        "says hello",
        "mentions goodbye",
    }
    proc = invoke("eval", "--prompt", "chat", "evals/greet", cwd=root)
    assert proc.exit_code == 2 and "No eval cases to run" in proc.stderr


def test_github_step_summary(feature: EvalRepo, tmp_path: Path) -> None:
    summary = tmp_path / "step-summary.md"
    summary.write_text("# Earlier step\n", "utf-8")
    proc = invoke(
        "eval",
        "--base",
        "main",
        "--markdown",
        "m.md",
        cwd=feature.root,
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert proc.exit_code == 1
    markdown = (feature.root / "m.md").read_text("utf-8")
    text = summary.read_text("utf-8")
    assert text.startswith("# Earlier step\n")
    assert text.count(markdown) == 1 and "🔻 regression" in text

    # --markdown pointed at the step summary itself is written there once.
    summary.write_text("", "utf-8")
    invoke(
        "eval",
        "--markdown",
        str(summary),
        cwd=feature.root,
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert summary.read_text("utf-8").count("## ❌ llmkit eval") == 1


def test_runs_land_in_durable_tables_that_a_rebuild_keeps(feature: EvalRepo) -> None:
    root = feature.root
    proc = invoke("eval", "--base", "main", cwd=root)
    assert proc.exit_code == 1
    [run] = feature.query("SELECT * FROM eval_runs")
    assert (run["ref"], run["base_ref"], run["source"]) == (None, "main", "cli")
    assert json.loads(run["summary"])["regressions"] == 1
    assert run["started_at"] <= run["finished_at"]
    rows = feature.query("SELECT * FROM eval_results ORDER BY id")
    assert {r["run_id"] for r in rows} == {run["run_id"]}
    after = {r["case_name"]: r for r in rows if r["role"] == "after"}
    before = {r["case_name"]: r for r in rows if r["role"] == "before"}
    assert set(after) == {
        "says hello",
        "mentions goodbye",
        "asks who",
        "says farewell",
        "passes the history through",
    }
    assert set(before) == set(after) - {"says farewell"}

    hello = after["says hello"]
    assert hello["prompt_key"] == "greet"
    assert (hello["version_number"], hello["version_sha"]) == (2, feature.head())
    assert (before["says hello"]["version_number"], before["says hello"]["version_sha"]) == (
        1,
        feature.git("rev-parse", "main"),
    )
    assert hello["model"] == "echo" and hello["passed"] == 0 and before["says hello"]["passed"] == 1
    assert hello["output"].startswith("system: You are a cheerful assistant. Say goodbye")
    [assertion] = json.loads(hello["assertions"])
    assert assertion["type"] == "contains" and assertion["passed"] is False
    assert "Always say hello." in assertion["reason"]
    for row in rows:
        assert row["latency_ms"] is not None and row["latency_ms"] >= 0
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0
        assert row["cost"] == 0.0
        assert row["file"].startswith("evals/") and row["cached"] in (0, 1)

    durable = ("eval_runs", "eval_results", "response_cache")
    snapshot = {t: feature.query(f"SELECT * FROM {t}") for t in durable}
    assert snapshot["response_cache"], "responses are cached"
    proc = invoke("index", "--rebuild", cwd=root)
    assert proc.exit_code == 0, proc.stderr
    assert {t: feature.query(f"SELECT * FROM {t}") for t in durable} == snapshot
