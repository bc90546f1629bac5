"""Executing prompts: OpenAI's chat completions, JSON or server-sent events."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from llmkit.api.deps import admin_key, json_object, run_key
from llmkit.api.streaming import ClientWatch, EventStream, JsonAnswer
from llmkit.errors import LlmkitError
from llmkit.execute import Execution, Executor

router = APIRouter(dependencies=[Depends(run_key)], tags=["completions"])
ui_router = APIRouter(prefix="/v1/ui/prompts/execute", dependencies=[Depends(admin_key)], tags=["completions"])


def install(app: FastAPI) -> None:
    ws = app.state.ws
    app.state.executor = Executor(ws, ws.models, ws.runlog)

    async def start(app: FastAPI) -> None:
        from llmkit import providers
        from llmkit.providers import pricing

        settings = ws.settings
        providers.configure_pool(
            providers.PoolLimits(settings.upstream_pool_size, settings.upstream_acquire_timeout_s)
        )
        ws.runlog.start()
        asyncio.get_running_loop().run_in_executor(None, pricing.preload)

    async def stop(app: FastAPI) -> None:
        from llmkit import providers

        await providers.aclose()

    app.state.on_startup.append(start)
    app.state.on_shutdown.append(stop)
    app.include_router(router)
    app.include_router(ui_router)


async def execute(request: Request, body: dict[str, Any], stream: bool, source: str) -> Response:
    executor: Executor = request.app.state.executor
    key = getattr(request.state, "api_key", None)
    key_id = key.id if key else None
    model = body.get("model")
    if isinstance(model, str) and "@" in model:
        # A pinned branch or tag is resolved with git the first time: keep it off the loop.
        ex = await run_in_threadpool(executor.prepare, body, source=source, api_key_id=key_id)
    else:
        ex = executor.prepare(body, source=source, api_key_id=key_id)
    try:
        if not stream:
            return await _complete(request, executor, ex)
        return await _stream(request, executor, ex)
    except LlmkitError as exc:
        # The call is in the run log: its trace id lets the caller find the row.
        exc.headers = {**exc.headers, **ex.headers()}
        raise


def _write_timeout(request: Request) -> float:
    return float(request.app.state.settings.stream_write_timeout_s)


# Answered to a client that left: nobody reads it (as web servers log a closed request).
CLIENT_GONE = 499


async def _complete(request: Request, executor: Executor, ex: Execution) -> Response:
    watch = ClientWatch(request.scope, request.receive, _write_timeout(request))
    try:
        response = await executor.complete(ex)
    except asyncio.CancelledError as exc:
        if not watch.owns(exc):
            raise
        return Response(status_code=CLIENT_GONE)
    finally:
        watch.close()
    return JsonAnswer(response, headers=ex.headers())


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


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """Execute the prompt named by `model` (key, or key@version); SSE when `stream` is true."""
    body = await json_object(request)
    return await execute(request, body, bool(body.get("stream")), "api")


@router.post("/v1/chat/completions/stream")
async def chat_completions_stream(request: Request) -> Response:
    """Execute the prompt named by `model`, always streaming."""
    body = await json_object(request)
    return await execute(request, body, True, "api")


@ui_router.post("/chat")
async def execute_chat(request: Request) -> Response:
    """Execute a prompt in chat mode from the UI (same body as chat completions)."""
    body = await json_object(request)
    return await execute(request, body, bool(body.get("stream")), "ui")


@ui_router.post("/{prompt_id:path}/stream")
async def execute_prompt_stream(prompt_id: str, request: Request) -> Response:
    """Execute prompt {id} (id or key, optionally @version), streaming."""
    body = await json_object(request)
    body["model"] = _model_for(request, prompt_id)
    return await execute(request, body, True, "ui")


@ui_router.post("/{prompt_id:path}")
async def execute_prompt(prompt_id: str, request: Request) -> Response:
    """Execute prompt {id} (id or key, optionally @version)."""
    body = await json_object(request)
    body["model"] = _model_for(request, prompt_id)
    return await execute(request, body, bool(body.get("stream")), "ui")


def _model_for(request: Request, prompt_id: str) -> str:
    ident, _, version = prompt_id.partition("@")
    key = request.app.state.ws.index.get_prompt(ident).key
    return f"{key}@{version}" if version else key
