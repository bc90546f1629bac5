"""Executing prompts: OpenAI's chat completions, JSON or server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmkit.api.deps import admin_key, json_object, run_key
from llmkit.errors import LlmkitError
from llmkit.execute import Execution, Executor

router = APIRouter(dependencies=[Depends(run_key)], tags=["completions"])
ui_router = APIRouter(prefix="/v1/ui/prompts/execute", dependencies=[Depends(admin_key)], tags=["completions"])


def install(app: FastAPI) -> None:
    ws = app.state.ws
    app.state.executor = Executor(ws, ws.models, ws.runlog)

    async def start(app: FastAPI) -> None:
        import asyncio

        from llmkit.providers import pricing

        ws.runlog.start()
        asyncio.get_running_loop().run_in_executor(None, pricing.preload)

    async def stop(app: FastAPI) -> None:
        from llmkit import providers

        app.state.executor.close()
        await providers.aclose()

    app.state.on_startup.append(start)
    app.state.on_shutdown.append(stop)
    app.include_router(router)
    app.include_router(ui_router)


def _sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def execute(request: Request, body: dict[str, Any], stream: bool, source: str) -> Response:
    executor: Executor = request.app.state.executor
    key = getattr(request.state, "api_key", None)
    key_id = key.id if key else None
    # Templates render within their budget and pinned refs may run git: never on the loop.
    ex = await executor.aprepare(body, source=source, api_key_id=key_id)
    try:
        if not stream:
            response = await executor.complete(ex)
            return JSONResponse(response, headers=ex.headers())
        return await _stream(executor, ex)
    except LlmkitError as exc:
        # The call is in the run log: its trace id lets the caller find the row.
        exc.headers = {**exc.headers, **ex.headers()}
        raise


async def _stream(executor: Executor, ex: Execution) -> Response:
    chunks = executor.stream(ex)
    # Pull the first chunk before answering, so a failure before the stream starts is an
    # ordinary JSON error with its status.
    try:
        first: dict[str, Any] | None = await chunks.__anext__()
    except StopAsyncIteration:
        first = None

    async def events() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield _sse(first)
            async for chunk in chunks:
                yield _sse(chunk)
            yield b"data: [DONE]\n\n"
        except LlmkitError as exc:
            yield _sse(exc.to_dict())
        finally:
            await chunks.aclose()

    headers = {**ex.headers(), "cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


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
