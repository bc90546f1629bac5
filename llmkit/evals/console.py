"""Eval results on the terminal: a table of the cases, the reasons failing runs failed, and a
line per finished run for CI logs.

Output that is not a terminal (a CI log, a pipe) is never wrapped or cut at 80 columns: a case
name or a reason is worth more whole than the log's tidiness.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from llmkit.evals.report import (
    FIGURE_COLUMNS,
    MARKS,
    MAX_DETAILED_FAILURES,
    figures,
    headline,
    runs_cell,
)
from llmkit.evals.results import (
    FAIL,
    FIXED,
    NEW,
    PASS,
    REGRESSION,
    CaseResult,
    EvalReport,
    failure_lines,
    rank,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

STYLES = {REGRESSION: "bold red", FIXED: "green", NEW: "cyan", PASS: "green", FAIL: "red"}
# The width rich lays tables out in when the output is not a terminal. Rich would otherwise
# take $COLUMNS or 80, and cut case names to fit; a table is only as wide as its cells need.
PLAIN_WIDTH = 4096


def make_console(file: TextIO | None = None) -> Console:
    """A rich Console for eval output on `file` (stdout by default): the terminal's width on a
    terminal, PLAIN_WIDTH anywhere else."""
    from rich.console import Console

    console = Console(file=file or sys.stdout)
    if not console.is_terminal:
        console.width = PLAIN_WIDTH
    return console


def run_label(result: CaseResult) -> str:
    """`prompt@version case`: which run of which case on which prompt version."""
    version = (
        "draft" if result.draft_blob else result.version_number or (result.version_sha or "?")[:7]
    )
    return f"{result.prompt_key}@{version} {result.case_name}"


def run_lines(result: CaseResult, done: int, total: int) -> list[str]:
    """The `done`th of `total` finished runs as log lines: `pass`/`FAIL` and the run, then,
    when it failed, each failing assertion and what it got, indented below."""
    mark = "pass" if result.passed else "FAIL"
    reasons = [] if result.passed else [f"    {line}" for line in failure_lines(result)]
    return [f"[{done}/{total}] {mark} {run_label(result)}", *reasons]


def failure_details(report: EvalReport) -> list[str]:
    """Why each failing case failed, regressions first: the case and where it is written, then
    every failing run with each failing assertion and what it got."""
    failed = sorted(report.failed, key=lambda c: (c.prompt_key, rank(c)))
    lines = []
    for case in failed[:MAX_DETAILED_FAILURES]:
        status = " (regression)" if case.status == REGRESSION else ""
        lines.append(f"FAIL {case.prompt_key} › {case.case_name} ({case.where}){status}")
        for result in case.after.results:
            if not result.passed:
                lines.append(f"  run {result.repeat_index + 1} ({result.model}):")
                lines += [f"    {line}" for line in failure_lines(result)]
    if len(failed) > MAX_DETAILED_FAILURES:
        more = len(failed) - MAX_DETAILED_FAILURES
        lines.append(f"… and {more} more failing cases (see --json or --markdown)")
    return lines


def print_report(console: Console, report: EvalReport, run_id: str) -> None:
    """The table, the reasons of the failures, and a line of totals."""
    console.print(render_table(report))
    for line in failure_details(report):
        # Reasons quote model output: printed as they are, never read as markup or wrapped.
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    counts = report.counts()
    console.print(
        f"{counts['passed']}/{counts['cases']} cases passed, {counts['regressions']} regression(s),"
        f" {counts['cached_runs']}/{counts['runs']} runs from cache (run {run_id[:12]})",
        highlight=False,
    )


def render_table(report: EvalReport, max_rows: int = 50) -> Table:
    """A rich Table of the cases, regressions first; cells are plain text, never markup.
    Past `max_rows` cases, passing ones are folded into one row per prompt (the reports
    written to files still list every case)."""
    from rich.table import Table
    from rich.text import Text

    mark = "✅" if report.ok else "❌"
    table = Table(title=f"{mark} {headline(report)}", title_justify="left")
    before = ["Before"] if report.compared else []
    for column in ["", "Prompt", "Case", *before, "Runs passed"]:
        table.add_column(column)
    for column in FIGURE_COLUMNS:
        table.add_column(column, justify="right")
    fold = len(report.cases) > max_rows
    blanks = len(before) + 1 + len(FIGURE_COLUMNS)
    for prompt in report.prompts():
        shown = [c for c in prompt.cases if not (fold and c.status == PASS)]
        for case in shown:
            cells = [
                f"{MARKS[case.status]} {case.status}",
                case.prompt_key,
                case.case_name,
                *([runs_cell(case.before)] if report.compared else []),
                runs_cell(case.after),
                *figures(case.before, case.after),
            ]
            table.add_row(*(Text(cell) for cell in cells), style=STYLES[case.status])
        folded = len(prompt.cases) - len(shown)
        if folded:
            cells = [
                f"{MARKS[PASS]} {PASS}",
                prompt.prompt_key,
                f"{folded} passing cases",
                *[""] * blanks,
            ]
            table.add_row(*(Text(cell) for cell in cells), style=STYLES[PASS])
    return table
