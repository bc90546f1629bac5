"""One eval run from request to record, for `llmkit eval` and the API alike.

Both front ends describe what to run as an `EvalRequest` (which cases, at which ref, with which
options) and call `run_session`: it chooses the cases, checks the refs and the eval files, runs
the cases (and the base ref's, when asked) through `EvalRunner`, builds the report and stores
the run with its summary. The front ends only parse their input and show the result, so a case
is selected, run and recorded the same way whichever one asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from llmkit.errors import BadRequest, NotFound, Unprocessable
from llmkit.evals.cases import EvalCase, Problem
from llmkit.evals.records import EvalRecords
from llmkit.evals.results import CaseResult, EvalReport, build_report
from llmkit.evals.runner import EvalRunner, Progress, RunOptions
from llmkit.evals.spec import load_evals
from llmkit.execute import Executor
from llmkit.runlog_rows import utc_now
from llmkit.workspace import Workspace

# Run-log rows of eval calls say so, whichever front end started the run.
RUNLOG_SOURCE = "eval"


@dataclass(frozen=True)
class EvalRequest:
    """What to run. `paths` (absolute, files or folders) and `prompt_keys` narrow the cases,
    both when both are given; `ref` runs the prompt versions at that git ref (None: what is
    served), `base` runs them there too for comparison. `labels` names `ref` and `base` in
    errors as the caller spells them (`--ref` on the command line)."""

    prompt_keys: tuple[str, ...] = ()
    paths: tuple[Path, ...] = ()
    ref: str | None = None
    base: str | None = None
    concurrency: int = 8
    repeat: int | None = None
    use_cache: bool = True
    judge_model: str = "judge"
    source: str = "cli"  # which front end, as eval_runs records it
    labels: Mapping[str, str] = field(default_factory=lambda: {"ref": "ref", "base": "base"})

    def label(self, name: str) -> str:
        return self.labels.get(name, name)


@dataclass
class EvalSession:
    """A finished, recorded run."""

    run_id: str
    cases: list[EvalCase]
    results: list[CaseResult]
    base_results: list[CaseResult] | None
    report: EvalReport


def select_cases(ws: Workspace, request: EvalRequest) -> list[EvalCase]:
    """The cases the request names, after checking the refs, llmkit.yaml and the eval files the
    selection reads. Raises (and runs nothing) when any of them is wrong."""
    ws.models.aliases()  # a broken llmkit.yaml is a configuration error, not failing cases
    for name, given in (("ref", request.ref), ("base", request.base)):
        if given and ws.store.resolve_ref(given) is None:
            raise BadRequest(
                f"{request.label(name)} {given!r} is not a branch, tag or commit in"
                f" {ws.settings.repo}",
                param=name,
            )
    root = ws.settings.repo
    for path in request.paths:
        if not path.exists():
            raise NotFound(f"{_shown_path(path, root)} does not exist", param="paths")
    cases, problems = load_evals(root)
    errors = [
        p
        for p in problems
        if p.severity == "error" and _covers(request, root, p.path, _file_prompt_key(p.path))
    ]
    if errors:
        raise Unprocessable(
            f"{len(errors)} problem(s) in eval files; fix them (llmkit lint) and run again:\n"
            f"{problems_text(errors)}",
            param="evals",
        )
    if request.prompt_keys:
        unknown = set(request.prompt_keys) - {c.prompt_key for c in cases}
        if unknown:
            raise NotFound(
                f"No eval cases for prompt(s): {', '.join(sorted(unknown))}", param="prompt"
            )
    selected = [c for c in cases if _covers(request, root, c.file, c.prompt_key)]
    if not selected:
        raise NotFound("No eval cases to run (evals/<prompt key>/*.yaml)", param="paths")
    return selected


def _covers(request: EvalRequest, root: Path, rel_path: str, prompt_key: str) -> bool:
    """Whether an eval file (relative to the repository), holding cases of `prompt_key`, is
    among those the request reads."""
    if request.prompt_keys and prompt_key not in request.prompt_keys:
        return False
    if not request.paths:
        return True
    file = (root / rel_path).resolve()
    wanted = [p.resolve() for p in request.paths]
    return any(file == w or w in file.parents for w in wanted)


def _file_prompt_key(rel_path: str) -> str:
    """The prompt key an eval file's place names: evals/<key>/<name>.yaml ("" elsewhere)."""
    try:
        return PurePosixPath(rel_path).parent.relative_to("evals").as_posix()
    except ValueError:
        return ""


def _shown_path(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def eval_runner(
    ws: Workspace, executor: Executor, records: EvalRecords, request: EvalRequest
) -> EvalRunner:
    options = RunOptions(
        concurrency=request.concurrency,
        repeat=request.repeat,
        use_cache=request.use_cache,
        judge_model=request.judge_model,
        source=RUNLOG_SOURCE,
    )
    return EvalRunner(executor, records, options)


def planned_runs(runner: EvalRunner, cases: list[EvalCase], request: EvalRequest) -> int:
    """How many runs the request makes (the progress total), after checking that every
    selected prompt exists at `ref` (at `base`, a missing prompt's cases are new ones)."""
    planned = runner.plan(cases, request.ref)
    if request.ref:
        found = {case.prompt_key for case, _, _ in planned}
        missing = sorted({c.prompt_key for c in cases} - found)
        if missing:
            raise NotFound(
                f"No prompt {', '.join(missing)} at {request.label('ref')} {request.ref};"
                " leave its cases out",
                param="ref",
            )
    base_runs = len(runner.plan(cases, request.base)) if request.base else 0
    return len(planned) + base_runs


async def run_session(
    runner: EvalRunner,
    records: EvalRecords,
    cases: list[EvalCase],
    request: EvalRequest,
    progress: Progress | None = None,
) -> EvalSession:
    """Run the selected cases at `ref` (then at `base`), build the report and store the run
    with its summary in one transaction. Blocking steps run in threads, off the loop."""
    started = utc_now()
    results = await runner.run(cases, request.ref, progress)
    base_results = await runner.run(cases, request.base, progress) if request.base else None
    report = build_report(results, base_results, request.base)
    run_id = await asyncio.to_thread(
        records.save_run,
        results,
        base_results,
        ref=request.ref,
        base_ref=request.base,
        source=request.source,
        summary=report.counts(),
        started_at=started,
    )
    return EvalSession(run_id, cases, results, base_results, report)


def problems_text(problems: list[Problem]) -> str:
    """One line a problem, as `llmkit lint` shows them."""
    return "\n".join(f"{p.path}:{p.line or 1}: {p.message}" for p in problems)
