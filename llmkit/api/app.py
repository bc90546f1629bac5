"""create_app: the FastAPI app over one Workspace. No module-level state: each call builds a
new app, so tests build their own."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmkit import __version__, providers
from llmkit.api import refmode
from llmkit.api.docs import install_docs
from llmkit.api.limits import BodySizeLimit
from llmkit.api.routes import auth, completions, evals, hooks, keys, logs, meta, prompts
from llmkit.config import Settings
from llmkit.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    LlmkitError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    Unprocessable,
    clipped,
)
from llmkit.execute import Executor
from llmkit.otlp import TraceparentMiddleware
from llmkit.otlp_export import exporter_from_env
from llmkit.providers import pricing
from llmkit.refserve import Follower, RefIndex
from llmkit.sessions import LoginLimiter, SessionStore
from llmkit.web.site import install as install_web
from llmkit.workspace import Workspace

log = logging.getLogger("llmkit.api")

# The error class each status is answered with when no LlmkitError was raised (FastAPI's own
# 404, 405 and validation errors): one shape, one OpenAI type per status.
STATUS_ERRORS: dict[int, type[LlmkitError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: Unprocessable,
    429: RateLimited,
}


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The JSON answer of an error with this status (type from STATUS_ERRORS, else an
    invalid_request_error below 500 and a server_error from it)."""
    kind = STATUS_ERRORS.get(status, LlmkitError if status >= 500 else BadRequest)
    error = kind(message, status=status, code=code, param=param)
    if code is None:
        error.code = None  # FastAPI's own errors carry no code of ours
    return JSONResponse(error.to_dict(), status_code=status, headers=headers)


def create_app(settings: Settings | None = None, workspace: Workspace | None = None) -> FastAPI:
    if workspace is None:
        if settings is None:
            raise ValueError("create_app needs settings or a workspace")
        workspace = Workspace(settings)
    ws = workspace
    settings = ws.settings
    executor = Executor(ws, ws.models, ws.runlog)
    # Spans of logged calls, when the OTEL_* variables name a collector (llmkit.otlp_export).
    spans, spans_off = exporter_from_env(os.environ)
    if spans is not None:
        ws.runlog.add_sink(spans)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ws.recover_writes()  # before the first sync, so a half-done write is never served
        watcher: Any = None
        if isinstance(ws.index, RefIndex):
            # Fetch (with a remote), load REF, then follow it: git refs only, never the files.
            watcher = Follower(
                ws.index, watch=settings.watch, debounce_s=settings.debounce_ms / 1000
            )
            watcher.start()
            app.state.follower = watcher
        else:
            ws.index.sync()
            if settings.watch:
                from llmkit.watch import Watcher

                watcher = Watcher(ws.index, settings.repo, debounce_s=settings.debounce_ms / 1000)
                watcher.start()
        app.state.watcher = watcher
        providers.configure_pool(
            providers.PoolLimits(settings.upstream_pool_size, settings.upstream_acquire_timeout_s)
        )
        if spans is not None:
            spans.start()
        ws.runlog.start()
        # Prices are read once, off the loop: the first call's cost needs them, nothing waits.
        asyncio.get_running_loop().run_in_executor(None, pricing.preload)
        try:
            yield
        finally:
            executor.close()
            await providers.aclose()
            if watcher is not None:
                watcher.stop()
            ws.close()
            if spans is not None:
                spans.close()  # after the run log, whose last rows it sends

    app = FastAPI(
        title="llmkit",
        version=__version__,
        description=(
            "Prompts as code: prompt files in git, executed through an OpenAI-compatible API."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(refmode.refuse_git_writes)] if ws.ref else None,
    )
    app.state.ws = ws
    app.state.follower = None
    app.state.webhook_secret = hooks.webhook_secret()
    app.state.settings = settings
    app.state.executor = executor
    app.state.sessions = SessionStore(
        ws.durable, idle_s=settings.session_idle_s, absolute_s=settings.session_absolute_s
    )
    app.state.login_limiter = LoginLimiter(settings.login_attempts, settings.login_window_s)
    app.state.otlp_health = spans.health if spans is not None else lambda: spans_off
    install_error_handlers(app)
    if spans is not None:
        app.add_middleware(TraceparentMiddleware)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.request_read_timeout_s,
        max_depth=settings.max_body_depth,
    )
    if isinstance(ws.index, RefIndex):
        app.add_middleware(refmode.PinSnapshot, index=ws.index)
    install_docs(app)
    app.include_router(meta.router)
    app.include_router(meta.run_router)
    # Routes under /v1/ui/prompts/{id}/... go before the prompts router, whose
    # /v1/ui/prompts/{id:path} would otherwise take them.
    app.include_router(completions.router)
    app.include_router(completions.ui_router)
    logs.install(app)
    evals.install(app)
    app.include_router(prompts.router)
    app.include_router(keys.router)
    app.include_router(auth.router)
    app.include_router(hooks.router)
    install_web(app)  # the pages at `/`, after every API route
    return app


# A query, path or header parameter that fails its type or bounds is bad input (400), named
# by itself; a body that fails its schema is a 422.
PARAMETER_LOCATIONS = ("query", "path", "header")


def _bad_parameters(errors: Any) -> JSONResponse:
    parts = []
    for err in errors[:5]:
        name = str(err.get("loc", ("", "?"))[-1])
        value = err.get("input")
        shown = clipped(repr(value), 60)
        parts.append(f"{name}: {err.get('msg')} (got {shown})")
    param = str(errors[0].get("loc", ("", None))[-1])
    return error_response(400, "Invalid parameter " + "; ".join(parts), "invalid_parameter", param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LlmkitError)
    async def llmkit_error(request: Request, exc: LlmkitError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if errors and all(err.get("loc", ("body",))[0] in PARAMETER_LOCATIONS for err in errors):
            return _bad_parameters(errors)
        parts = []
        param = None
        for err in errors[:5]:
            if err.get("type") == "json_invalid":
                # Its loc is ("body", <character position>), which names no parameter.
                reason = (err.get("ctx") or {}).get("error", "")
                position = err.get("loc", ("body", "?"))[-1]
                param = param or "body"
                parts.append(f"body is not valid JSON (at character {position}: {reason})")
                continue
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
            where = ".".join(loc) or "body"
            param = param or where
            parts.append(f"{where}: {err.get('msg')}")
        message = "Invalid request: " + "; ".join(parts)
        return error_response(422, message, "validation_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "Request failed"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No route {request.method} {request.url.path}"
        return error_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"Internal error: {type(exc).__name__}", "internal_error")
