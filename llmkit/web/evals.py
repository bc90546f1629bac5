"""The eval pages: the prompts with eval cases, a prompt's cases, runs and before/after table,
and a run's outputs with human scores.

They read what the API's eval routes read: the cases from the eval files (`load_evals`), runs
and results from the durable records (`EvalRecords`, the app's one instance), and a score is
stored by the core the API's `PUT /v1/ui/prompt-eval-runs/{id}` uses (`set_score`), so a score
given here is the API's and the other way round. A stored `llmkit eval --base` run holds both
sides, the base ref's results beside the results of the versions run; two runs of any versions
are compared by the same code (`evals_views.compare`, over `build_report`).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Path, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from llmkit.api.deps import AdminKey, Ws, form_fields
from llmkit.errors import BadRequest, LlmkitError, NotFound
from llmkit.evals.cases import EvalCase, Problem
from llmkit.evals.records import BEFORE, EvalRecords
from llmkit.evals.spec import load_evals
from llmkit.versions import Prompt
from llmkit.web import evals_views as views
from llmkit.web.pages import page_router, pages
from llmkit.workspace import Workspace

MAX_SHOWN_RUN_ID = 60
# The runs a prompt's page lists unless asked for all: a page of thousands helps nobody.
RUNS_SHOWN = 100
MAX_ID_DIGITS = 18
# Any integer: one no row can have is not found, as the API's score route answers it.
ResultId = Annotated[int, Path(description="The eval result's id")]
RunId = Annotated[str, Path(min_length=1)]
RunChoice = Annotated[str | None, Query()]

router = page_router()


def _records(request: Request) -> EvalRecords:
    return request.app.state.eval_records  # type: ignore[no-any-return]


def _evals(ws: Workspace) -> tuple[list[EvalCase], list[Problem]]:
    return load_evals(ws.settings.repo)


def run_url(key: str, run_id: str) -> str:
    return f"/evals/{quote(key)}/runs/{quote(run_id, safe='')}"


def _prompt(ws: Workspace, key: str) -> Prompt | None:
    try:
        return ws.index.get_prompt(key)
    except NotFound:
        return None


@router.get("/evals")
def evals_page(request: Request, ws: Ws, admin: AdminKey) -> Response:
    """Every prompt with eval cases (or recorded runs): its cases and its latest run."""
    cases, problems = _evals(ws)
    runs = _records(request).latest_runs()
    return pages(request).render(
        request,
        "evals.html",
        prompts=views.prompts_with_evals(cases, problems, runs),
        problems=views.problems_of(problems),
        stamp=views.stamp,
        version_name=views.version_name,
        run_url=run_url,
    )


@router.get("/evals/{key:path}/runs/{run_id}")
def run_page(request: Request, key: str, run_id: RunId, ws: Ws, admin: AdminKey) -> Response:
    """One run of a prompt's cases: every output with its assertions, and its human score."""
    scored = request.query_params.get("scored", "")
    shown = int(scored) if scored.isdigit() and len(scored) <= MAX_ID_DIGITS else None
    try:
        return _run_page(request, ws, key, run_id, scored=shown)
    except NotFound:
        # A prompt whose key ends in `runs/<name>` has its eval page at this very path.
        whole = f"{key}/runs/{run_id}"
        if not _has_eval_page(ws, whole):
            raise
    return _prompt_page(request, ws, whole, None, None)


def _has_eval_page(ws: Workspace, key: str) -> bool:
    try:
        if _prompt(ws, key) is not None:
            return True
    except LlmkitError:  # not even a valid key
        return False
    return any(case.prompt_key == key for case in _evals(ws)[0])


def _run_page(
    request: Request,
    ws: Workspace,
    key: str,
    run_id: str,
    *,
    scored: int | None = None,
    problem: tuple[int, str] | None = None,
    status: int = 200,
) -> Response:
    records = _records(request)
    prompt = _prompt(ws, key)
    key = prompt.key if prompt else key
    run = next(iter(records.run_summaries(key, run_id)), None)
    if run is None:
        raise NotFound(f"No eval run {_shown(run_id)!r} of prompt {key!r}", param="run_id")
    results = records.results(run_id=run_id, prompt_key=key)
    by_id = {r["id"]: r for r in results}
    repeats = max(r["repeat_index"] for r in results) + 1
    return pages(request).render(
        request,
        "evals_run.html",
        status=status,
        prompt_key=key,
        prompt=prompt,
        run=run,
        results=results,
        repeats=repeats,
        scored=by_id.get(scored) if scored is not None else None,
        problem=problem,
        problem_result=by_id.get(problem[0]) if problem else None,
        stamp=views.stamp,
        money=views.money,
        version_name=views.version_name,
    )


@router.get("/evals/{key:path}")
def prompt_evals_page(
    request: Request,
    key: str,
    ws: Ws,
    admin: AdminKey,
    before: RunChoice = None,
    after: RunChoice = None,
    runs: str | None = Query(None),
) -> Response:
    """A prompt's cases, its runs per version (newest first; the newest RUNS_SHOWN unless
    `runs=all`) and the before/after table: of the latest `llmkit eval --base` run, or of the
    two runs picked."""
    if not key.strip("/"):
        return RedirectResponse("/evals", status_code=307)
    return _prompt_page(request, ws, key, before or None, after or None, every_run=runs == "all")


def _prompt_page(
    request: Request,
    ws: Workspace,
    key: str,
    before: str | None,
    after: str | None,
    *,
    every_run: bool = False,
) -> Response:
    prompt = _prompt(ws, key)
    key = prompt.key if prompt else key
    all_cases, problems = _evals(ws)
    cases = [c for c in all_cases if c.prompt_key == key]
    records = _records(request)
    runs = records.run_summaries(key)
    if prompt is None and not cases and not runs:
        raise NotFound(f"No prompt {key!r}, and no eval cases or runs of one", param="key")
    comparison, picked = _comparison(records, key, runs, cases, before, after)
    shown = runs if every_run else runs[:RUNS_SHOWN]
    # The runs picked stay in the pick form even when older than those listed.
    choices = shown + [r for r in runs[len(shown) :] if r["run_id"] in picked.values()]
    return pages(request).render(
        request,
        "evals_prompt.html",
        prompt_key=key,
        prompt=prompt,
        cases=[views.case_view(c) for c in cases],
        problems=views.problems_of(problems, key),
        versions=list(reversed(records.performance(key))),
        runs=shown,
        run_count=len(runs),
        choices=choices,
        comparison=comparison,
        picked=picked,
        run_name=views.run_name,
        stamp=views.stamp,
        version_name=views.version_name,
        run_url=run_url,
        changes=views.CHANGES,
    )


def _comparison(
    records: EvalRecords,
    key: str,
    runs: list[dict[str, Any]],
    cases: list[EvalCase],
    before: str | None,
    after: str | None,
) -> tuple[views.Comparison | None, dict[str, Any]]:
    """The before/after table asked for, and what the pick form shows as chosen.

    Nothing picked: the latest run with a base ref against its base, else the latest run
    against the latest run of another version. `after` alone: that run against its base ref.
    `before` alone: against the latest run."""
    by_id = {run["run_id"]: run for run in runs}
    for name, chosen in (("before", before), ("after", after)):
        if chosen is not None and chosen not in by_id:
            raise NotFound(
                f"No eval run {_shown(chosen)!r} of prompt {key!r} to compare", param=name
            )
    if before is None and after is None:
        linked = next((run for run in runs if run["base_ref"]), None)
        if linked is not None:
            after = linked["run_id"]
        elif runs:
            newest = runs[0]
            other = next((run for run in runs if _version(run) != _version(newest)), None)
            if other is not None:
                after, before = newest["run_id"], other["run_id"]
    elif after is None:
        after = runs[0]["run_id"]
    picked: dict[str, Any] = {"before": before or "", "after": after or "", "unlinked": None}
    if after is None:
        return None, picked
    after_run = by_id[after]
    after_rows = records.results(run_id=after, prompt_key=key)
    after_label = f"{_run_version(after_run)} (run {after[:8]})"
    if before is None:
        if not after_run["base_ref"]:
            picked["unlinked"] = after_run
            return None, picked
        before_rows = records.results(run_id=after, prompt_key=key, role=BEFORE)
        before_label = after_run["base_ref"]
        if before_rows:  # else the prompt is new since the base ref
            base = views.version_name(after_run["base_number"], after_run["base_sha"])
            before_label = f"{base} on {before_label}"
    else:
        before_rows = records.results(run_id=before, prompt_key=key)
        before_label = f"{_run_version(by_id[before])} (run {before[:8]})"
    comparison = views.compare(
        before_rows, after_rows, cases, before_label=before_label, after_label=after_label
    )
    return comparison, picked


def _version(run: dict[str, Any]) -> tuple[Any, ...]:
    return run["version_sha"], run["draft_blob"]


def _shown(run_id: str) -> str:
    """A run id as an error names it: whole, unless it is too long to be one."""
    return run_id if len(run_id) <= MAX_SHOWN_RUN_ID else run_id[:MAX_SHOWN_RUN_ID] + "…"


def _run_version(run: dict[str, Any]) -> str:
    return views.version_name(run["version_number"], run["version_sha"], run["draft"])


@router.post("/evals/results/{result_id}/score")
async def score_output(request: Request, result_id: ResultId, ws: Ws, admin: AdminKey) -> Response:
    """Store the human score (1-5) of one output, replacing any it had, as the API's score
    route does; back to its run. A score that is not a whole number from 1 to 5 is refused on
    the run's page, naming what was sent."""
    fields = await form_fields(request)
    if fields is None:
        raise BadRequest("A score is posted as an HTML form (application/x-www-form-urlencoded)")
    records = _records(request)
    row = await run_in_threadpool(records.result, result_id)
    try:
        score = views.score_value(fields.get("score"))
        await run_in_threadpool(records.set_score, result_id, score)
    except BadRequest as exc:
        problem = (result_id, f"Score not saved: {exc.message}")

        def refused() -> Response:
            return _run_page(
                request, ws, row["prompt_key"], row["run_id"], problem=problem, status=400
            )

        return await run_in_threadpool(refused)
    target = f"{run_url(row['prompt_key'], row['run_id'])}?{urlencode({'scored': result_id})}"
    return RedirectResponse(f"{target}#result-{result_id}", status_code=303)
