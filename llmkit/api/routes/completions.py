"""Executing prompts: OpenAI's chat completions, JSON or server-sent events."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from llmkit.api.deps import admin_key, documented_body, parse_body, run_key
from llmkit.api.routes.logs import ui_entries
from llmkit.api.schemas import ChatCompletionRequest, PromptExecuteRequest
from llmkit.api.streaming import ClientWatch, EventStream, JsonAnswer
from llmkit.errors import LlmkitError
from llmkit.execute import Execution, Executor
from llmkit.workspace import Workspace

router = APIRouter(dependencies=[Depends(run_key)], tags=["completions"])
ui_router = APIRouter(
    prefix="/v1/ui/prompts/execute", dependencies=[Depends(admin_key)], tags=["completions"]
)


async def execute(
    request: Request, body: dict[str, Any], stream: bool, source: str, with_log: bool = False
) -> Response:
    """Run one call. `with_log`: answer LLMKit's `{content, log}` (the answer's text and its
    run-log entry) instead of a chat completion; a stream is a stream either way."""
    executor: Executor = request.app.state.executor
    key = getattr(request.state, "api_key", None)
    key_id = key.id if key else None
    # Templates render within their budget and pinned refs may run git: never on the loop.
    ex = await executor.aprepare(body, source=source, api_key_id=key_id)
    try:
        if not stream:
            return await _complete(request, executor, ex, with_log)
        return await _stream(request, executor, ex)
    except LlmkitError as exc:
        # The call is in the run log: its trace id lets the caller find the row.
        exc.headers = {**exc.headers, **ex.headers()}
        raise


def _write_timeout(request: Request) -> float:
    return float(request.app.state.settings.stream_write_timeout_s)


# Answered to a client that left: nobody reads it (as web servers log a closed request).
CLIENT_GONE = 499


async def _complete(
    request: Request, executor: Executor, ex: Execution, with_log: bool = False
) -> Response:
    watch = ClientWatch(request.scope, request.receive, _write_timeout(request))
    try:
        response = await executor.complete(ex)
    except asyncio.CancelledError as exc:
        if not watch.owns(exc):
            raise
        return Response(status_code=CLIENT_GONE)
    finally:
        watch.close()
    if with_log:
        ws = request.app.state.ws
        response = await run_in_threadpool(content_and_log, ws, ex.trace_id, response)
    return JsonAnswer(response, headers=ex.headers())


def content_and_log(ws: Workspace, trace_id: str, response: dict[str, Any]) -> dict[str, Any]:
    """LLMKit's answer to an execution by id (and the playground page's): the text, and the
    run-log entry of the call (as GET /v1/ui/logs/{id} shows it), written before it is read."""
    ws.runlog.flush()
    choices = response.get("choices") or [{}]
    content = (choices[0].get("message") or {}).get("content")
    [log] = ui_entries(ws, [ws.runlog.find(trace_id)])
    return {"content": content if isinstance(content, str) else "", "log": log}


async def _stream(request: Request, executor: Executor, ex: Execution) -> Response:
    # The watch starts before the first chunk: a client may leave while the upstream thinks.
    watch = ClientWatch(request.scope, request.receive, _write_timeout(request))
    chunks = executor.stream(ex)
    # Pull the first chunk before answering, so a failure before the stream starts is an
    # ordinary JSON error with its status.
    try:
        first: dict[str, Any] | None = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except asyncio.CancelledError as exc:
        watch.close()
        if not watch.owns(exc):
            raise
        return Response(status_code=CLIENT_GONE)
    except BaseException:
        watch.close()
        raise
    headers = {**ex.headers(), "cache-control": "no-cache", "x-accel-buffering": "no"}
    return EventStream(chunks, first, watch, headers)


CHAT_BODY = TypeAdapter(ChatCompletionRequest)
PROMPT_BODY = TypeAdapter(PromptExecuteRequest)


CHAT_DOC = documented_body("ChatCompletionRequest")
PROMPT_DOC = documented_body("PromptExecuteRequest")


async def _chat_body(request: Request) -> dict[str, Any]:
    # Read here rather than as a FastAPI body parameter: a bad body is a 400 naming the field,
    # as OpenAI answers it (FastAPI's would be a 422), and the JSON is validated as it is parsed.
    return parse_body(await request.body(), CHAT_BODY)  # type: ignore[arg-type]


async def _execute_chat(request: Request, source: str, *, streaming: bool = False) -> Response:
    """Run a chat completions body for `source`: streamed when the body asks (`stream`), and
    always on the `/stream` routes."""
    body = await _chat_body(request)
    return await execute(request, body, streaming or bool(body.get("stream")), source)


# A body holding any field of a chat completions body (model, messages, variables, stream,
# temperature, ...) is one, as llmkit's callers send it; any other JSON object is what LLMKit's
# UI sends: the template variables themselves.
COMPLETION_FIELDS = PromptExecuteRequest.__required_keys__ | PromptExecuteRequest.__optional_keys__
ANY_OBJECT = TypeAdapter(dict[str, Any])


async def _prompt_body(request: Request, prompt_id: str) -> tuple[dict[str, Any], bool]:
    """The execution body of `execute/{id}`, and whether it came as LLMKit's UI sends it (the
    template variables as the whole body, answered `{content, log}`)."""
    raw = await request.body()
    given: dict[str, Any] = parse_body(raw, ANY_OBJECT)
    llmkit_shape = COMPLETION_FIELDS.isdisjoint(given)
    if llmkit_shape:
        body: dict[str, Any] = {"variables": given}
    else:
        body = parse_body(raw, PROMPT_BODY)  # type: ignore[arg-type]
    body["model"] = _model_for(request, prompt_id)
    return body, llmkit_shape


@router.post("/v1/chat/completions", openapi_extra=CHAT_DOC)
async def chat_completions(request: Request) -> Response:
    """Execute the prompt named by `model` (key, or key@version); SSE when `stream` is true."""
    return await _execute_chat(request, "api")


@router.post("/v1/chat/completions/stream", openapi_extra=CHAT_DOC)
async def chat_completions_stream(request: Request) -> Response:
    """Execute the prompt named by `model`, always streaming."""
    return await _execute_chat(request, "api", streaming=True)


# The prompt-in-the-body routes go before execute/{id}: LLMKit's UI posts to execute/stream
# and execute/chat/stream, which {id}/stream would otherwise read as prompts named "stream"
# and "chat".
@ui_router.post("", openapi_extra=CHAT_DOC)
async def execute_in_body(request: Request) -> Response:
    """Execute the prompt named by `model` from the UI (same body as chat completions)."""
    return await _execute_chat(request, "ui")


@ui_router.post("/stream", openapi_extra=CHAT_DOC)
async def execute_in_body_stream(request: Request) -> Response:
    """Execute the prompt named by `model` from the UI, always streaming."""
    return await _execute_chat(request, "ui", streaming=True)


@ui_router.post("/chat", openapi_extra=CHAT_DOC)
async def execute_chat(request: Request) -> Response:
    """Execute a prompt in chat mode from the UI (same body as chat completions)."""
    return await _execute_chat(request, "ui")


@ui_router.post("/chat/stream", openapi_extra=CHAT_DOC)
async def execute_chat_stream(request: Request) -> Response:
    """Execute a prompt in chat mode from the UI, always streaming."""
    return await _execute_chat(request, "ui", streaming=True)


@ui_router.post("/{prompt_id:path}/stream", openapi_extra=PROMPT_DOC)
async def execute_prompt_stream(prompt_id: str, request: Request) -> Response:
    """Execute prompt {id} (id or key, optionally @version), streaming. The body is the
    template variables (as LLMKit's UI sends them) or, holding any of its fields, a chat
    completions body."""
    body, _ = await _prompt_body(request, prompt_id)
    return await execute(request, body, True, "ui")


@ui_router.post("/{prompt_id:path}", openapi_extra=PROMPT_DOC)
async def execute_prompt(prompt_id: str, request: Request) -> Response:
    """Execute prompt {id} (id or key, optionally @version). The body is the template variables,
    answered `{content, log}` as LLMKit's UI reads it; or, holding any field of a chat
    completions body (`model`, `messages`, `variables`, ...), one, answered as a chat
    completion."""
    body, llmkit_shape = await _prompt_body(request, prompt_id)
    return await execute(request, body, bool(body.get("stream")), "ui", with_log=llmkit_shape)


def _model_for(request: Request, prompt_id: str) -> str:
    ident, _, version = prompt_id.partition("@")
    key = request.app.state.ws.index.get_prompt(ident).key
    return f"{key}@{version}" if version else key
