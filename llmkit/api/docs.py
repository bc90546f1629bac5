"""The API's own documentation: the OpenAPI document, with the request bodies that handlers
read themselves, and Swagger UI at /docs, served from llmkit's own assets (no CDN: the page
works offline, and no third party learns who reads it)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from pydantic import TypeAdapter
from starlette.staticfiles import StaticFiles

from llmkit.api.schemas import (
    ChatCompletionRequest,
    EvalCaseWrite,
    EvalScoreUpdate,
    PromptExecuteRequest,
)

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
# The files of swagger-ui's dist that the page loads.
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
SWAGGER_ICON = "favicon-32x32.png"
# Bodies read by their handlers (see deps.parse_body) rather than by FastAPI, so FastAPI does not
# know their schemas: named here, referenced by the routes' `openapi_extra`.
SELF_READ_BODIES: dict[str, Any] = {
    "ChatCompletionRequest": ChatCompletionRequest,
    "PromptExecuteRequest": PromptExecuteRequest,
    "EvalCaseWrite": EvalCaseWrite,
    "EvalScoreUpdate": EvalScoreUpdate,
}


def install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and its assets under /docs/assets; the app must be built with
    `docs_url=None` and `redoc_url=None` (FastAPI's own pages load from a CDN)."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(ASSETS_URL, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS_URL}/{SWAGGER_JS}",
            swagger_css_url=f"{ASSETS_URL}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{ASSETS_URL}/{SWAGGER_ICON}",
            swagger_ui_parameters={"persistAuthorization": False},
        )

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, body in SELF_READ_BODIES.items():
            schema = TypeAdapter(body).json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[name] = schema
        return document

    app.openapi = openapi  # type: ignore[method-assign]
