"""Eval results: one CaseResult per run (case x repeat), and the report that compares the runs
of every case with a base ref's.

The runner collects CaseResults on the current prompt versions and, with `--base`, on the base
ref's; `build_report(results, base_results, base_ref)` groups and compares them into an
EvalReport, which the run records store and the writers (`report`, `console`) present.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean
from typing import Any

from llmkit.evals.asserts import AssertionResult, Outcome, meets_threshold, run_passed
from llmkit.evals.cases import EvalCase

REGRESSION, FIXED, NEW, PASS, FAIL = "regression", "fixed", "new", "pass", "fail"


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
            case.prompt_key,
            case.name,
            case.file,
            case.line,
            version_number,
            version_sha,
            model,
            repeat_index,
            outcome,
            assertions,
            run_passed(outcome, assertions, case.threshold),
            cached,
            case.threshold,
            draft_blob,
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


def rank(case: CaseComparison) -> tuple[int, str, int]:
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
            PromptSummary(key, sorted((c for c in self.cases if c.prompt_key == key), key=rank))
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
        cases.append(
            CaseComparison(
                first.prompt_key, first.case_name, first.file, first.line, after, before, status
            )
        )
    return EvalReport(cases, base_ref, compared)


def failure_lines(result: CaseResult) -> list[str]:
    """One line per reason a run failed."""
    if result.outcome.error is not None and not result.assertions:
        return [f"error: {result.outcome.error}"]
    return [f"{a.type}: {a.reason}" for a in result.failed_assertions]
