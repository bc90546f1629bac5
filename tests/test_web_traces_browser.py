"""The traces pages in a real browser: headless chromium (Playwright) against a real
`llmkit serve`, with calls made through the API by a program holding a run key, against the
offline echo model. Each journey checks what the pages show, saves a screenshot of each, and
checks that no page fetched anything from another host."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.api_fixtures import SEED_FILES
from tests.browser_fixtures import OpenTab, Tab
from tests.helpers import ServerProcess, init_repo, serving

ECHO_YAML = "models:\n  default:\n    model: echo\n"
HOSTILE = "<img src=x onerror=alert(1)>"


@dataclass(frozen=True)
class Site:
    server: ServerProcess
    run_key: str

    @property
    def url(self) -> str:
        return self.server.url

    def call(self, prompt: str, variables: dict[str, str], stream: bool = False) -> str:
        """Run `prompt` as a program does, with the run key; the completion id."""
        body: dict[str, Any] = {"model": prompt, "messages": [], "variables": variables}
        answered = httpx.post(
            f"{self.server.v1}/chat/completions",
            headers={"Authorization": f"Bearer {self.run_key}"},
            json={**body, "stream": stream},
            timeout=30,
        )
        assert answered.status_code == 200, answered.text
        found = re.search(r'"id":\s*"(chatcmpl-\d+)"', answered.text)
        assert found is not None, answered.text
        return found.group(1)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`llmkit serve` over the seeded repository, `default` being the echo model."""
    root = tmp_path_factory.mktemp("traces")
    repo = init_repo(root / "repo", {**SEED_FILES, "llmkit.yaml": ECHO_YAML})
    with serving(repo.root, root) as server:
        run_key = server.create_key("a program")
        yield Site(server, run_key)


def signed_in(open_tab: OpenTab, site: Site, path: str) -> Tab:
    """A tab that reached `path` as a stranger, was sent to sign in, and came back."""
    tab = open_tab(site.url)
    tab.go(path)
    assert tab.path().startswith("/sign-in?next="), tab.page.url
    tab.page.get_by_label("Admin API key").fill(site.server.admin_key)
    tab.page.get_by_role("button", name="Sign in").click()
    tab.page.wait_for_url(site.url + path)
    return tab


def test_run_a_prompt_then_find_its_trace_by_prompt_and_read_it(
    open_tab: OpenTab, site: Site
) -> None:
    from playwright.sync_api import expect

    ours = site.call("hello", {"personality": f"curious {HOSTILE}", "question": "Why is it blue?"})
    other = site.call("support/triage", {"ticket": "My card was charged twice"}, stream=True)

    tab = signed_in(open_tab, site, "/traces")
    page = tab.page
    rows = page.locator("table.traces tbody tr")
    expect(rows.first).to_contain_text("support/triage")
    ours_link = page.get_by_role("link", name=re.compile(rf"^#{ours.removeprefix('chatcmpl-')}\b"))
    expect(ours_link).to_be_visible()
    tab.shot("traces")

    page.get_by_label("Prompt").fill("hello")
    page.get_by_label("Status").select_option("ok")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r".*/traces\?prompt=hello&.*status=ok"))
    expect(rows).to_have_count(1)
    row = rows.first
    expect(row).to_contain_text("hello v1")
    expect(row).to_contain_text("echo")
    expect(row).to_contain_text("✓ ok")
    expect(row).to_contain_text("api")
    expect(page.get_by_role("status")).to_contain_text("1 call match")
    shown = page.locator("table.traces tbody th a").all_inner_texts()
    assert [text.split()[0] for text in shown] == [f"#{ours.removeprefix('chatcmpl-')}"]
    tab.shot("traces-filtered")

    row.get_by_role("link", name=re.compile(r"^#\d+")).click()
    page.wait_for_url(f"{site.url}/traces/{ours.removeprefix('chatcmpl-')}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("ok")
    system = page.get_by_role("article", name="system message")
    expect(system).to_contain_text(f"a curious {HOSTILE} personality.")  # as text, escaped
    expect(page.get_by_role("article", name="user message")).to_have_text("user Why is it blue?")
    answer = page.get_by_role("article", name="assistant answer")
    expect(answer).to_contain_text("user: Why is it blue?")
    facts = page.locator("dl.trace-facts")
    expect(facts).to_contain_text(re.compile(r"Tokens in\s*\d+"))
    expect(facts).to_contain_text(re.compile(r"Tokens out\s*\d+"))
    expect(facts).to_contain_text(re.compile(r"Provider\s*echo"))
    assert page.locator("img").count() == 0  # the hostile tag stayed text
    page.locator("summary", has_text="The request as logged").click()
    expect(page.locator("details.source").first).to_contain_text('"messages"')
    tab.shot("trace")

    # The version link goes to the prompt page at the version the call ran.
    page.get_by_role("link", name="v1", exact=True).click()
    page.wait_for_url(site.url + "/prompts/hello?version=1")
    expect(page.get_by_role("heading", level=1)).to_have_text("hello")

    # The streamed call, opened by its completion id, shows its time to first token.
    tab.go(f"/traces/{other}")
    expect(page.locator("dl.trace-facts")).to_contain_text(
        re.compile(r"Time to first token\s*[\d.,]+ ms")
    )
    expect(page.get_by_role("article", name="assistant answer")).to_contain_text(
        "My card was charged twice"
    )
    tab.shot("trace-streamed")
    assert tab.foreign_requests() == []
    assert tab.broken == []


def test_page_older_and_newer_and_a_missing_trace(open_tab: OpenTab, site: Site) -> None:
    from playwright.sync_api import expect

    for i in range(3):
        site.call("hello", {"personality": "brief", "question": f"page {i}"})
    tab = signed_in(open_tab, site, "/traces?limit=2")
    page = tab.page
    first = page.locator("table.traces tbody th a").all_inner_texts()
    assert len(first) == 2
    page.get_by_role("link", name="Older →").first.click()
    page.wait_for_url(re.compile(r".*/traces\?limit=2&cursor=[\w-]+$"))
    second = page.locator("table.traces tbody th a").all_inner_texts()
    assert len(second) == 2 and not set(first) & set(second)
    tab.shot("traces-older")
    page.get_by_role("link", name="← Newer").first.click()
    page.wait_for_url(re.compile(r".*/traces\?limit=2&before=[\w-]+$"))
    assert page.locator("table.traces tbody th a").all_inner_texts() == first
    expect(page.get_by_role("link", name="← Newer")).to_have_count(0)

    tab.go("/traces?status=bogus")
    expect(page.get_by_role("alert")).to_contain_text("Status: Unknown status 'bogus'")
    tab.shot("traces-bad-filter")
    tab.go("/traces/chatcmpl-987654321")
    expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
    expect(page.get_by_role("alert")).to_contain_text("No log entry with id 987654321")
    tab.shot("trace-missing")
    assert tab.foreign_requests() == []
    assert tab.broken == []
