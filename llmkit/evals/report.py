"""Eval reports written to files: JUnit XML, JSON and a markdown summary for a pull request,
and the wording they share with the terminal (`console`): status marks, figures, headline.
"""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmkit.evals.results import (
    FAIL,
    FIXED,
    NEW,
    PASS,
    REGRESSION,
    CaseComparison,
    EvalReport,
    PromptSummary,
    RunStats,
    failure_lines,
    rank,
)

MARKS = {REGRESSION: "🔻", FIXED: "✨", NEW: "🆕", PASS: "✅", FAIL: "❌"}
MAX_DETAILED_FAILURES = 100

# --- formatting figures ------------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _cost(value: float | None) -> str:
    return "—" if value is None else (f"{value:.6f}".rstrip("0").rstrip(".") or "0")


def _change(before: float | None, after: float | None, fmt: Callable[[float | None], str]) -> str:
    if before is None:
        return fmt(after)
    if after is None:
        return f"{fmt(before)} → —"
    return f"{fmt(before)} → {fmt(after)} ({_signed(after - before, fmt)})"


def _signed(delta: float, fmt: Callable[[float], str]) -> str:
    """`+3`, `−3`, or `±0` when the change does not show at this precision."""
    shown = fmt(abs(delta))
    return ("±" if shown == fmt(0.0) else "+" if delta > 0 else "−") + shown


FIGURE_COLUMNS = ("Latency (ms)", "Output tokens", "Cost (USD)")


def figures(before: RunStats | None, after: RunStats) -> list[str]:
    """Latency, output tokens and cost, as `before → after (delta)` when there is a before."""
    return [
        _change(before.mean_latency_ms if before else None, after.mean_latency_ms, _number),
        _change(before.mean_output_tokens if before else None, after.mean_output_tokens, _number),
        _change(before.total_cost if before else None, after.total_cost, _cost),
    ]


def runs_cell(stats: RunStats | None) -> str:
    if stats is None:
        return "—"
    return f"{'✅' if stats.passed else '❌'} {stats.passed_runs}/{stats.runs}"


def _rate_change(before: RunStats | None, after: RunStats) -> str:
    if before is None:
        return "—"
    return _signed((after.pass_rate - before.pass_rate) * 100, lambda x: f"{x:.0f}") + " pp"


def headline(report: EvalReport) -> str:
    counts = report.counts()
    parts = [f"{counts['passed']}/{counts['cases']} cases passed"]
    for name in ("regressions", "fixed", "new"):
        if counts[name]:
            label = "regression" if name == "regressions" and counts[name] == 1 else name
            parts.append(f"{counts[name]} {label}")
    if counts["cached_runs"]:
        parts.append(f"{counts['cached_runs']} of {counts['runs']} runs from cache")
    return " · ".join(parts)


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
        header = ["", "Case", "Before", "After", "Δ pass rate", *FIGURE_COLUMNS]
    else:
        header = ["", "Case", "Runs passed", *FIGURE_COLUMNS]
    lines += [_md_row(header), "|" + "---|" * len(header)]
    for case in prompt.cases:
        name = _md(case.case_name)
        cells = [
            f"{MARKS[case.status]} {case.status}",
            f"**{name}**" if case.status == REGRESSION else name,
        ]
        if compared:
            rate = _rate_change(case.before, case.after)
            cells += [runs_cell(case.before), runs_cell(case.after), rate]
        else:
            cells.append(runs_cell(case.after))
        lines.append(_md_row([*cells, *figures(case.before, case.after)]))
    # The totals row counts cases, not runs; its figures are over all runs.
    passed_now = f"{sum(c.passed for c in prompt.cases)}/{len(prompt.cases)} cases"
    cells = ["", "**all cases**"]
    if compared:
        had_base = [c.before for c in prompt.cases if c.before is not None]
        passed_before = f"{sum(b.passed for b in had_base)}/{len(had_base)} cases"
        cells += [passed_before if had_base else "—", passed_now, ""]
    else:
        cells.append(passed_now)
    lines.append(_md_row([*cells, *figures(before, prompt.after)]))
    return [*lines, ""]


def _md_failures(report: EvalReport) -> list[str]:
    failed = sorted(report.failed, key=lambda c: (c.prompt_key, rank(c)))
    lines = ["<details>", f"<summary>Failures ({len(failed)})</summary>", ""]
    for case in failed[:MAX_DETAILED_FAILURES]:
        status = " — **regression**" if case.status == REGRESSION else ""
        lines.append(
            f"**{_md(case.prompt_key)} › {_md(case.case_name)}** ({_md(case.where)}){status}"
        )
        lines.append("")
        for result in case.after.results:
            if result.passed:
                continue
            version = RunStats([result]).version_label
            lines.append(f"- run {result.repeat_index + 1} · {_md(result.model)} · {version}")
            lines += [f"  - {_md(line)}" for line in failure_lines(result)]
        lines.append("")
    if len(failed) > MAX_DETAILED_FAILURES:
        more = len(failed) - MAX_DETAILED_FAILURES
        lines += [f"… and {more} more failing cases (see the JSON report).", ""]
    return [*lines, "</details>", ""]


def render_markdown(report: EvalReport, title: str = "llmkit eval") -> str:
    """A summary for a pull request or $GITHUB_STEP_SUMMARY: a headline, regressions first,
    a table per prompt (before → after with a base ref) and collapsed failure details."""
    mark = "✅" if report.ok else "❌"
    lines = [f"## {mark} {_md(title)}: {headline(report)}", ""]
    if not report.cases:
        return "\n".join([*lines, "No eval cases ran.", ""])
    if report.compared:
        base = _md(report.base_ref or "the base ref")
        lines += [f"Before: prompt versions on {base}. After: this change.", ""]
    if report.regressions:
        lines += ["**Regressions** (passed before, fail now):", ""]
        lines += [
            f"- {MARKS[REGRESSION]} **{_md(c.prompt_key)} › {_md(c.case_name)}** ({_md(c.where)})"
            for c in report.regressions
        ]
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
    element = ET.SubElement(
        suite,
        "testcase",
        name=_xml(case.case_name),
        classname=_xml(case.prompt_key),
        file=_xml(case.file),
        time=_seconds(case.after),
    )
    if case.line:
        element.set("line", str(case.line))
    if case.passed:
        return
    stats = case.after
    reasons = [(r, line) for r in stats.results if not r.passed for line in failure_lines(r)]
    summary = f"{stats.passed_runs}/{stats.runs} runs passed"
    if case.status == REGRESSION:
        summary = f"regression (passed on {base_ref or 'the base ref'}): {summary}"
    if reasons:
        summary += f"; {reasons[0][1]}"
    details = "\n".join(f"run {r.repeat_index + 1} ({r.model}): {line}" for r, line in reasons)
    failure = ET.SubElement(
        element, "error" if stats.errored else "failure", message=_xml(summary), type=case.status
    )
    failure.text = _xml(details)


def write_junit(path: Path | str, report: EvalReport) -> None:
    """JUnit XML: a testsuite per prompt and a testcase per case (its repeats together)."""
    counts = report.counts()
    errors = sum(1 for c in report.failed if c.after.errored)
    root = ET.Element(
        "testsuites",
        name="llmkit eval",
        tests=str(counts["cases"]),
        failures=str(counts["failed"] - errors),
        errors=str(errors),
    )
    for prompt in report.prompts():
        failed = [c for c in prompt.cases if not c.passed]
        prompt_errors = sum(1 for c in failed if c.after.errored)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=_xml(prompt.prompt_key),
            tests=str(len(prompt.cases)),
            failures=str(len(failed) - prompt_errors),
            errors=str(prompt_errors),
            skipped="0",
            time=_seconds(prompt.after),
        )
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="version", value=prompt.after.version_label)
        if prompt.before is not None:
            ET.SubElement(
                properties, "property", name="base_version", value=prompt.before.version_label
            )
        for case in prompt.cases:
            _junit_case(suite, case, report.base_ref)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


# --- JSON --------------------------------------------------------------------------------------


def report_to_dict(report: EvalReport) -> dict[str, Any]:
    """Everything in the report as JSON-ready data, every run included."""
    cases = []
    for case in report.cases:
        cases.append(
            {
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
                if case.before
                else [],
            }
        )
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
