"""The web UI in a real browser: headless chromium (Playwright) against a real `llmkit serve`
on a real repository, one server for the module. Each journey checks what the page shows, saves
a screenshot of every page it reaches, and checks that no page fetched anything from another
host."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.api_fixtures import HELLO_MD, seeded_repo
from tests.browser_fixtures import OpenTab, Tab
from tests.helpers import AUTHOR_NAME, Repo, ServerProcess, serving

HELLO_V2 = HELLO_MD.replace("a helpful assistant", "a friendly assistant")


@dataclass(frozen=True)
class Site:
    server: ServerProcess
    repo: Repo
    run_key: str

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`llmkit serve` over the seeded repository, with a second version of `hello`."""
    root = tmp_path_factory.mktemp("web")
    repo = Repo(seeded_repo(root / "repo"))
    repo.write("prompts/hello.md", HELLO_V2)
    repo.commit("Make hello friendlier")
    with serving(repo.root, root) as server:
        run_key = server.create_key("a program")
        yield Site(server, repo, run_key)


def sign_in(tab: Tab, key: str, path: str = "/") -> None:
    """Reach `path` as a stranger, get sent to sign-in, sign in with `key`."""
    tab.go(path)
    assert tab.path().startswith("/sign-in?next="), tab.page.url
    tab.page.get_by_label("Admin API key").fill(key)
    tab.page.get_by_role("button", name="Sign in").click()


def signed_in(open_tab: OpenTab, site: Site, path: str = "/") -> Tab:
    tab = open_tab(site.url)
    sign_in(tab, site.server.admin_key, path)
    tab.page.wait_for_url(re.compile(re.escape(site.url + path) + r"$"))
    return tab


def test_sign_in_refuses_a_run_key_and_admits_an_admin_key(open_tab: OpenTab, site: Site) -> None:
    from playwright.sync_api import expect

    tab = open_tab(site.url)
    sign_in(tab, site.run_key, "/prompts/hello")
    alert = tab.page.get_by_role("alert")
    expect(alert).to_contain_text("Only an admin key can sign in")
    expect(alert).to_contain_text("scope 'run'")
    assert tab.path() == "/sign-in?next=%2Fprompts%2Fhello"
    tab.shot("sign-in-refused")
    assert tab.page.context.cookies() == []

    tab.page.get_by_label("Admin API key").fill(site.server.admin_key)
    tab.page.get_by_role("button", name="Sign in").click()
    tab.page.wait_for_url(site.url + "/prompts/hello")
    expect(tab.page.get_by_role("heading", level=1)).to_have_text("hello")
    expect(tab.page.get_by_text("Signed in as")).to_contain_text("admin")
    cookie = {c["name"]: c for c in tab.page.context.cookies()}["llmkit_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    tab.shot("prompt-after-sign-in")

    tab.page.get_by_role("button", name="Sign out").click()
    tab.page.wait_for_url(re.compile(r".*/sign-in$"))
    tab.go("/keys")
    assert tab.path() == "/sign-in?next=%2Fkeys"
    assert tab.foreign_requests() == []


def test_with_javascript_off_sign_in_and_the_pages_still_work(
    open_tab: OpenTab, site: Site
) -> None:
    from playwright.sync_api import expect

    tab = open_tab(site.url, java_script_enabled=False)
    sign_in(tab, site.server.admin_key, "/history/hello")
    tab.page.wait_for_url(site.url + "/history/hello")
    expect(tab.page.locator("table.history tbody tr")).to_have_count(2)
    tab.page.get_by_role("button", name="Compare", exact=True).click()
    tab.page.wait_for_url(site.url + "/diff/hello?from=1&to=2")
    expect(tab.page.locator("table.diff tr.changed")).to_have_count(1)
    tab.shot("diff-without-javascript")
    assert tab.foreign_requests() == []


def test_find_a_prompt_by_search_and_open_it(open_tab: OpenTab, site: Site) -> None:
    from playwright.sync_api import expect

    tab = signed_in(open_tab, site)
    page = tab.page
    expect(page.get_by_role("status")).to_have_text("2 prompts")
    hello = page.locator("li.prompt", has=page.get_by_role("link", name="hello", exact=True))
    expect(hello).to_contain_text("default")
    expect(hello).to_contain_text("v2")
    expect(hello).to_contain_text(f"{AUTHOR_NAME} · ")
    expect(hello).to_contain_text("Make hello friendlier")
    expect(page.locator("details summary", has_text="support/")).to_be_visible()
    tab.shot("prompts")

    # From the keyboard: the skip link comes first, then the search box submits with Enter.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    search = page.get_by_label("Search keys and text")
    search.focus()
    search.fill("sort the TICKET")
    search.press("Enter")
    page.wait_for_url(re.compile(r".*/\?q=sort\+the\+TICKET$"))
    expect(page.get_by_role("status")).to_have_text("1 prompt matching “sort the TICKET”")
    assert page.locator("a.prompt-key").all_inner_texts() == ["triage"]
    tab.shot("search")

    page.get_by_role("link", name="triage").click()
    page.wait_for_url(site.url + "/prompts/support/triage")
    expect(page.get_by_role("heading", level=1)).to_have_text("support/triage")
    variables = page.get_by_role("region", name="Variables")
    assert variables.locator("li").all_inner_texts() == ["ticket"]
    assert page.locator("pre.template mark.expr").all_inner_texts() == ["{{ ticket }}"]
    setting = page.get_by_role("row", name="max_tokens")
    expect(setting).to_contain_text("200")
    user = page.get_by_role("article", name="user message")
    expect(user).to_contain_text("Ticket: {{ ticket }}")
    tab.shot("prompt")
    assert tab.foreign_requests() == []
    assert tab.broken == []
    assert any(url.endswith("/static/llmkit.css") for url in tab.requests)
    assert any(url.endswith("/static/llmkit.js") for url in tab.requests)


def test_history_and_a_side_by_side_diff(open_tab: OpenTab, site: Site) -> None:
    from playwright.sync_api import expect

    tab = signed_in(open_tab, site, "/prompts/hello")
    page = tab.page
    page.get_by_role("link", name="History").click()
    page.wait_for_url(site.url + "/history/hello")
    rows = page.locator("table.history tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("Make hello friendlier")
    expect(rows.nth(1)).to_contain_text("Initial commit")
    expect(rows.nth(1)).to_contain_text(AUTHOR_NAME)
    tab.shot("history")

    page.get_by_label("From").select_option("1")
    page.get_by_label("To", exact=True).select_option("2")
    page.get_by_role("button", name="Compare", exact=True).click()
    page.wait_for_url(site.url + "/diff/hello?from=1&to=2")
    changed = page.locator("table.diff tr.changed")
    expect(changed).to_have_count(1)
    expect(changed.locator("td.old")).to_contain_text("a helpful assistant")
    expect(changed.locator("td.new")).to_contain_text("a friendly assistant")
    expect(page.locator("table.diff tr.same", has_text="model: default")).to_have_count(1)
    tab.shot("diff")

    page.get_by_label("Branch, tag or sha").fill("main")
    page.get_by_role("button", name="Compare with served").click()
    page.wait_for_url(site.url + "/diff/hello?from=main")
    expect(page.get_by_role("status")).to_have_text("The two versions are identical.")
    assert tab.foreign_requests() == []


def test_edit_and_commit_and_a_stale_editor_shows_a_conflict(open_tab: OpenTab, site: Site) -> None:
    from playwright.sync_api import expect

    first = signed_in(open_tab, site, "/edit/support/triage")
    second = open_tab(site.url, context=first.page.context)  # the same browser, another tab
    second.go("/edit/support/triage")
    ours = Path(site.repo.root, "prompts/support/triage.md").read_text("utf-8")
    expect(first.page.get_by_label("The prompt file")).to_have_value(ours)
    first.shot("edit")

    mine = ours.replace("billing, bug or other", "billing, bug, refund or other")
    first.page.get_by_label("The prompt file").fill(mine)
    first.page.get_by_label("Commit message").fill("Add refunds to triage")
    first.page.get_by_label("Your name").fill("Ada Web")
    first.page.get_by_role("button", name="Commit").click()
    first.page.wait_for_url(re.compile(r".*/prompts/support/triage\?committed=[0-9a-f]{40}$"))
    expect(first.page.get_by_role("status")).to_contain_text("Committed as version 2")
    first.shot("committed")
    assert site.repo.git("log", "-1", "--format=%an|%s") == "Ada Web|Add refunds to triage"
    assert site.repo.read("prompts/support/triage.md") == mine
    assert site.repo.status() == ""

    theirs = ours.replace("billing, bug or other", "billing or other")
    second.page.get_by_label("The prompt file").fill(theirs)
    second.page.get_by_label("Commit message").fill("Fewer categories")
    second.page.get_by_role("button", name="Commit").click()
    heading = second.page.get_by_role("heading", name="Not committed")
    expect(heading).to_contain_text("changed while you edited it")
    expect(second.page.get_by_role("alert")).to_contain_text("reload it")
    expect(second.page.get_by_label("The prompt file")).to_have_value(theirs)
    conflict = second.page.locator("section.conflict table.diff tr.changed")
    expect(conflict.locator("td.old")).to_contain_text("bug, refund or other")
    expect(conflict.locator("td.new")).to_contain_text("billing or other")
    second.shot("conflict")
    assert site.repo.read("prompts/support/triage.md") == mine
    assert site.repo.git("log", "-1", "--format=%s") == "Add refunds to triage"
    assert first.foreign_requests() == [] and second.foreign_requests() == []


def test_create_a_key_shown_once_and_revoke_it(open_tab: OpenTab, site: Site) -> None:
    from playwright.sync_api import expect

    tab = signed_in(open_tab, site, "/keys")
    page = tab.page
    page.get_by_label("Name").fill("ci runner")
    page.get_by_label("Scope").select_option("run")
    page.get_by_role("button", name="Create key").click()
    shown = page.get_by_label("The new run key")
    expect(shown).to_have_value(re.compile(r"^llmkit_\w+$"))
    clear = shown.input_value()
    tab.shot("key-created")
    models = httpx.get(f"{site.server.v1}/models", headers={"Authorization": f"Bearer {clear}"})
    assert models.status_code == 200, models.text

    tab.go("/keys")
    assert clear not in page.content()
    row = page.get_by_role("row", name=re.compile(r"^ci runner"))
    expect(row).to_contain_text(clear[:12])
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    page.wait_for_url(re.compile(r".*/keys\?revoked=\d+$"))
    expect(page.get_by_role("status")).to_contain_text("Key “ci runner”")
    expect(page.get_by_role("row", name=re.compile(r"^ci runner"))).to_contain_text("revoked")
    tab.shot("key-revoked")
    refused = httpx.get(f"{site.server.v1}/models", headers={"Authorization": f"Bearer {clear}"})
    assert refused.status_code == 401
    assert tab.foreign_requests() == []
