"""Evals over HTTP, with LLMKit's routes. Each case is a file under evals/ and every change to
one is a git commit; runs and human scores are durable records.

Handlers that read files, run git or write SQLite are plain functions, which FastAPI runs in
its thread pool: on the event loop, a write waiting for the store's lock would stall every
request of the server. The one async handler (a run) sends its blocking steps there too."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from llmkit.api.deps import Ws, admin_key, body_reader, documented_body
from llmkit.api.schemas import EvalCaseWrite, EvalScoreUpdate
from llmkit.errors import BadRequest, Conflict, LlmkitError, NotFound
from llmkit.evals.case_json import case_from_dict, case_to_dict
from llmkit.evals.case_times import file_times
from llmkit.evals.case_yaml import serialize_case
from llmkit.evals.cases import EvalCase, case_id, case_path, identified
from llmkit.evals.records import EvalRecords
from llmkit.evals.runner import EvalRunner
from llmkit.evals.session import (
    EvalRequest,
    eval_runner,
    planned_runs,
    run_session,
    select_cases,
)
from llmkit.evals.spec import load_evals
from llmkit.execute import Executor
from llmkit.prompt_views import version_performance
from llmkit.versions import Prompt, Version
from llmkit.workspace import Workspace

router = APIRouter(prefix="/v1/ui", dependencies=[Depends(admin_key)], tags=["evals"])
CaseBody = Annotated[dict[str, Any], Depends(body_reader(TypeAdapter(EvalCaseWrite)))]
ScoreBody = Annotated[dict[str, Any], Depends(body_reader(TypeAdapter(EvalScoreUpdate)))]


def install(app: FastAPI) -> None:
    app.state.eval_records = EvalRecords(app.state.ws.durable)
    app.include_router(router)


def _cases(ws: Workspace) -> list[EvalCase]:
    cases, _ = load_evals(ws.settings.repo)
    return cases


def _find(ws: Workspace, ident: int) -> EvalCase:
    for found_id, case in identified(_cases(ws)):
        if found_id == ident:
            return case
    raise NotFound(f"No eval case with id {ident}", param="id")


def _named(ws: Workspace, key: str, name: str) -> tuple[int, EvalCase]:
    """The case of prompt `key` named `name`, just written, with its id."""
    for found in identified(_cases(ws)):
        if found[1].prompt_key == key and found[1].name == name:
            return found
    raise NotFound(f"No eval case {name!r} for prompt {key!r}", param="name")


def _listed(ws: Workspace, found: list[tuple[int, EvalCase]]) -> list[dict[str, Any]]:
    """Cases as the API shows them, with LLMKit's `prompt_id` and the times of their files."""
    times = file_times(ws.store, {c.file for _, c in found})
    prompt_ids: dict[str, int | None] = {}
    shown = []
    for ident, case in found:
        if case.prompt_key not in prompt_ids:
            try:
                prompt_ids[case.prompt_key] = ws.index.get_prompt(case.prompt_key).id
            except LlmkitError:  # a case of a prompt that is gone
                prompt_ids[case.prompt_key] = None
        created, updated = times.get(case.file, (None, None))
        shown.append(
            {
                **case_to_dict(case, ident),
                "prompt_id": prompt_ids[case.prompt_key],
                "created_at": created,
                "updated_at": updated,
            }
        )
    return shown


# The version a run's path names when it is the one served now, a draft included: a draft has
# no integer id yet, and LLMKit's UI puts a prompt's null version_id in the path as `null`.
def _version_ids(ws: Workspace, rows: list[dict[str, Any]]) -> None:
    """Each result's `prompt_version_id` as LLMKit's integer version id: the recorded sha's
    version in the index; null for a draft's, or a commit no longer in the served history."""
    ids: dict[tuple[str, str], int | None] = {}
    for row in rows:
        sha = row["version_sha"]
        if sha is None:
            row["prompt_version_id"] = None
            continue
        found = (row["prompt_key"], sha)
        if found not in ids:
            try:
                ids[found] = ws.index.version(*found).id
            except LlmkitError:
                ids[found] = None
        row["prompt_version_id"] = ids[found]


def _results(ws: Workspace, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Eval results with LLMKit's `prompt_eval_id`, the id of the case each ran, read from the
    cases as they are now (a case alone in its file is that file's, even renamed since), and
    its integer `prompt_version_id`."""
    _version_ids(ws, rows)
    by_file: dict[str, list[tuple[int, EvalCase]]] = {}
    for ident, case in identified(_cases(ws)):
        by_file.setdefault(case.file, []).append((ident, case))
    for row in rows:
        file = row["file"] or ""
        in_file = by_file.get(file, [])
        named = [ident for ident, case in in_file if case.name == row["case_name"]]
        if len(in_file) == 1:
            row["prompt_eval_id"] = in_file[0][0]
        elif named:
            row["prompt_eval_id"] = named[0]
        else:  # a case that is gone: the id it had as one of several in its file
            row["prompt_eval_id"] = case_id(row["prompt_key"], file, row["case_name"])
    return rows


def _sole_case_in_file(ws: Workspace, case: EvalCase) -> None:
    siblings = [c for c in _cases(ws) if c.file == case.file]
    if len(siblings) > 1:
        raise Conflict(
            f"Eval case {case.name!r} is one of {len(siblings)} cases in {case.file}; edit that "
            "file"
            " in git to change it",
            param="id",
        )


def _prompt_key(ws: Workspace, data: dict[str, Any]) -> str:
    if data.get("prompt_key"):
        return ws.index.get_prompt(str(data["prompt_key"])).key
    if data.get("prompt_id") is not None:
        return ws.index.get_prompt(str(data["prompt_id"])).key
    raise BadRequest("prompt_key (or prompt_id) is required", param="prompt_key")


@router.post("/prompt-evals", status_code=201, openapi_extra=documented_body("EvalCaseWrite"))
def create_eval(data: CaseBody, ws: Ws) -> dict[str, Any]:
    """Create an eval case: writes evals/<key>/<name>.yaml and commits it."""
    key = _prompt_key(ws, data)
    fields = {k: v for k, v in data.items() if k not in ("prompt_id", "prompt_key")}
    case = case_from_dict(fields, prompt_key=key)
    if any(c.prompt_key == key and c.name == case.name for c in _cases(ws)):
        raise Conflict(f"Prompt {key!r} already has an eval case named {case.name!r}", param="name")
    path = case_path(key, case.name)
    case.file = path
    if ws.store.confine(path).exists():
        raise Conflict(f"{path} already exists", param="name")
    ws.store.commit_file(
        path,
        serialize_case(case).encode(),
        message=f"Add eval case {case.name!r} for {key}",
        create=True,
    )
    return _listed(ws, [_named(ws, key, case.name)])[0]


@router.get("/prompt-evals/{eval_id}")
def get_eval(eval_id: int, ws: Ws) -> dict[str, Any]:
    """One eval case."""
    return _listed(ws, [(eval_id, _find(ws, eval_id))])[0]


@router.put("/prompt-evals/{eval_id}", openapi_extra=documented_body("EvalCaseWrite"))
def update_eval(eval_id: int, data: CaseBody, ws: Ws) -> dict[str, Any]:
    """Replace an eval case (fields not given keep their values), as a commit."""
    current = _find(ws, eval_id)
    _sole_case_in_file(ws, current)
    given = {k: v for k, v in data.items() if k not in ("prompt_id", "prompt_key", "id")}
    merged = {**case_to_dict(current), **given}
    for derived in ("file", "line", "input_data", "system_prompt_input", "user_prompt_input"):
        if derived not in given:
            merged.pop(derived, None)
    # A field given replaces the current fields it stands for (else both would be present).
    for field, replaced in _REPLACES.items():
        if field in given:
            for old in replaced:
                if old not in given:
                    merged.pop(old, None)
    case = case_from_dict(merged, prompt_key=current.prompt_key, file=current.file)
    if case.name != current.name and any(
        c.prompt_key == case.prompt_key and c.name == case.name for c in _cases(ws)
    ):
        raise Conflict(
            f"Prompt {case.prompt_key!r} already has an eval case named {case.name!r}", param="name"
        )
    text = serialize_case(case).encode()
    if ws.store.confine(current.file).read_bytes() != text:
        ws.store.commit_file(
            current.file, text, message=f"Update eval case {case.name!r} for {case.prompt_key}"
        )
    return _listed(ws, [_named(ws, case.prompt_key, case.name)])[0]


_REPLACES = {
    "input": ("messages",),
    "input_data": ("vars", "user_vars"),
    "system_prompt_input": ("vars",),
    "user_prompt_input": ("user_vars", "messages"),
}


@router.delete("/prompt-evals/{eval_id}")
def delete_eval(eval_id: int, ws: Ws) -> dict[str, Any]:
    """Delete an eval case file, as a commit."""
    case = _find(ws, eval_id)
    _sole_case_in_file(ws, case)
    ws.store.commit_file(
        case.file, None, message=f"Delete eval case {case.name!r} for {case.prompt_key}"
    )
    return {"id": eval_id, "deleted": True}


@router.get("/prompts/{prompt_id:path}/prompt-evals")
def list_prompt_evals(prompt_id: str, ws: Ws) -> list[dict[str, Any]]:
    """The eval cases of one prompt."""
    key = ws.index.get_prompt(prompt_id).key
    return _listed(ws, [(i, c) for i, c in identified(_cases(ws)) if c.prompt_key == key])


@router.get("/prompts/{prompt_id:path}/performance")
def performance(prompt_id: str, request: Request, ws: Ws) -> list[dict[str, Any]]:
    """Per version, as LLMKit's chart reads it: version id, number and date, mean human score,
    run count, and llmkit's pass rate and counts."""
    prompt = ws.index.get_prompt(prompt_id)
    records: EvalRecords = request.app.state.eval_records
    return version_performance(ws.index.versions(prompt.key), records.performance(prompt.key))


@router.post("/prompt-eval-runs/{prompt_id:path}/version/{version_id}")
async def run_evals(
    prompt_id: str,
    version_id: str,
    request: Request,
    ws: Ws,
    rounds: int = Query(1, ge=1, le=20),
) -> dict[str, Any]:
    """Run every case of the prompt against that version (its integer id, or a sha prefix,
    branch or tag); one run_id for the whole run."""
    records: EvalRecords = request.app.state.eval_records
    prompt, pinned, wanted, cases, runner = await run_in_threadpool(
        _run_plan, ws, request.app.state.executor, records, prompt_id, version_id, rounds
    )
    session = await run_session(runner, records, cases, wanted)
    rows = await run_in_threadpool(lambda: _results(ws, records.results(run_id=session.run_id)))
    return {
        "run_id": session.run_id,
        "prompt_id": prompt.id,
        "key": prompt.key,
        "version_number": pinned.number,
        "version_id": pinned.id,
        "sha": pinned.sha,
        "draft": pinned.draft,
        "passed": sum(r["passed"] for r in rows),
        "total": len(rows),
        "runs": rows,
    }


def _run_plan(
    ws: Workspace,
    executor: Executor,
    records: EvalRecords,
    prompt_id: str,
    version: str,
    rounds: int,
) -> tuple[Prompt, Version, EvalRequest, list[EvalCase], EvalRunner]:
    """The prompt, the version a run pins (a branch or tag is resolved with git), and the run
    of its cases as `llmkit eval --prompt KEY --ref COMMIT --repeat ROUNDS` would make it."""
    prompt = ws.index.get_prompt(prompt_id)
    pinned = ws.index.version_for_id_segment(prompt.key, version)
    wanted = EvalRequest(
        prompt_keys=(prompt.key,),
        # The commit that made the version; a draft is only ever what is served.
        ref=pinned.sha,
        repeat=rounds,
        source="api",
        labels={"ref": "version"},
    )
    cases = select_cases(ws, wanted)
    runner = eval_runner(ws, executor, records, wanted)
    planned_runs(runner, cases, wanted)
    return prompt, pinned, wanted, cases, runner


@router.get("/prompt-eval-runs/{prompt_id:path}/version/{version_id}")
def list_runs(prompt_id: str, version_id: str, request: Request, ws: Ws) -> list[dict[str, Any]]:
    """Every eval result recorded for that version of the prompt (its integer id, or a sha
    prefix, branch or tag)."""
    prompt = ws.index.get_prompt(prompt_id)
    pinned = ws.index.version_for_id_segment(prompt.key, version_id)
    records: EvalRecords = request.app.state.eval_records
    if pinned.draft:
        return _results(ws, records.results(prompt_key=prompt.key, draft_blob=pinned.blob))
    if pinned.sha is None:
        return []
    return _results(ws, records.results(prompt_key=prompt.key, version_sha=pinned.sha))


@router.get("/prompt-eval-runs/{result_id}")
def get_run(result_id: int, request: Request, ws: Ws) -> dict[str, Any]:
    """One eval result."""
    return _results(ws, [request.app.state.eval_records.result(result_id)])[0]


@router.put("/prompt-eval-runs/{result_id}", openapi_extra=documented_body("EvalScoreUpdate"))
def score_run(result_id: int, data: ScoreBody, request: Request, ws: Ws) -> dict[str, Any]:
    """Set the human score (1-5) of one eval result."""
    return _results(ws, [request.app.state.eval_records.set_score(result_id, data["score"])])[0]
