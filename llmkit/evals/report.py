"""Eval reports: the runs of every case, compared with a base ref's, written as JUnit XML, JSON,
a markdown summary for a pull request and a rich table for the terminal.

The runner collects one CaseResult per run (case x repeat), on the current prompt versions and,
with `--base`, on the base ref's, then calls `build_report(results, base_results, base_ref)` and
hands the EvalReport to the writers.
"""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from llmkit.evals.asserts import AssertionResult, Outcome, meets_threshold, run_passed
from llmkit.evals.spec import EvalCase

if TYPE_CHECKING:
    from rich.table import Table

REGRESSION, FIXED, NEW, PASS, FAIL = "regression", "fixed", "new", "pass", "fail"
_MARKS = {REGRESSION: "🔻", FIXED: "✨", NEW: "🆕", PASS: "✅", FAIL: "❌"}
_STYLES = {REGRESSION: "bold red", FIXED: "green", NEW: "cyan", PASS: "green", FAIL: "red"}
MAX_DETAILED_FAILURES = 100


@dataclass
class CaseResult:
    """One run of one case on one prompt version."""

    prompt_key: str
    case_name: str
    file: str
    line: int | None
    version_number: int | None
    version_sha: str | None
    model: str
    repeat_index: int
    outcome: Outcome
    assertions: list[AssertionResult]
    passed: bool
    cached: bool = False
    threshold: float = 1.0
    draft_blob: str | None = None  # a draft (no number, no sha): the blob id of its text

    @classmethod
    def of(
        cls,
        case: EvalCase,
        outcome: Outcome,
        assertions: list[AssertionResult],
        *,
        version_number: int | None,
        version_sha: str | None,
        model: str,
        repeat_index: int = 0,
        cached: bool = False,
        draft_blob: str | None = None,
    ) -> CaseResult:
        """The result of running `case` once; `passed` follows the case's threshold."""
        return cls(
            case.prompt_key, case.name, case.file, case.line, version_number, version_sha, model,
            repeat_index, outcome, assertions, run_passed(outcome, assertions, case.threshold),
            cached, case.threshold, draft_blob,
        )

    @property
    def failed_assertions(self) -> list[AssertionResult]:
        return [a for a in self.assertions if not a.passed]


class RunStats:
    """Figures over a set of runs: one case's repeats, or all runs of a prompt."""

    def __init__(self, results: list[CaseResult]) -> None:
        self.results = results

    @property
    def runs(self) -> int:
        return len(self.results)

    @property
    def passed_runs(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def pass_rate(self) -> float:
        return self.passed_runs / self.runs if self.runs else 0.0

    @property
    def passed(self) -> bool:
        """Whether the case passes: enough of its repeats pass (its threshold)."""
        return bool(self.results) and meets_threshold(self.pass_rate, self.results[0].threshold)

    @property
    def errored(self) -> bool:
        """Every failing run failed on a call error, not on an assertion."""
        failing = [r for r in self.results if not r.passed]
        return bool(failing) and all(r.outcome.error is not None for r in failing)

    @property
    def cached_runs(self) -> int:
        return sum(r.cached for r in self.results)

    @property
    def mean_latency_ms(self) -> float | None:
        return fmean(r.outcome.latency_ms for r in self.results) if self.results else None

    @property
    def mean_input_tokens(self) -> float | None:
        return fmean(r.outcome.input_tokens for r in self.results) if self.results else None

    @property
    def mean_output_tokens(self) -> float | None:
        return fmean(r.outcome.output_tokens for r in self.results) if self.results else None

    @property
    def total_cost(self) -> float | None:
        """The cost of the runs whose cost is known; None if no run's is."""
        costs = [r.outcome.cost for r in self.results if r.outcome.cost is not None]
        return sum(costs) if costs else None

    @property
    def version_label(self) -> str:
        first = self.results[0] if self.results else None
        if first is not None and first.draft_blob is not None:
            return "draft"
        if first is None or first.version_number is None:
            return "?"
        return f"v{first.version_number}"

    def to_dict(self) -> dict[str, Any]:
        first = self.results[0] if self.results else None
        return {
            "version_number": first.version_number if first else None,
            "version_sha": first.version_sha if first else None,
            "draft_blob": first.draft_blob if first else None,
            "model": first.model if first else None,
            "runs": self.runs,
            "passed_runs": self.passed_runs,
            "pass_rate": self.pass_rate,
            "passed": self.passed,
            "cached_runs": self.cached_runs,
            "mean_latency_ms": self.mean_latency_ms,
            "mean_input_tokens": self.mean_input_tokens,
            "mean_output_tokens": self.mean_output_tokens,
            "total_cost": self.total_cost,
        }


@dataclass
class CaseComparison:
    """One case: its runs now (`after`) and, with a base ref, on the base version (`before`)."""

    prompt_key: str
    case_name: str
    file: str
    line: int | None
    after: RunStats
    before: RunStats | None
    status: str

    @property
    def passed(self) -> bool:
        return self.after.passed

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


def _status(after: RunStats, before: RunStats | None, compared: bool) -> str:
    if compared and before is None:
        return NEW
    if before is not None and before.passed != after.passed:
        return FIXED if after.passed else REGRESSION
    return PASS if after.passed else FAIL


def _rank(case: CaseComparison) -> tuple[int, str, int]:
    """Regressions, then other failures, then fixed and new cases, then passes."""
    if case.status == REGRESSION:
        order = 0
    elif not case.passed:
        order = 1
    else:
        order = 3 if case.status == PASS else 2
    return order, case.file, case.line or 0


@dataclass
class PromptSummary:
    prompt_key: str
    cases: list[CaseComparison]

    @property
    def after(self) -> RunStats:
        return RunStats([r for c in self.cases for r in c.after.results])

    @property
    def before(self) -> RunStats | None:
        befores = [c.before for c in self.cases if c.before is not None]
        return RunStats([r for b in befores for r in b.results]) if befores else None


@dataclass
class EvalReport:
    cases: list[CaseComparison]
    base_ref: str | None = None
    compared: bool = False

    def with_status(self, status: str) -> list[CaseComparison]:
        return [c for c in self.cases if c.status == status]

    @property
    def regressions(self) -> list[CaseComparison]:
        return self.with_status(REGRESSION)

    @property
    def failed(self) -> list[CaseComparison]:
        return [c for c in self.cases if not c.passed]

    @property
    def ok(self) -> bool:
        """Every case passes now (so there is no regression either)."""
        return not self.failed

    def counts(self) -> dict[str, int]:
        runs = [r for c in self.cases for r in c.after.results]
        return {
            "cases": len(self.cases),
            "passed": len(self.cases) - len(self.failed),
            "failed": len(self.failed),
            "regressions": len(self.regressions),
            "fixed": len(self.with_status(FIXED)),
            "new": len(self.with_status(NEW)),
            "runs": len(runs),
            "cached_runs": sum(r.cached for r in runs),
        }

    def prompts(self) -> list[PromptSummary]:
        """Cases grouped by prompt; in each, regressions first, then other failures."""
        keys = sorted({c.prompt_key for c in self.cases})
        return [
            PromptSummary(key, sorted((c for c in self.cases if c.prompt_key == key), key=_rank))
            for key in keys
        ]


def _group(results: list[CaseResult]) -> dict[tuple[str, str], list[CaseResult]]:
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for result in results:
        groups.setdefault((result.prompt_key, result.case_name), []).append(result)
    for runs in groups.values():
        runs.sort(key=lambda r: r.repeat_index)
    return groups


def build_report(
    results: list[CaseResult],
    base_results: list[CaseResult] | None = None,
    base_ref: str | None = None,
) -> EvalReport:
    """Compare `results` with `base_results` (the same cases run on the base ref's prompt
    versions; a case with no base runs is new). Without a base, cases only pass or fail."""
    compared = base_results is not None
    base = _group(base_results or [])
    cases = []
    for key, runs in _group(results).items():
        before = RunStats(base[key]) if key in base else None
        after = RunStats(runs)
        first = runs[0]
        status = _status(after, before, compared)
        cases.append(CaseComparison(first.prompt_key, first.case_name, first.file, first.line,
                                    after, before, status))
    return EvalReport(cases, base_ref, compared)


# --- formatting figures ------------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _cost(value: float | None) -> str:
    return "—" if value is None else (f"{value:.6f}".rstrip("0").rstrip(".") or "0")


def _change(
    before: float | None, after: float | None, fmt: Callable[[float | None], str]
) -> str:
    if before is None:
        return fmt(after)
    if after is None:
        return f"{fmt(before)} → —"
    return f"{fmt(before)} → {fmt(after)} ({_signed(after - before, fmt)})"


def _signed(delta: float, fmt: Callable[[float], str]) -> str:
    """`+3`, `−3`, or `±0` when the change does not show at this precision."""
    shown = fmt(abs(delta))
    return ("±" if shown == fmt(0.0) else "+" if delta > 0 else "−") + shown


_FIGURE_COLUMNS = ("Latency (ms)", "Output tokens", "Cost (USD)")


def _figures(before: RunStats | None, after: RunStats) -> list[str]:
    """Latency, output tokens and cost, as `before → after (delta)` when there is a before."""
    return [
        _change(before.mean_latency_ms if before else None, after.mean_latency_ms, _number),
        _change(before.mean_output_tokens if before else None, after.mean_output_tokens, _number),
        _change(before.total_cost if before else None, after.total_cost, _cost),
    ]


def _runs(stats: RunStats | None) -> str:
    if stats is None:
        return "—"
    return f"{'✅' if stats.passed else '❌'} {stats.passed_runs}/{stats.runs}"


def _rate_change(before: RunStats | None, after: RunStats) -> str:
    if before is None:
        return "—"
    return _signed((after.pass_rate - before.pass_rate) * 100, lambda x: f"{x:.0f}") + " pp"


def _headline(report: EvalReport) -> str:
    counts = report.counts()
    parts = [f"{counts['passed']}/{counts['cases']} cases passed"]
    for name in ("regressions", "fixed", "new"):
        if counts[name]:
            label = "regression" if name == "regressions" and counts[name] == 1 else name
            parts.append(f"{counts[name]} {label}")
    if counts["cached_runs"]:
        parts.append(f"{counts['cached_runs']} of {counts['runs']} runs from cache")
    return " · ".join(parts)


def _failure_lines(result: CaseResult) -> list[str]:
    """One line per reason a run failed."""
    if result.outcome.error is not None and not result.assertions:
        return [f"error: {result.outcome.error}"]
    return [f"{a.type}: {a.reason}" for a in result.failed_assertions]


# --- markdown ----------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~$&])")


def _md(text: str) -> str:
    """Plain text made safe for one markdown line or table cell: no markup, no HTML."""
    return _MD_SPECIAL.sub(r"\\\1", re.sub(r"\s*[\r\n]+\s*", " ", text))


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _md_prompt(prompt: PromptSummary, compared: bool) -> list[str]:
    before, after_label = prompt.before, prompt.after.version_label
    if before is None:
        versions = after_label
    elif before.version_label == after_label:
        versions = f"{after_label} (unchanged)"
    else:
        versions = f"{before.version_label} → {after_label}"
    lines = [f"### {_md(prompt.prompt_key)} · {versions}", ""]
    if compared:
        header = ["", "Case", "Before", "After", "Δ pass rate", *_FIGURE_COLUMNS]
    else:
        header = ["", "Case", "Runs passed", *_FIGURE_COLUMNS]
    lines += [_md_row(header), "|" + "---|" * len(header)]
    for case in prompt.cases:
        name = _md(case.case_name)
        cells = [f"{_MARKS[case.status]} {case.status}",
                 f"**{name}**" if case.status == REGRESSION else name]
        if compared:
            cells += [_runs(case.before), _runs(case.after), _rate_change(case.before, case.after)]
        else:
            cells.append(_runs(case.after))
        lines.append(_md_row([*cells, *_figures(case.before, case.after)]))
    # The totals row counts cases, not runs; its figures are over all runs.
    passed_now = f"{sum(c.passed for c in prompt.cases)}/{len(prompt.cases)} cases"
    cells = ["", "**all cases**"]
    if compared:
        had_base = [c.before for c in prompt.cases if c.before is not None]
        passed_before = f"{sum(b.passed for b in had_base)}/{len(had_base)} cases"
        cells += [passed_before if had_base else "—", passed_now, ""]
    else:
        cells.append(passed_now)
    lines.append(_md_row([*cells, *_figures(before, prompt.after)]))
    return [*lines, ""]


def _md_failures(report: EvalReport) -> list[str]:
    failed = sorted(report.failed, key=lambda c: (c.prompt_key, _rank(c)))
    lines = ["<details>", f"<summary>Failures ({len(failed)})</summary>", ""]
    for case in failed[:MAX_DETAILED_FAILURES]:
        status = " — **regression**" if case.status == REGRESSION else ""
        lines.append(f"**{_md(case.prompt_key)} › {_md(case.case_name)}** "
                     f"({_md(case.where)}){status}")
        lines.append("")
        for result in case.after.results:
            if result.passed:
                continue
            version = RunStats([result]).version_label
            lines.append(f"- run {result.repeat_index + 1} · {_md(result.model)} · {version}")
            lines += [f"  - {_md(line)}" for line in _failure_lines(result)]
        lines.append("")
    if len(failed) > MAX_DETAILED_FAILURES:
        lines += [f"… and {len(failed) - MAX_DETAILED_FAILURES} more failing cases "
                  "(see the JSON report).", ""]
    return [*lines, "</details>", ""]


def render_markdown(report: EvalReport, title: str = "llmkit eval") -> str:
    """A summary for a pull request or $GITHUB_STEP_SUMMARY: a headline, regressions first,
    a table per prompt (before → after with a base ref) and collapsed failure details."""
    mark = "✅" if report.ok else "❌"
    lines = [f"## {mark} {_md(title)}: {_headline(report)}", ""]
    if not report.cases:
        return "\n".join([*lines, "No eval cases ran.", ""])
    if report.compared:
        base = _md(report.base_ref or "the base ref")
        lines += [f"Before: prompt versions on {base}. After: this change.", ""]
    if report.regressions:
        lines += ["**Regressions** (passed before, fail now):", ""]
        lines += [f"- {_MARKS[REGRESSION]} **{_md(c.prompt_key)} › {_md(c.case_name)}** "
                  f"({_md(c.where)})" for c in report.regressions]
        lines.append("")
    for prompt in report.prompts():
        lines += _md_prompt(prompt, report.compared)
    if report.failed:
        lines += _md_failures(report)
    return "\n".join(lines)


# --- JUnit XML -----------------------------------------------------------------------------

# Characters XML 1.0 cannot hold, which model output may contain.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _seconds(stats: RunStats) -> str:
    return f"{sum(r.outcome.latency_ms for r in stats.results) / 1000:.3f}"


def _junit_case(suite: ET.Element, case: CaseComparison, base_ref: str | None) -> None:
    element = ET.SubElement(suite, "testcase", name=_xml(case.case_name),
                            classname=_xml(case.prompt_key), file=_xml(case.file),
                            time=_seconds(case.after))
    if case.line:
        element.set("line", str(case.line))
    if case.passed:
        return
    stats = case.after
    reasons = [(r, line) for r in stats.results if not r.passed for line in _failure_lines(r)]
    summary = f"{stats.passed_runs}/{stats.runs} runs passed"
    if case.status == REGRESSION:
        summary = f"regression (passed on {base_ref or 'the base ref'}): {summary}"
    if reasons:
        summary += f"; {reasons[0][1]}"
    details = "\n".join(f"run {r.repeat_index + 1} ({r.model}): {line}" for r, line in reasons)
    failure = ET.SubElement(element, "error" if stats.errored else "failure",
                            message=_xml(summary), type=case.status)
    failure.text = _xml(details)


def write_junit(path: Path | str, report: EvalReport) -> None:
    """JUnit XML: a testsuite per prompt and a testcase per case (its repeats together)."""
    counts = report.counts()
    errors = sum(1 for c in report.failed if c.after.errored)
    root = ET.Element("testsuites", name="llmkit eval", tests=str(counts["cases"]),
                      failures=str(counts["failed"] - errors), errors=str(errors))
    for prompt in report.prompts():
        failed = [c for c in prompt.cases if not c.passed]
        prompt_errors = sum(1 for c in failed if c.after.errored)
        suite = ET.SubElement(root, "testsuite", name=_xml(prompt.prompt_key),
                              tests=str(len(prompt.cases)),
                              failures=str(len(failed) - prompt_errors),
                              errors=str(prompt_errors), skipped="0", time=_seconds(prompt.after))
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="version", value=prompt.after.version_label)
        if prompt.before is not None:
            ET.SubElement(properties, "property", name="base_version",
                          value=prompt.before.version_label)
        for case in prompt.cases:
            _junit_case(suite, case, report.base_ref)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


# --- JSON --------------------------------------------------------------------------------------


def report_to_dict(report: EvalReport) -> dict[str, Any]:
    """Everything in the report as JSON-ready data, every run included."""
    cases = []
    for case in report.cases:
        cases.append({
            "prompt_key": case.prompt_key,
            "case_name": case.case_name,
            "file": case.file,
            "line": case.line,
            "status": case.status,
            "passed": case.passed,
            "after": case.after.to_dict(),
            "before": case.before.to_dict() if case.before else None,
            "runs": [dataclasses.asdict(r) for r in case.after.results],
            "base_runs": [dataclasses.asdict(r) for r in case.before.results]
            if case.before else [],
        })
    return {
        "ok": report.ok,
        "base_ref": report.base_ref,
        "compared": report.compared,
        "summary": report.counts(),
        "cases": cases,
    }


def write_json(path: Path | str, report: EvalReport) -> None:
    text = json.dumps(report_to_dict(report), indent=2, ensure_ascii=False, default=str)
    Path(path).write_text(text + "\n", encoding="utf-8")


# --- terminal ----------------------------------------------------------------------------------


def render_table(report: EvalReport, max_rows: int = 50) -> Table:
    """A rich Table of the cases, regressions first; cells are plain text, never markup.
    Past `max_rows` cases, passing ones are folded into one row per prompt (the reports
    written to files still list every case)."""
    from rich.table import Table
    from rich.text import Text

    mark = "✅" if report.ok else "❌"
    table = Table(title=f"{mark} {_headline(report)}", title_justify="left")
    before = ["Before"] if report.compared else []
    for column in ["", "Prompt", "Case", *before, "Runs passed"]:
        table.add_column(column)
    for column in _FIGURE_COLUMNS:
        table.add_column(column, justify="right")
    fold = len(report.cases) > max_rows
    blanks = len(before) + 1 + len(_FIGURE_COLUMNS)
    for prompt in report.prompts():
        shown = [c for c in prompt.cases if not (fold and c.status == PASS)]
        for case in shown:
            cells = [
                f"{_MARKS[case.status]} {case.status}", case.prompt_key, case.case_name,
                *([_runs(case.before)] if report.compared else []), _runs(case.after),
                *_figures(case.before, case.after),
            ]
            table.add_row(*(Text(cell) for cell in cells), style=_STYLES[case.status])
        folded = len(prompt.cases) - len(shown)
        if folded:
            cells = [f"{_MARKS[PASS]} {PASS}", prompt.prompt_key, f"{folded} passing cases", *[""] * blanks]
            table.add_row(*(Text(cell) for cell in cells), style=_STYLES[PASS])
    return table
