"""The numbers, the branch and tag badges and restoring a version, in a real browser: headless
chromium (Playwright) against a real `llmkit serve` on a real repository whose prompt has three
versions, a branch, a tag, calls in the run log and scored eval runs. Each page reached is
screenshot, and no page may fetch anything from another host."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.api_fixtures import HELLO_MD, SEED_FILES
from tests.browser_fixtures import OpenTab, Tab
from tests.helpers import Repo, ServerProcess, init_repo, serving

# The built-in echo model answers offline.
HELLO = [
    HELLO_MD.replace("helpful", word).replace("model: default", "model: echo")
    for word in ("helpful", "patient", "cheerful")
]
FEATURE_LINE = "Answer in one sentence."


@dataclass(frozen=True)
class Site:
    server: ServerProcess
    repo: Repo

    @property
    def url(self) -> str:
        return self.server.url


def call(server: ServerProcess, run_key: str, model: str) -> None:
    answered = httpx.post(
        f"{server.v1}/chat/completions",
        headers={"Authorization": f"Bearer {run_key}"},
        json={
            "model": model,
            "messages": [],
            "variables": {"personality": "calm", "question": "?"},
        },
        timeout=30,
    )
    assert answered.status_code == 200, answered.text


def run_and_score(server: ServerProcess, number: int, score: int) -> None:
    admin = server.headers()
    version = httpx.get(f"{server.v1}/ui/prompts/hello/versions/{number}", headers=admin).json()
    ran = httpx.post(
        f"{server.v1}/ui/prompt-eval-runs/hello/version/{version['version_id']}",
        headers=admin,
        timeout=60,
    )
    assert ran.status_code == 200, ran.text
    for result in ran.json()["runs"]:
        scored = httpx.put(
            f"{server.v1}/ui/prompt-eval-runs/{result['id']}", headers=admin, json={"score": score}
        )
        assert scored.status_code == 200, scored.text


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`llmkit serve` over the seeded repository with `hello` at three versions, a `feature`
    branch that changes it, a `v1.0` tag at its first version, calls of each version and eval
    runs of two, scored."""
    root = tmp_path_factory.mktemp("web-numbers")
    repo = init_repo(root / "repo", {**SEED_FILES, "prompts/hello.md": HELLO[0]})
    for number, text in enumerate(HELLO[1:], start=2):
        repo.write("prompts/hello.md", text)
        repo.commit(f"hello, version {number}")
    repo.git("tag", "v1.0", "HEAD~2")
    repo.git("checkout", "-qb", "feature")
    repo.write("prompts/hello.md", HELLO[2] + f"\n{FEATURE_LINE}\n")
    repo.commit("Shorter answers")
    repo.git("checkout", "-q", "-")
    with serving(repo.root, root) as server:
        run_key = server.create_key("a program")
        for number in (1, 2, 3):
            for _ in range(number):
                call(server, run_key, f"hello@{number}")
        run_and_score(server, 1, 2)
        run_and_score(server, 3, 4)
        yield Site(server, repo)


def signed_in(open_tab: OpenTab, site: Site, path: str = "/") -> Tab:
    tab = open_tab(site.url)
    tab.go(path)
    tab.page.get_by_label("Admin API key").fill(site.server.admin_key)
    tab.page.get_by_role("button", name="Sign in").click()
    tab.page.wait_for_url(re.compile(re.escape(site.url + path) + r"$"))
    return tab


def test_badges_numbers_and_restoring_a_version(open_tab: OpenTab, site: Site) -> None:
    from playwright.sync_api import expect

    tab = signed_in(open_tab, site)
    page = tab.page
    hello = page.locator("li.prompt", has=page.get_by_role("link", name="hello", exact=True))
    expect(hello.locator("a.badge.ref")).to_have_text(["feature: differs", "v1.0 tag → v1"])
    tab.shot("prompts-with-badges")

    hello.get_by_role("link", name="feature: differs").click()
    page.wait_for_url(site.url + "/diff/hello?from=refs%2Fheads%2Ffeature")
    expect(page.locator("table.diff tr.removed", has_text=FEATURE_LINE)).to_have_count(1)
    tab.shot("diff-with-feature")

    tab.go("/prompts/hello")
    expect(page.get_by_role("list", name="Branches and tags")).to_contain_text("feature: differs")
    page.get_by_role("link", name="Numbers").click()
    page.wait_for_url(site.url + "/numbers/hello")
    expect(page.get_by_role("heading", level=1)).to_have_text("Numbers of hello")
    charts = page.locator("svg.chart")
    expect(charts).to_have_count(5)
    latency = page.get_by_role("img", name="Latency per version")
    expect(latency.locator("circle")).to_have_count(6)  # p50 and p95 of three versions
    expect(latency.locator("polyline")).to_have_count(2)
    scores = page.get_by_role("img", name="Mean human score per version")
    expect(scores.locator("circle")).to_have_count(2)
    errors = page.get_by_role("region", name="Error rate per version")
    errors.get_by_text("The numbers of").click()
    table = errors.get_by_role("table")
    expect(table).to_be_visible()
    expect(table.get_by_role("row", name="v2")).to_contain_text("0%")
    box = latency.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 100
    tab.shot("numbers")

    tab.go("/history/hello")
    expect(page.locator("table.history tbody tr")).to_have_count(3)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Restore version 1").click()
    page.wait_for_url(re.compile(r".*/prompts/hello\?committed=[0-9a-f]{40}&restored=1$"))
    expect(page.get_by_role("status")).to_contain_text("Restored version 1: committed as version 4")
    assert site.repo.read("prompts/hello.md") == HELLO[0]
    assert site.repo.git("show", "HEAD:prompts/hello.md") + "\n" == HELLO[0]
    tab.shot("restored")
    # The tag now holds the text served again.
    tab.go("/")
    expect(hello.locator("a.badge.ref")).to_have_text(["feature: differs"])
    assert tab.foreign_requests() == []
    assert tab.broken == []


def test_a_declined_restore_changes_nothing(open_tab: OpenTab, site: Site) -> None:
    from playwright.sync_api import expect

    tab = signed_in(open_tab, site, "/history/hello")
    head = site.repo.head()
    asked: list[str] = []

    def decline(dialog: object) -> None:
        asked.append(dialog.message)  # type: ignore[attr-defined]
        dialog.dismiss()  # type: ignore[attr-defined]

    tab.page.once("dialog", decline)
    tab.page.get_by_role("button", name="Restore version 2").click()
    expect(tab.page.get_by_role("heading", level=1)).to_have_text("History of hello")
    assert asked and asked[0].startswith("Restore version 2 of hello?")
    assert site.repo.head() == head and tab.path() == "/history/hello"
    tab.shot("history-with-restore")
    assert tab.foreign_requests() == []
