"""The playground in a real browser: headless chromium (Playwright) against a real `llmkit
serve`, whose `slow` alias points at the fake upstream on 127.0.0.1, which sends its answer a
few characters at a time, so that the page can be seen filling in while the stream runs. Each
journey saves screenshots and checks that no page fetched anything from another host."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.api_fixtures import HELLO_MD
from tests.browser_fixtures import OpenTab, Tab
from tests.fake_upstream import FakeUpstream
from tests.helpers import ServerProcess, init_repo, poll, serving
from tests.test_web_ui import sign_in

ANSWER = "Streams arrive a few letters at a time, and this one has an ending."
# Seconds between chunks: long enough to see a stream half done, short enough to wait for.
CHUNK_DELAY_S = 0.25
CHUNK_CHARS = 6
CHAT_MD = """\
---
model: default
chat: true
---
<!-- role:system -->
You recommend one of:
{% for item in items %}- {{ item }}
{% endfor %}
"""


@dataclass(frozen=True)
class Site:
    server: ServerProcess
    upstream: FakeUpstream

    @property
    def url(self) -> str:
        return self.server.url

    def log_entry(self, log_id: str) -> dict[str, object]:
        found = httpx.get(f"{self.server.v1}/ui/logs/{log_id}", headers=self.server.headers())
        assert found.status_code == 200, found.text
        return found.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`llmkit serve` over a repository whose `slow` alias is the fake upstream."""
    root = tmp_path_factory.mktemp("playground")
    upstream = FakeUpstream().start()
    config = (
        "models:\n"
        "  default: {model: echo}\n"
        f"  slow: {{model: openai/fake-model, api_base: '{upstream.url}', api_key_env: null}}\n"
    )
    files = {
        "llmkit.yaml": config,
        "prompts/hello.md": HELLO_MD,
        "prompts/shop.md": CHAT_MD,
        ".gitignore": ".llmkit/\n",
    }
    repo = init_repo(root / "repo", files)
    try:
        with serving(repo.root, root) as server:
            yield Site(server, upstream)
    finally:
        upstream.stop()


def playground(open_tab: OpenTab, site: Site, key: str, **options: object) -> Tab:
    """A signed-in tab on the playground of `key`, reached from the prompt's page."""
    tab = open_tab(site.url, **options)
    sign_in(tab, site.server.admin_key, f"/prompts/{key}")
    tab.page.wait_for_url(f"{site.url}/prompts/{key}")
    tab.page.get_by_role("link", name="Playground").click()
    tab.page.wait_for_url(f"{site.url}/playground/{key}")
    return tab


def output_text(tab: Tab) -> str:
    return tab.page.locator("#pg-output").inner_text()


def test_a_run_streams_into_the_page_then_shows_its_figures_and_trace(
    open_tab: OpenTab, site: Site
) -> None:
    from playwright.sync_api import expect

    tab = playground(open_tab, site, "hello")
    page = tab.page
    expect(page.get_by_role("heading", level=1)).to_have_text("Playground: hello")
    page.get_by_label("personality", exact=True).fill("patient")
    page.get_by_label("question", exact=True).fill("How do streams arrive?")
    page.get_by_label("Model").select_option("slow")
    tab.shot("playground-filled")

    site.upstream.enqueue(ANSWER, fault="slow", delay=CHUNK_DELAY_S, chunk_chars=CHUNK_CHARS)
    page.get_by_role("button", name="Run").click()
    # Part of the answer, then more of it, while the rest is still on its way.
    page.wait_for_function(
        "full => { const t = document.getElementById('pg-output').textContent;"
        " return t.length > 0 && t !== full }",
        arg=ANSWER,
    )
    first = output_text(tab)
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    expect(page.locator("#pg-figures")).to_be_hidden()  # figures come when the stream ends
    tab.shot("playground-streaming")
    page.wait_for_function(
        "([seen, full]) => { const t = document.getElementById('pg-output').textContent;"
        " return t.length > seen && t !== full }",
        arg=[len(first), ANSWER],
    )
    later = output_text(tab)
    assert ANSWER.startswith(first) and ANSWER.startswith(later) and len(later) > len(first)

    expect(page.locator("#pg-output")).to_have_text(ANSWER)
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    trace = page.locator("#pg-trace a")
    expect(trace).to_have_attribute("href", re.compile(r"^/traces/\d+$"))
    expect(page.locator("#pg-trace")).to_contain_text("(ok)")  # read from the run log
    expect(page.locator("#pg-tokens")).to_have_text(re.compile(r"^\d+ in / \d+ out$"))
    expect(page.locator("#pg-latency")).to_have_text(re.compile(r"^[\d,]+ ms$"))
    expect(page.locator("#pg-ttft")).to_have_text(re.compile(r"^[\d,]+ ms$"))
    expect(page.locator("#pg-cost")).not_to_have_text("")
    tab.shot("playground-answered")

    log_id = (trace.get_attribute("href") or "").rsplit("/", 1)[-1]
    entry = site.log_entry(log_id)
    assert (entry["status"], entry["stream"], entry["model_name"]) == ("ok", True, "slow")
    assert entry["response"] == ANSWER
    sent = site.upstream.chat_requests[-1].body
    assert sent["model"] == "fake-model" and sent["stream"] is True
    assert sent["messages"][0]["content"].endswith("a patient personality.")
    assert tab.foreign_requests() == []
    assert tab.broken == []
    assert any(url.endswith("/static/playground.js") for url in tab.requests)


def test_stop_ends_the_stream_and_the_call_is_logged_cancelled(
    open_tab: OpenTab, site: Site
) -> None:
    from playwright.sync_api import expect

    tab = playground(open_tab, site, "hello")
    page = tab.page
    page.get_by_label("personality", exact=True).fill("brief")
    page.get_by_label("question", exact=True).fill("Tell me everything.")
    page.get_by_label("Model").select_option("slow")
    long_answer = "word " * 200
    site.upstream.enqueue(long_answer, fault="slow", delay=CHUNK_DELAY_S, chunk_chars=5)
    page.get_by_role("button", name="Run").click()
    page.wait_for_function("() => document.getElementById('pg-output').textContent.length > 0")
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("alert")).to_contain_text("Stopped")
    stopped = output_text(tab)
    assert 0 < len(stopped) < len(long_answer.strip())
    href = page.locator("#pg-trace a").get_attribute("href") or ""
    log_id = href.rsplit("/", 1)[-1]
    assert log_id.isdigit(), href

    def cancelled() -> bool:
        found = httpx.get(f"{site.server.v1}/ui/logs/{log_id}", headers=site.server.headers())
        return found.status_code == 200 and found.json()["status"] == "cancelled"

    poll(cancelled)
    tab.shot("playground-stopped")
    assert tab.foreign_requests() == []


def test_errors_are_the_apis_own_words(open_tab: OpenTab, site: Site) -> None:
    from playwright.sync_api import expect

    tab = playground(open_tab, site, "shop")
    page = tab.page
    page.get_by_label("Version").select_option("main")
    expect(page.locator("#pg-version-hint")).to_contain_text("load this one first")
    page.get_by_label("Version").select_option("")
    expect(page.locator("#pg-version-hint")).to_have_text("")
    items = page.get_by_label("items (a list or object)", exact=True)
    expect(page.get_by_label("JSON value for items")).to_be_checked()
    items.fill("[tea, cake")
    page.get_by_role("button", name="Run").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Variable 'items' is marked as JSON but is not a JSON value")
    expect(items).to_be_focused()
    tab.shot("playground-bad-json")

    items.fill("")
    page.get_by_role("button", name="Run").click()
    expect(alert).to_contain_text("Missing variables")
    expect(alert).to_contain_text("items")
    tab.shot("playground-missing-variable")

    items.fill('["tea", "cake"]')
    page.get_by_label("Turn 1 text").fill("Which one?")
    page.get_by_role("button", name="Add a turn").click()
    expect(page.get_by_label("Turn 2", exact=True)).to_have_value("assistant")
    page.get_by_label("Turn 2 text").fill("Tea.")
    page.get_by_role("button", name="Add a turn").click()
    page.get_by_label("Turn 3 text").fill("Why? <img src=/nothing.png> <script>alert(1)</script>")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#pg-output")).to_contain_text(
        "user: Why? <img src=/nothing.png> <script>alert(1)</script>"
    )
    expect(page.locator("#pg-output img, #pg-output script")).to_have_count(0)  # text, not HTML
    expect(page.locator("#pg-output")).to_contain_text("assistant: Tea.")
    expect(page.locator("#pg-trace a")).to_have_attribute("href", re.compile(r"^/traces/\d+$"))
    expect(alert).to_be_hidden()
    expect(page.get_by_role("status").filter(has_text="complete")).to_have_count(1)
    tab.shot("playground-chat")
    page.get_by_role("button", name="Continue the conversation").click()
    expect(page.get_by_label("Turn 4", exact=True)).to_have_value("assistant")
    expect(page.get_by_label("Turn 4 text")).to_have_value(re.compile(r"^system: You recommend"))
    expect(page.get_by_label("Turn 5 text")).to_be_focused()
    expect(page.get_by_role("button", name="Continue the conversation")).to_be_hidden()
    assert tab.foreign_requests() == []


def test_without_javascript_the_form_runs_the_prompt(open_tab: OpenTab, site: Site) -> None:
    from playwright.sync_api import expect

    tab = playground(open_tab, site, "shop", java_script_enabled=False)
    page = tab.page
    page.get_by_label("items (a list or object)", exact=True).fill('["tea", "cake"]')
    page.get_by_label("Turn 1 text").fill("Which one?")
    page.get_by_role("button", name="Add a turn").click()
    expect(page.get_by_label("Turn 1 text")).to_have_value("Which one?")
    page.get_by_label("Turn 2 text").fill("")
    page.get_by_role("button", name="Run").click()
    output = page.locator("#pg-output")
    expect(output).to_contain_text("system: You recommend one of:")
    expect(output).to_contain_text("user: Which one?")
    expect(page.locator("#pg-ttft")).to_have_text("not streamed")
    expect(page.locator("#pg-tokens")).to_have_text(re.compile(r"^\d+ in / \d+ out$"))
    trace = page.locator("#pg-trace a")
    expect(trace).to_have_attribute("href", re.compile(r"^/traces/\d+$"))
    tab.shot("playground-without-javascript")
    entry = site.log_entry((trace.get_attribute("href") or "").rsplit("/", 1)[-1])
    assert (entry["status"], entry["source"], entry["stream"]) == ("ok", "ui", False)
    page.get_by_role("button", name="Continue the conversation").click()
    expect(page.get_by_label("Turn 2", exact=True)).to_have_value("assistant")
    expect(page.get_by_label("Turn 2 text")).to_have_value(re.compile(r"^system: You recommend"))
    expect(page.get_by_label("Turn 3", exact=True)).to_have_value("user")
    assert tab.foreign_requests() == []
