"""The web UI as one piece: every area's router, mounted after the API's routes, and the
stylesheet and scripts under `/static/`."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from starlette.staticfiles import StaticFiles

from llmkit.web import evals, numbers, playground, restore, routes, traces
from llmkit.web.pages import HERE, STATIC_URL, Pages

# One line per area of the UI.
ROUTERS: list[APIRouter] = [
    routes.router,
    evals.router,
    numbers.router,
    restore.router,
    playground.router,
    traces.router,
]


def install(app: FastAPI) -> None:
    """The pages at `/` and their stylesheet and scripts under `/static/`."""
    app.state.web_pages = Pages()
    app.mount(STATIC_URL, StaticFiles(directory=HERE / "static"), name="web-static")
    for router in ROUTERS:
        app.include_router(router)
