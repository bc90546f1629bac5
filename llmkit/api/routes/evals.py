"""Evals over HTTP, with LLMKit's routes. Each case is a file under evals/ and every change to
one is a git commit; runs and human scores are durable records.

Handlers that read files, run git or write SQLite are plain functions, which FastAPI runs in
its thread pool: on the event loop, a write waiting for the store's lock would stall every
request of the server. The one async handler (a run) sends its blocking steps there too."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool

from llmkit.api.deps import JsonBody, Ws, admin_key
from llmkit.errors import BadRequest, Conflict, NotFound
from llmkit.evals.case_json import case_from_dict, case_to_dict
from llmkit.evals.case_yaml import serialize_case
from llmkit.evals.cases import EvalCase, case_path
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
from llmkit.versions import Prompt, Version
from llmkit.workspace import Workspace

router = APIRouter(prefix="/v1/ui", dependencies=[Depends(admin_key)], tags=["evals"])


def install(app: FastAPI) -> None:
    app.state.eval_records = EvalRecords(app.state.ws.durable)
    app.include_router(router)


def case_id(case: EvalCase) -> int:
    """A stable id from the prompt key and case name (the same after any index rebuild)."""
    digest = hashlib.sha256(f"{case.prompt_key}\0{case.name}".encode()).hexdigest()
    return int(digest[:12], 16)


def _cases(ws: Workspace) -> list[EvalCase]:
    cases, _ = load_evals(ws.settings.repo)
    return cases


def _find(ws: Workspace, ident: int) -> EvalCase:
    for case in _cases(ws):
        if case_id(case) == ident:
            return case
    raise NotFound(f"No eval case with id {ident}", param="id")


def _public(case: EvalCase) -> dict[str, Any]:
    return case_to_dict(case, case_id(case))


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


@router.post("/prompt-evals", status_code=201)
def create_eval(data: JsonBody, ws: Ws) -> dict[str, Any]:
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
    return _public(_find(ws, case_id(case)))


@router.get("/prompt-evals/{eval_id}")
def get_eval(eval_id: int, ws: Ws) -> dict[str, Any]:
    """One eval case."""
    return _public(_find(ws, eval_id))


@router.put("/prompt-evals/{eval_id}")
def update_eval(eval_id: int, data: JsonBody, ws: Ws) -> dict[str, Any]:
    """Replace an eval case (fields not given keep their values), as a commit."""
    current = _find(ws, eval_id)
    _sole_case_in_file(ws, current)
    given = {k: v for k, v in data.items() if k not in ("prompt_id", "prompt_key", "id")}
    merged = {**case_to_dict(current), **given}
    for derived in ("file", "line", "system_prompt_input", "user_prompt_input"):
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
    return _public(_find(ws, case_id(case)))


_REPLACES = {
    "input": ("messages",),
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
    return [_public(c) for c in _cases(ws) if c.prompt_key == key]


@router.get("/prompts/{prompt_id:path}/performance")
def performance(prompt_id: str, request: Request, ws: Ws) -> dict[str, Any]:
    """Per version: mean human score, pass rate and run count."""
    prompt = ws.index.get_prompt(prompt_id)
    records: EvalRecords = request.app.state.eval_records
    return {"id": prompt.id, "key": prompt.key, "versions": records.performance(prompt.key)}


@router.post("/prompt-eval-runs/{prompt_id:path}/version/{version}")
async def run_evals(
    prompt_id: str, version: str, request: Request, ws: Ws, rounds: int = Query(1, ge=1, le=20)
) -> dict[str, Any]:
    """Run every case of the prompt against that version; one run_id for the whole run."""
    records: EvalRecords = request.app.state.eval_records
    prompt, pinned, wanted, cases, runner = await run_in_threadpool(
        _run_plan, ws, request.app.state.executor, records, prompt_id, version, rounds
    )
    session = await run_session(runner, records, cases, wanted)
    rows = await run_in_threadpool(records.results, run_id=session.run_id)
    return {
        "run_id": session.run_id,
        "prompt_id": prompt.id,
        "key": prompt.key,
        "version_number": pinned.number,
        "version_id": pinned.sha,
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
    pinned = ws.index.version(prompt.key, version)
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


@router.get("/prompt-eval-runs/{prompt_id:path}/version/{version}")
def list_runs(prompt_id: str, version: str, request: Request, ws: Ws) -> list[dict[str, Any]]:
    """Every eval result recorded for that version of the prompt."""
    prompt = ws.index.get_prompt(prompt_id)
    pinned = ws.index.version(prompt.key, version)
    records: EvalRecords = request.app.state.eval_records
    if pinned.draft:
        return records.results(prompt_key=prompt.key, draft_blob=pinned.blob)
    if pinned.sha is None:
        return []
    return records.results(prompt_key=prompt.key, version_sha=pinned.sha)


@router.get("/prompt-eval-runs/{result_id}")
def get_run(result_id: int, request: Request) -> dict[str, Any]:
    """One eval result."""
    return request.app.state.eval_records.result(result_id)


@router.put("/prompt-eval-runs/{result_id}")
def score_run(result_id: int, data: JsonBody, request: Request) -> dict[str, Any]:
    """Set the human score (1-5) of one eval result."""
    if "score" not in data:
        raise BadRequest("score is required (a whole number from 1 to 5)", param="score")
    return request.app.state.eval_records.set_score(result_id, data["score"])
