"""The eval pages in a real browser: headless chromium (Playwright) against a real `llmkit serve`
on a repository whose feature branch was run with `llmkit eval --base main`, one server for the
module. The journey signs in, opens Evals, a prompt's evals and a run, scores an output and sees
the score saved and the mean updated; every page is screenshotted, and no page fetches anything
from another host."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.browser_fixtures import OpenTab, Tab
from tests.eval_fixtures import EvalRepo, feature_files
from tests.helpers import ServerProcess, invoke, serving
from tests.test_web_ui import sign_in

# Echoed back by the `echo` model into the output: markup that must stay text.
HOSTILE = "<img src=/static/pwned.png alt=pwned>"
HOSTILE_CASE = f"""\
name: hostile output
vars:
  personality: "{HOSTILE}"
user_vars:
  question: Who?
assert:
- type: icontains
  value: always say hello
"""


@dataclass(frozen=True)
class Site:
    server: ServerProcess
    repo: EvalRepo

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`llmkit serve` over the feature branch, after `llmkit eval --base main` ran on it."""
    root = tmp_path_factory.mktemp("web-evals")
    repo = EvalRepo.create(root / "repo")
    repo.branch(
        "feature",
        {**feature_files(), "evals/greet/hostile.yaml": HOSTILE_CASE},
        "greet says goodbye; farewell",
    )
    ran = invoke("eval", "--base", "main", cwd=repo.root)
    assert ran.exit_code == 1, ran.stdout + ran.stderr  # says hello regressed
    with serving(repo.root, root) as server:
        yield Site(server, repo)


def signed_in(open_tab: OpenTab, site: Site, path: str, **options: object) -> Tab:
    tab = open_tab(site.url, **options)
    sign_in(tab, site.server.admin_key, path)
    tab.page.wait_for_url(re.compile(re.escape(site.url + path) + r"$"))
    return tab


def api_score(site: Site, result_id: int) -> int | None:
    got = httpx.get(
        f"{site.server.v1}/ui/prompt-eval-runs/{result_id}", headers=site.server.headers()
    )
    assert got.status_code == 200, got.text
    return got.json()["score"]  # type: ignore[no-any-return]


def result_id(tab: Tab, case_name: str) -> int:
    article = tab.page.locator("article.result", has_text=case_name).first
    return int((article.get_attribute("id") or "").removeprefix("result-"))


def test_open_a_run_and_score_an_output(site: Site, open_tab: OpenTab) -> None:
    from playwright.sync_api import expect

    tab = signed_in(open_tab, site, "/")
    page = tab.page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Evals").click()
    page.wait_for_url(site.url + "/evals")
    expect(page.get_by_role("heading", level=1)).to_have_text("Evals")
    greet = page.get_by_role("row", name=re.compile(r"^greet"))
    expect(greet).to_contain_text("4")  # cases
    expect(greet).to_contain_text("vs v1 on main")
    expect(greet).to_contain_text("50%")
    tab.shot("evals")

    page.get_by_role("link", name="greet", exact=True).click()
    page.wait_for_url(site.url + "/evals/greet")
    expect(page.get_by_role("heading", level=1)).to_have_text("Evals of greet")
    expect(page.get_by_role("heading", name="Cases (4)")).to_be_visible()
    table = page.locator("table.before-after")
    # Newly failing first, in the order of their files, as the CLI reports them.
    expect(table.locator("tr.status-regression th")).to_have_text(["says hello", "hostile output"])
    expect(table.locator("tr.status-regression").first).to_contain_text("newly failing")
    expect(table.locator("tr.status-fixed th")).to_have_text("mentions goodbye")
    expect(page.get_by_role("status")).to_have_text("2/4 cases passed · 2 regressions · 1 fixed")
    tab.shot("evals-greet")

    page.get_by_role("link", name=re.compile(r"^Outputs")).first.click()
    page.wait_for_url(re.compile(r".*/evals/greet/runs/[0-9a-f]{32}$"))
    run_url = tab.path()
    expect(page.locator("#mean-score")).to_have_text("no output scored yet")
    hostile = page.locator("article.result", has_text="hostile output")
    expect(hostile.locator("pre.eval-output")).to_contain_text(HOSTILE)
    expect(hostile.locator("img")).to_have_count(0)
    tab.shot("eval-run")

    hello = page.locator("article.result", has_text="says hello")
    expect(hello.get_by_role("heading")).to_contain_text("failed")
    expect(hello).to_contain_text("expected output to contain 'Always say hello.'")
    hello.get_by_label("3", exact=True).check()
    hello.get_by_role("button", name=re.compile(r"^Save score")).click()
    page.wait_for_url(re.compile(re.escape(site.url + run_url) + r"\?scored=\d+#result-\d+$"))
    expect(page.get_by_role("status")).to_have_text("Saved: score 3 for “says hello”.")
    hello = page.locator("article.result", has_text="says hello")
    expect(hello.get_by_label("3", exact=True)).to_be_checked()
    expect(hello.locator(".current")).to_contain_text("Scored 3")
    expect(page.locator("#mean-score")).to_contain_text("3.00 of 1 scored output")
    tab.shot("eval-run-scored")
    assert api_score(site, result_id(tab, "says hello")) == 3

    page.get_by_role("link", name="greet", exact=True).click()
    page.wait_for_url(site.url + "/evals/greet")
    expect(page.locator("table.eval-runs tbody tr").first).to_contain_text("3.00 (1 scored)")
    assert tab.foreign_requests() == []
    assert tab.broken == []


def test_with_javascript_off_a_score_is_given_from_the_keyboard(
    site: Site, open_tab: OpenTab
) -> None:
    from playwright.sync_api import expect

    tab = signed_in(open_tab, site, "/evals/chat", java_script_enabled=False)
    page = tab.page
    page.get_by_role("link", name=re.compile(r"^Outputs")).first.click()
    page.wait_for_url(re.compile(r".*/evals/chat/runs/[0-9a-f]{32}$"))
    output = page.locator("article.result").first
    output.get_by_label("5", exact=True).focus()
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    expect(output.get_by_role("button", name=re.compile(r"^Save score"))).to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*\?scored=\d+#result-\d+$"))
    expect(page.locator("#mean-score")).to_contain_text("5.00 of 1 scored output")
    tab.shot("eval-run-scored-without-javascript")
    assert api_score(site, result_id(tab, "passes the history through")) == 5
    assert tab.foreign_requests() == []
