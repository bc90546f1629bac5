"""What the eval pages show, computed from the core's objects: a case as its file writes it,
stored runs compared case by case with the code `llmkit eval --base` reports with, and a score
as a form sends it. Plain functions over plain data, so they are tested without a browser."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from llmkit.errors import BadRequest
from llmkit.evals.asserts import assertion_to_dict
from llmkit.evals.case_yaml import to_yaml
from llmkit.evals.cases import EvalCase, Problem, prompt_key_from_path
from llmkit.evals.records import stored_result
from llmkit.evals.report import headline
from llmkit.evals.results import (
    FAIL,
    FIXED,
    NEW,
    PASS,
    REGRESSION,
    CaseComparison,
    EvalReport,
    RunStats,
    build_report,
    failure_lines,
)

# What changed for a case, in the words of the before/after table.
CHANGES = {
    REGRESSION: "newly failing",
    FIXED: "fixed",
    NEW: "new case",
    PASS: "unchanged: passes",
    FAIL: "unchanged: fails",
}
# A score as typed: a whole number is passed on as one; anything else as the text, which the
# core refuses by name. Long enough for any int the core could be asked about, short enough
# that int() never parses a huge number.
SCORE_RE = re.compile(r"[+-]?[0-9]{1,12}")
SHOWN_SCORE_TEXT = 40


def stamp(text: str | None) -> str:
    """A stored ISO-8601 time as a person reads it: `2026-01-31 09:30:00 UTC`."""
    if not text:
        return "—"
    return text.replace("T", " ").split(".")[0].removesuffix("Z") + " UTC"


def money(cost: float) -> str:
    """A cost in USD without trailing zeros: `$0.00042`, `$0`."""
    return "$" + (f"{cost:.6f}".rstrip("0").rstrip(".") or "0")


def version_name(number: int | None, sha: str | None, draft: bool = False) -> str:
    """`v3`, `draft`, or a commit's short sha when it has no number here."""
    if draft:
        return "draft"
    if number is not None:
        return f"v{number}"
    return sha[:7] if sha else "?"


def run_name(run: dict[str, Any]) -> str:
    """A run as a select lists it: version, when, who started it, its id's start."""
    version = version_name(run["version_number"], run["version_sha"], run["draft"])
    return f"{version} · {stamp(run['started_at'])} · {run['source']} · {run['run_id'][:8]}"


def score_value(text: str | None) -> Any:
    """The score a form sent, as the API's JSON body would carry it: an integer when the field
    holds a whole number, else the text as typed, which the core's check refuses by name."""
    typed = (text or "").strip()
    if not typed:
        raise BadRequest("No score chosen: pick a score from 1 to 5", param="score")
    if SCORE_RE.fullmatch(typed):
        return int(typed)
    return typed[:SHOWN_SCORE_TEXT]


# -- cases ------------------------------------------------------------------------------------


@dataclass
class CaseView:
    """One case as its eval file writes it."""

    name: str
    where: str
    description: str | None
    settings: list[tuple[str, str]]  # model, repeat, threshold when not the defaults
    variables: list[tuple[str, str]]
    user_variables: list[tuple[str, str]]
    input: str | None
    messages: list[tuple[str, str]]
    assertions: list[str]


def _yaml_value(value: Any) -> str:
    if isinstance(value, str) and "\n" not in value:
        return value
    return to_yaml(value).strip().removesuffix("\n...").removesuffix("...").strip()


def case_view(case: EvalCase) -> CaseView:
    settings = [
        (name, str(value))
        for name, value, default in (
            ("model", case.model, None),
            ("repeat", case.repeat, 1),
            ("threshold", case.threshold, 1.0),
        )
        if value != default
    ]
    user_text = case.user_text
    messages = [] if user_text is not None else case.messages
    return CaseView(
        name=case.name,
        where=f"{case.file}:{case.line}" if case.line else case.file,
        description=case.description,
        settings=settings,
        variables=[(str(k), _yaml_value(v)) for k, v in case.vars.items()],
        user_variables=[(str(k), _yaml_value(v)) for k, v in case.user_vars.items()],
        input=user_text,
        messages=[(str(m.get("role", "")), _yaml_value(m.get("content", ""))) for m in messages],
        assertions=[to_yaml([assertion_to_dict(a)]).strip() for a in case.assertions],
    )


def problems_of(problems: list[Problem], prompt_key: str | None = None) -> list[Problem]:
    """The problems of eval files (of one prompt's folder, when given), errors first."""
    chosen = [
        p for p in problems if prompt_key is None or prompt_key_from_path(p.path) == prompt_key
    ]
    return sorted(chosen, key=lambda p: (p.severity != "error", p.path, p.line or 0))


# -- the prompts with evals -------------------------------------------------------------------


@dataclass
class PromptEvals:
    """A prompt of the evals list: its cases, its files' problems, its latest run."""

    key: str
    cases: int = 0
    problems: int = 0
    latest: dict[str, Any] | None = None


def prompts_with_evals(
    cases: list[EvalCase], problems: list[Problem], runs: list[dict[str, Any]]
) -> list[PromptEvals]:
    """Every prompt with eval cases or recorded runs, by key, with its latest run (`runs`:
    the latest of each prompt, or every run newest first)."""
    found: dict[str, PromptEvals] = {}
    for case in cases:
        found.setdefault(case.prompt_key, PromptEvals(case.prompt_key)).cases += 1
    for problem in problems:
        key = prompt_key_from_path(problem.path)
        if key is not None and problem.severity == "error":
            found.setdefault(key, PromptEvals(key)).problems += 1
    for run in runs:
        row = found.setdefault(run["prompt_key"], PromptEvals(run["prompt_key"]))
        if row.latest is None:
            row.latest = run
    return [found[key] for key in sorted(found)]


# -- before and after -------------------------------------------------------------------------


@dataclass
class Side:
    """One side of a case in the table: whether it passed, and why its failing runs failed."""

    version: str
    passed: bool
    passed_runs: int
    runs: int
    reasons: list[str]
    outputs: list[str]


@dataclass
class ChangeRow:
    case_name: str
    status: str
    change: str
    before: Side | None
    after: Side


@dataclass
class Comparison:
    """Two stored sides of a prompt's cases, compared as `llmkit eval --base` compares them."""

    before_label: str
    after_label: str
    report: EvalReport
    rows: list[ChangeRow] = field(default_factory=list)

    @property
    def headline(self) -> str:
        return headline(self.report)

    def count(self, status: str) -> int:
        return len(self.report.with_status(status))


def _side(stats: RunStats) -> Side:
    return Side(
        version=stats.version_label,
        passed=stats.passed,
        passed_runs=stats.passed_runs,
        runs=stats.runs,
        reasons=[line for r in stats.results if not r.passed for line in failure_lines(r)],
        outputs=[r.outcome.error or r.outcome.text for r in stats.results],
    )


def _row(case: CaseComparison) -> ChangeRow:
    before = _side(case.before) if case.before is not None else None
    return ChangeRow(case.case_name, case.status, CHANGES[case.status], before, _side(case.after))


def compare(
    before_rows: list[dict[str, Any]],
    after_rows: list[dict[str, Any]],
    cases: list[EvalCase],
    *,
    before_label: str,
    after_label: str,
) -> Comparison:
    """Stored results (rows of one prompt) compared case by case: `build_report`, the code
    `llmkit eval --base` reports with, over the results as the runner made them. Newly failing
    cases come first, then the other failures, fixed and new cases, then the passes."""
    by_name = {case.name: case for case in cases}
    before = [stored_result(row, by_name.get(row["case_name"])) for row in before_rows]
    after = [stored_result(row, by_name.get(row["case_name"])) for row in after_rows]
    report = build_report(after, before, before_label)
    comparison = Comparison(before_label, after_label, report)
    for prompt in report.prompts():
        comparison.rows.extend(_row(case) for case in prompt.cases)
    return comparison
