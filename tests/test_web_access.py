"""Every page of the web UI, checked in a real browser for what people who use a keyboard, a
screen reader or weak eyesight need: a label on every control, a name on every link and button,
a text alternative on every chart, one heading to start from, a skip link as the first stop of
the keyboard, and text whose colours have a contrast of at least 4.5:1 (3:1 for large text, as
WCAG 2.1 AA asks), measured on the colours the browser actually painted."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.browser_fixtures import OpenTab, Tab
from tests.eval_fixtures import EvalRepo, feature_files
from tests.helpers import ServerProcess, invoke, serving
from tests.test_web_ui import sign_in


@dataclass(frozen=True)
class Site:
    server: ServerProcess
    repo: EvalRepo


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A repository with every kind of content a page shows: two versions, a branch, an eval
    run with a base, and a call in the run log."""
    root = tmp_path_factory.mktemp("web-access")
    repo = EvalRepo.create(root / "repo")
    repo.branch("feature", feature_files(), "greet says goodbye; farewell")
    ran = invoke("eval", "--base", "main", cwd=repo.root)
    assert ran.exit_code in (0, 1), ran.stdout + ran.stderr
    with serving(repo.root, root) as server:
        called = httpx.post(
            f"{server.v1}/chat/completions",
            headers=server.headers(),
            json={"model": "greet", "variables": {"personality": "calm", "question": "Hi?"}},
        )
        assert called.status_code == 200, called.text
        yield Site(server, repo)


# Each control without an accessible name, each link or button without a name, each <svg> a
# screen reader can neither read nor skip, and the h1 count.
NAMES_JS = """() => {
  const named = (el) => (el.getAttribute('aria-label') || '').trim()
    || (el.getAttribute('aria-labelledby') || '').trim() || (el.getAttribute('title') || '').trim();
  const describe = (el) => el.outerHTML.slice(0, 160);
  const unlabelled = [...document.querySelectorAll('input, select, textarea')]
    .filter((el) => el.type !== 'hidden' && !['submit', 'button', 'reset'].includes(el.type))
    .filter((el) => !(el.labels && el.labels.length) && !named(el)).map(describe);
  const nameless = [...document.querySelectorAll('a[href], button, input[type=submit]')]
    .filter((el) => !(el.innerText || el.value || '').trim() && !named(el)).map(describe);
  const mute = [...document.querySelectorAll('svg')]
    .filter((el) => el.getAttribute('aria-hidden') !== 'true')
    .filter((el) => !named(el) && !el.querySelector(':scope > title')).map(describe);
  return {unlabelled, nameless, mute, h1: document.querySelectorAll('h1').length,
          lang: document.documentElement.lang};
}"""

# Every visible element holding text of its own (not inside an <svg>): its colour, the first
# opaque background behind it, and whether its text is large.
COLOURS_JS = """() => {
  const rgba = (text) => (text.match(/[\\d.]+/g) || []).map(Number);
  const background = (el) => {
    for (let node = el; node; node = node.parentElement) {
      const colour = rgba(getComputedStyle(node).backgroundColor);
      if (colour.length === 3 || (colour.length === 4 && colour[3] > 0)) return colour.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const found = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (el.closest('svg') || el.closest('.visually-hidden, .skip')) continue;
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || style.display === 'none') continue;
    const size = parseFloat(style.fontSize);
    const bold = parseInt(style.fontWeight, 10) >= 700;
    found.push({
      text: el.textContent.trim().slice(0, 40), tag: el.tagName.toLowerCase(),
      fg: rgba(style.color).slice(0, 3), bg: background(el),
      large: size >= 24 || (bold && size >= 18.66),
    });
  }
  return found;
}"""


def luminance(rgb: list[float]) -> float:
    """WCAG 2.1 relative luminance of an sRGB colour."""

    def channel(value: float) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(fg: list[float], bg: list[float]) -> float:
    light, dark = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_contrast_is_computed_as_wcag_defines_it() -> None:
    assert contrast([0, 0, 0], [255, 255, 255]) == pytest.approx(21.0)
    assert contrast([255, 255, 255], [255, 255, 255]) == pytest.approx(1.0)
    assert contrast([118, 118, 118], [255, 255, 255]) == pytest.approx(4.54, abs=0.01)


def low_contrast(found: list[dict[str, Any]]) -> list[str]:
    problems = []
    for item in found:
        ratio = contrast(item["fg"], item["bg"])
        if ratio < (3.0 if item["large"] else 4.5):
            problems.append(f"{item['tag']} {item['text']!r}: {ratio:.2f}:1")
    return problems


def pages_of(tab: Tab) -> list[str]:
    """Every kind of page, with real ids read from the pages that link to them."""
    tab.go("/evals/greet")
    run = tab.page.locator("a[href^='/evals/greet/runs/']").first.get_attribute("href")
    tab.go("/traces")
    trace = tab.page.locator("a[href^='/traces/']").first.get_attribute("href")
    assert run and trace
    return [
        "/",
        "/?q=greet",
        "/prompts/greet",
        "/history/greet",
        "/diff/greet?from=main&to=feature",
        "/edit/greet",
        "/playground/greet",
        "/traces",
        trace,
        "/evals",
        "/evals/greet",
        run,
        "/numbers/greet",
        "/keys",
        "/traces/999999999",  # an error page
    ]


def test_every_page_names_its_controls_and_keeps_its_text_readable(
    open_tab: OpenTab, site: Site
) -> None:
    tab = open_tab(site.server.url)
    tab.go("/sign-in")
    checked = {"/sign-in": tab.page.evaluate(NAMES_JS)}
    colours = {"/sign-in": low_contrast(tab.page.evaluate(COLOURS_JS))}
    sign_in(tab, site.server.admin_key)
    tab.page.wait_for_url(site.server.url + "/")
    for path in pages_of(tab):
        tab.go(path)
        tab.page.wait_for_load_state("load")
        checked[path] = tab.page.evaluate(NAMES_JS)
        colours[path] = low_contrast(tab.page.evaluate(COLOURS_JS))
        tab.shot("access-" + path)
    for path, found in checked.items():
        assert found["lang"] == "en", path
        assert found["h1"] == 1, (path, found["h1"])
        assert found["unlabelled"] == [], (path, found["unlabelled"])
        assert found["nameless"] == [], (path, found["nameless"])
        assert found["mute"] == [], (path, found["mute"])
    assert {path: bad for path, bad in colours.items() if bad} == {}
    assert tab.foreign_requests() == []


def test_the_keyboard_starts_at_the_skip_link_and_reaches_the_search(
    open_tab: OpenTab, site: Site
) -> None:
    tab = open_tab(site.server.url)
    sign_in(tab, site.server.admin_key)
    tab.page.wait_for_url(site.server.url + "/")
    tab.page.keyboard.press("Tab")
    focused = tab.page.evaluate("() => document.activeElement.textContent.trim()")
    assert focused == "Skip to content"
    tab.page.keyboard.press("Enter")
    assert tab.page.evaluate("() => document.activeElement.id") == "main"
    for _ in range(10):  # bounded: the search box is the first control of the main content
        tab.page.keyboard.press("Tab")
        if tab.page.evaluate("() => document.activeElement.id") == "q":
            break
    assert tab.page.evaluate("() => document.activeElement.id") == "q"
    tab.page.keyboard.type("greet")
    tab.page.keyboard.press("Enter")
    tab.page.wait_for_url(re.compile(r".*/\?q=greet$"))
    assert tab.page.get_by_role("link", name="greet").count() >= 1
