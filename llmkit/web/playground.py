"""The playground: run a version of a prompt with variables, a conversation and another model,
and see the answer with its tokens, cost, latency and trace.

With JavaScript, the page's script calls the API itself (`POST /v1/chat/completions`, streamed,
with the session's CSRF token) and shows the answer as it arrives. Without it, the form posts
here and the call runs, unstreamed, through the same executor, then the page shows the answer
and the call's run-log entry. Either way the call is an ordinary one: in the run log, with a
trace page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Query, Request, Response
from starlette.concurrency import run_in_threadpool

from llmkit.api.deps import AdminKey, Ws, form_fields
from llmkit.api.routes.completions import content_and_log
from llmkit.errors import BadRequest, LlmkitError, PromptFormatError
from llmkit.execute import Execution, Executor
from llmkit.models import ui_models
from llmkit.sessions import CSRF_HEADER
from llmkit.versions import Version
from llmkit.web import playground_views as pv
from llmkit.web import views
from llmkit.web.pages import page_router, pages, version_spec
from llmkit.workspace import Workspace

router = page_router()

ADD_TURN = "add-turn"
# The answer of a chat prompt becomes the assistant's turn, and a user turn follows.
CONTINUE = "continue"


@dataclass
class Choices:
    """What the form offers to pick: versions, branches and tags, and models."""

    versions: list[Version]
    branches: list[str]
    tags: list[str]
    models: list[dict[str, Any]]
    models_problem: str | None = None


@dataclass
class Form:
    """What the form holds: as typed, for a form sent back, else empty."""

    version: str = ""
    model: str = ""
    values: dict[str, str] = field(default_factory=dict)
    as_json: set[str] | None = None
    turns: list[pv.Turn] = field(default_factory=list)
    message: str = ""


def _choices(ws: Workspace, key: str) -> Choices:
    """The versions, refs and models to offer: the models as `GET /v1/ui/models` lists them."""
    versions = list(reversed(ws.index.versions(key)))
    branches, tags = ws.store.branches_and_tags()
    try:
        models = ui_models(ws.models, ws.index.models_in_use())
        problem = None
    except LlmkitError as exc:  # a broken llmkit.yaml: the prompt's own model still runs
        models, problem = [], exc.message
    return Choices(versions, branches, tags, models, problem)


def _context(ws: Workspace, key: str, version_spec_: str | None, form: Form) -> dict[str, Any]:
    """Everything the template needs but the outcome of a call."""
    prompt = ws.index.get_prompt(key)
    shown = ws.index.version(prompt.key, version_spec_)
    parsed = error = variable_error = None
    fields: list[pv.VariableField] = []
    kind = None
    try:
        parsed = shown.prompt()
        names, variable_error = views.variables_in(parsed)
        fields = pv.variable_fields(parsed, names, form.values, form.as_json)
        kind = pv.conversation_kind(parsed)
    except PromptFormatError as exc:
        error = exc.message
    turns = list(form.turns)
    if kind == "chat" and not turns:
        turns = [pv.Turn("user", "")]
    return dict(
        prompt=prompt,
        shown=shown,
        label=views.version_label(shown),
        served_label=views.version_label(prompt.version) if prompt.version else None,
        parsed=parsed,
        error=error,
        fields=fields,
        variable_error=variable_error,
        kind=kind,
        turns=turns,
        max_turns=pv.MAX_TURNS,
        roles=pv.TURN_ROLES,
        message=form.message,
        version=form.version,
        model=form.model,
        choices=_choices(ws, prompt.key),
        csrf_header=CSRF_HEADER,
        result=None,
        problem=None,
        figures=None,
    )


@router.get("/playground/{key:path}")
def playground_page(
    request: Request,
    key: str,
    ws: Ws,
    admin: AdminKey,
    version: str | None = Query(None),
    model: str | None = Query(None, max_length=300),
) -> Response:
    """A form to run the prompt: its variables, a conversation for a chat prompt, the version
    and the model to run."""
    spec = version_spec(version, "version")
    form = Form(version=spec or "", model=(model or "").strip())
    return pages(request).render(request, "playground.html", **_context(ws, key, spec, form))


def _form_from(fields: dict[str, str]) -> Form:
    """The form as it was sent, to show it again as typed."""
    values = {
        name.removeprefix(pv.VAR_FIELD): value.replace("\r\n", "\n")
        for name, value in fields.items()
        if name.startswith(pv.VAR_FIELD)
    }
    ticked = {
        name.removeprefix(pv.JSON_FIELD)
        for name, value in fields.items()
        if name.startswith(pv.JSON_FIELD) and value
    }
    return Form(
        version=fields.get("version", "").strip(),
        model=fields.get("model", "").strip(),
        values=values,
        as_json=ticked,
        turns=pv.read_turns(fields),
        message=fields.get("message", "").replace("\r\n", "\n"),
    )


@router.post("/playground/{key:path}")
async def run_in_playground(request: Request, key: str, ws: Ws, admin: AdminKey) -> Response:
    """Run the prompt as the form says, unstreamed (the page's script streams instead), and
    show the answer with its run-log entry; or add a turn to the conversation, or the answer
    and a turn after it (to continue it)."""
    fields = await form_fields(request)
    if fields is None:
        raise BadRequest("The playground posts an HTML form (application/x-www-form-urlencoded)")
    spec = version_spec(fields.get("version"), "version")
    form = _form_from(fields)
    action = fields.get("action")
    adding = action in (ADD_TURN, CONTINUE)
    if action == CONTINUE:
        answer = fields.get("answer", "").replace("\r\n", "\n")
        form.turns = [t for t in form.turns if t.content] + [pv.Turn("assistant", answer)]
    if adding:
        form.turns = [*form.turns, pv.next_turn(form.turns)][: pv.MAX_TURNS]
    context = await run_in_threadpool(_context, ws, key, spec, form)
    if adding:
        return pages(request).render(request, "playground.html", **context)
    if context["error"]:
        raise BadRequest(f"This version cannot be run: {context['error']}")
    names = [f.name for f in context["fields"]]
    result, problem, status = await _run(request, ws, admin.id, context, form, fields, names)
    if result is not None and "content" not in result:
        result["content"] = ""
    context.update(result=result, problem=problem, figures=pv.figures(result) if result else None)
    return pages(request).render(request, "playground.html", status=status, **context)


async def _run(
    request: Request,
    ws: Workspace,
    key_id: int,
    context: dict[str, Any],
    form: Form,
    fields: dict[str, str],
    names: list[str],
) -> tuple[dict[str, Any] | None, str | None, int]:
    """(the answer and its run-log entry, None, 200), or (the entry of a call that failed if
    it was made, the error's message, its status)."""
    executor: Executor = request.app.state.executor
    ex: Execution | None = None
    try:
        variables = pv.read_variables(fields, names)
        turns = form.turns if context["kind"] == "chat" else []
        if context["kind"] == "message" and form.message:
            turns = [pv.Turn("user", form.message)]
        body = pv.request_body(context["prompt"].key, form.version, variables, turns, form.model)
        ex = await executor.aprepare(body, source="ui", api_key_id=key_id)
        response = await executor.complete(ex)
    except LlmkitError as exc:
        entry = None
        if ex is not None:  # the call was made: its row says what happened
            entry = await run_in_threadpool(_entry_of, ws, ex.trace_id)
        return entry, exc.message, exc.status
    answer = await run_in_threadpool(content_and_log, ws, ex.trace_id, response)
    return {"content": answer["content"], **answer["log"]}, None, 200


def _entry_of(ws: Workspace, trace_id: str) -> dict[str, Any] | None:
    ws.runlog.flush()
    try:
        return ws.runlog.find(trace_id)
    except LlmkitError:
        return None
