"""Fixtures for the web UI's browser tests: one headless chromium for the whole session, driven
by Playwright, and tabs that record every request their pages make and save screenshots.

Playwright's own browser download is not used: the tests drive the system's chromium
(`apt-get install -y chromium`; `.ci/run` installs it), or the one `LLMKIT_TEST_CHROMIUM`
names. Without one the browser tests fail, loudly, rather than skip. Screenshots go under the
test's tmp dir, or under `LLMKIT_TEST_SCREENSHOTS` when that is set.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Response

CHROMIUM_ENV = "LLMKIT_TEST_CHROMIUM"
SCREENSHOTS_ENV = "LLMKIT_TEST_SCREENSHOTS"
# Long enough for a loaded machine; a page of ours answers in milliseconds.
ACTION_TIMEOUT_MS = 30_000


def chromium_path() -> str:
    """The chromium the tests drive; fails the test when there is none."""
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")
    if not path or not Path(path).exists():
        pytest.fail(
            "The web UI's browser tests need chromium: `apt-get install -y chromium`, or set"
            f" {CHROMIUM_ENV} to a chromium executable (found none on PATH"
            + (f", and {CHROMIUM_ENV}={path!r} does not exist" if path else "")
            + ")"
        )
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless chromium shared by the browser tests of one module. Not of the session:
    while Playwright's sync API is open it keeps an event loop running in the main thread, and
    every later test of the same worker that calls `asyncio.run` would fail."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Tab:
    """A page of a browser context (its own cookies) against one server."""

    page: Page
    base_url: str
    shots: Path
    requests: list[str] = field(default_factory=list)
    # (status, url) of each stylesheet, script, image or font that failed to load.
    broken: list[tuple[int, str]] = field(default_factory=list)

    def go(self, path: str) -> None:
        self.page.goto(self.base_url + path)

    def path(self) -> str:
        """The page's path and query, as the server sees them."""
        parts = urlsplit(self.page.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def shot(self, name: str) -> Path:
        """Save a screenshot of the whole page as NAME.png."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        target = self.shots / f"{slug}.png"
        self.page.screenshot(path=str(target), full_page=True)
        return target

    def foreign_requests(self) -> list[str]:
        """Every request the pages made to a host other than the server's."""
        own = urlsplit(self.base_url).netloc

        def local(url: str) -> bool:
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob", "about"):
                return True  # made in the page, sent nowhere
            return parts.scheme in ("http", "https") and parts.netloc == own

        return [url for url in self.requests if not local(url)]


OpenTab = Callable[..., Tab]
ASSET_TYPES = ("stylesheet", "script", "image", "font")


def _note_broken(tab: Tab, response: Response) -> None:
    if response.status >= 400 and response.request.resource_type in ASSET_TYPES:
        tab.broken.append((response.status, response.url))


@pytest.fixture
def open_tab(browser: Browser, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[OpenTab]:
    """open_tab(base_url, context=None, **options) -> a Tab in a new browser context (its own
    cookies; `options` as Playwright's new_context takes them, e.g. java_script_enabled=False),
    or in the context of another tab (`context=tab.page.context`, the same signed-in browser).
    Every request any of its pages makes is recorded in `tab.requests`."""
    root = os.environ.get(SCREENSHOTS_ENV)
    shots = Path(root) / request.node.name if root else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    contexts: list[BrowserContext] = []

    def open_(base_url: str, context: BrowserContext | None = None, **options: object) -> Tab:
        if context is None:
            context = browser.new_context(**options)
            context.set_default_timeout(ACTION_TIMEOUT_MS)
            contexts.append(context)
        tab = Tab(context.new_page(), base_url, shots)
        tab.page.on("request", lambda sent: tab.requests.append(sent.url))
        tab.page.on("response", lambda answer: _note_broken(tab, answer))
        return tab

    yield open_
    for context in contexts:
        context.close()
