"""create_app: the FastAPI app over one Workspace. No module-level state: each call builds a
new app, so tests build their own."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmkit import __version__
from llmkit.api.limits import BodySizeLimit
from llmkit.api.routes import completions, evals, keys, logs, meta, prompts
from llmkit.config import Settings
from llmkit.errors import LlmkitError
from llmkit.workspace import Workspace

log = logging.getLogger("llmkit.api")

STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": STATUS_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def create_app(settings: Settings | None = None, workspace: Workspace | None = None) -> FastAPI:
    if workspace is None:
        if settings is None:
            raise ValueError("create_app needs settings or a workspace")
        workspace = Workspace(settings)
    ws = workspace
    settings = ws.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ws.recover_writes()  # before the first sync, so a half-done write is never served
        ws.index.sync()
        watcher = None
        if settings.watch:
            from llmkit.watch import Watcher

            watcher = Watcher(ws.index, settings.repo, debounce_s=settings.debounce_ms / 1000)
            watcher.start()
        app.state.watcher = watcher
        started = getattr(app.state, "on_startup", None)
        for hook in started or []:
            await hook(app)
        try:
            yield
        finally:
            for hook in getattr(app.state, "on_shutdown", []):
                await hook(app)
            if watcher is not None:
                watcher.stop()
            ws.close()

    app = FastAPI(
        title="llmkit",
        version=__version__,
        description="Prompts as code: prompt files in git, executed through an OpenAI-compatible API.",
        lifespan=lifespan,
    )
    app.state.ws = ws
    app.state.settings = settings
    app.state.on_startup = []
    app.state.on_shutdown = []
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.request_read_timeout_s
    )
    app.include_router(meta.router)
    app.include_router(meta.run_router)
    # Routes under /v1/ui/prompts/{id}/... go before the prompts router, whose
    # /v1/ui/prompts/{id:path} would otherwise take them.
    completions.install(app)
    logs.install(app)
    evals.install(app)
    app.include_router(prompts.router)
    app.include_router(keys.router)
    return app


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LlmkitError)
    async def llmkit_error(request: Request, exc: LlmkitError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
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
        return JSONResponse(error_body(422, message, "validation_error", param), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "Request failed"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No route {request.method} {request.url.path}"
        return JSONResponse(
            error_body(exc.status_code, detail, code=None),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, f"Internal error: {type(exc).__name__}", "internal_error"), status_code=500)
