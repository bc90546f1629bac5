"""`llmkit eval` on the console: why a case failed is shown where it is read (the table's
output and the progress lines), and nothing is cut to fit an 80-column CI log."""

from __future__ import annotations

import io
import re

from llmkit.evals.asserts import AssertionResult, Outcome
from llmkit.evals.console import PLAIN_WIDTH, make_console, print_report
from llmkit.evals.results import CaseResult, build_report
from tests.eval_fixtures import EvalRepo
from tests.helpers import invoke

LONG_NAME = "never promises a refund, even when the customer asks three times and mentions a lawyer"
LONG_CASE = f"""\
name: {LONG_NAME}
vars:
  personality: cheerful
user_vars:
  question: Who are you?
assert:
- type: contains
  value: I promise a refund
"""


def test_failures_show_the_assertion_and_what_was_got_in_a_narrow_ci_log(
    eval_repo: EvalRepo,
) -> None:
    eval_repo.write("evals/greet/long.yaml", LONG_CASE)
    proc = invoke("eval", "--prompt", "greet", cwd=eval_repo.root, env={"COLUMNS": "40"})
    assert proc.exit_code == 1, proc.stderr
    out = proc.stdout.splitlines()

    # The table keeps the whole name on one row, however narrow $COLUMNS is.
    assert any(LONG_NAME in line and "fail" in line for line in out), proc.stdout
    assert max(len(line) for line in out) > 80

    # After the table: the case, where it is written, and the failing assertion with what it got.
    heading = f"FAIL greet › {LONG_NAME} (evals/greet/long.yaml:1)"
    at = out.index(heading)
    assert out[at + 1] == "  run 1 (echo):"
    reason = out[at + 2]
    assert reason.startswith("    contains: expected ")
    assert "'I promise a refund'" in reason and "got " in reason
    assert "FAIL greet › mentions goodbye (evals/greet/cases.yaml:10)" in out
    assert not any(line.startswith("FAIL greet › says hello") for line in out)
    assert "1/3 cases passed, 0 regression(s)" in proc.stdout

    # Each FAIL progress line on stderr is followed by its reasons, indented.
    err = proc.stderr.splitlines()
    fail = next(i for i, line in enumerate(err) if line.endswith(f"FAIL greet@1 {LONG_NAME}"))
    assert re.match(r"^\[\d/3\] FAIL greet@1 ", err[fail])
    assert err[fail + 1] == reason
    passed = next(i for i, line in enumerate(err) if line.endswith(" pass greet@1 says hello"))
    assert passed + 1 == len(err) or err[passed + 1].startswith("[")


def result(name: str, reason: str, *, error: str | None = None) -> CaseResult:
    outcome = Outcome(text="", error=error)
    assertions = [] if error else [AssertionResult("contains", False, 0.0, reason)]
    return CaseResult(
        "support-chat",
        name,
        "evals/support-chat/cases.yaml",
        7,
        3,
        "abc1234",
        "default",
        0,
        outcome,
        assertions,
        False,
    )


def test_the_console_prints_reasons_as_text_never_as_markup_and_never_wrapped() -> None:
    out = io.StringIO()
    console = make_console(out)
    assert console.width == PLAIN_WIDTH and not console.is_terminal
    reason = "expected output to contain '[bold]x[/bold]', got '" + "y" * 300 + "'"
    report = build_report([result("[red]case[/red]", reason), result("down", "", error="timeout")])
    print_report(console, report, "0123456789abcdef")
    lines = out.getvalue().splitlines()
    assert "FAIL support-chat › [red]case[/red] (evals/support-chat/cases.yaml:7)" in lines
    assert f"    contains: {reason}" in lines
    assert "    error: timeout" in lines
    assert lines[-1] == "0/2 cases passed, 0 regression(s), 0/2 runs from cache (run 0123456789ab)"
