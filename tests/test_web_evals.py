"""The eval pages over HTTP, in-process (the journey in a real browser is in
test_web_evals_browser.py). Runs are made by the real eval session against the offline `echo`
model: `llmkit eval --base main` on a feature branch (one stored run holding both sides), and
runs of single versions through the API. The pages are read with a client of their own, so their
HTML error pages stay out of the API's one-shape check of JSON errors."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from llmkit.db import DurableStore
from llmkit.evals.asserts import AssertionResult, Outcome
from llmkit.evals.records import AFTER, BEFORE, EvalRecords, stored_result
from llmkit.evals.results import FIXED, NEW, PASS, REGRESSION, CaseResult
from llmkit.web import evals as evals_web
from llmkit.web import evals_views
from tests.api_fixtures import HTML, ORIGIN, Browser, running_api
from tests.eval_fixtures import GREET_FEATURE_MD, EvalRepo, feature_files
from tests.helpers import invoke

# What `llmkit eval --base main` finds on the feature branch, case by case (see eval_fixtures).
FEATURE_CHANGES = {
    ("greet", "says hello"): REGRESSION,
    ("greet", "mentions goodbye"): FIXED,
    ("greet", "asks who"): PASS,
    ("chat", "passes the history through"): PASS,
    ("farewell", "says farewell"): NEW,
}


class Site(Browser):
    """The app over an eval repository, and a browser signed in to it."""

    @property
    def repo(self) -> EvalRepo:
        return EvalRepo(self.api.repo)

    def score(self, result_id: int, score: str) -> httpx.Response:
        return self.post(
            f"/evals/results/{result_id}/score", {"score": score, "csrf_token": self.csrf}
        )

    @property
    def records(self) -> EvalRecords:
        return self.api.app.state.eval_records  # type: ignore[no-any-return]


@contextmanager
def open_site(repo: EvalRepo) -> Iterator[Site]:
    with running_api(repo.root) as api:
        yield Site.sign_in(api)


@pytest.fixture
def base_report(eval_repo: EvalRepo, tmp_path: Path) -> dict[str, Any]:
    """`llmkit eval --base main` run on the feature branch; its JSON report."""
    eval_repo.branch("feature", feature_files(), "greet says goodbye; farewell")
    report = tmp_path / "report.json"
    ran = invoke("eval", "--base", "main", "--json", str(report), cwd=eval_repo.root)
    assert ran.exit_code == 1, ran.stdout + ran.stderr  # the regression
    return json.loads(report.read_text("utf-8"))  # type: ignore[no-any-return]


@pytest.fixture
def site(eval_repo: EvalRepo, base_report: dict[str, Any]) -> Iterator[Site]:
    """The app over the feature branch, after its `eval --base main` run."""
    with open_site(eval_repo) as opened:
        yield opened


@pytest.fixture
def two_versions(eval_repo: EvalRepo) -> Iterator[Site]:
    """greet has two versions on main and no base run: each version run once over the API."""
    eval_repo.write("prompts/greet.md", GREET_FEATURE_MD)
    eval_repo.commit("greet says goodbye instead")
    with open_site(eval_repo) as opened:
        yield opened


# -- reading the pages -------------------------------------------------------------------------


def change_rows(page: str) -> dict[str, str]:
    """Case name -> status of each row of the before/after table."""
    table = page.split('<table class="before-after">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<tr class="status-(\w+)">\s*<th scope="row">([^<]*)</th>', table)
    return {name: status for status, name in rows}


def result_ids(page: str) -> dict[str, int]:
    """Case name -> result id of each output on a run page."""
    found = re.findall(
        r'<article class="result[^"]*" id="result-(\d+)"[^>]*>\s*<h3[^>]*>([^<]*)', page
    )
    return {name.strip(): int(ident) for ident, name in found}


def run_links(page: str, key: str) -> list[str]:
    return re.findall(rf'href="/evals/{re.escape(key)}/runs/([0-9a-f]+)"', page)


def ok(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text[:2000]
    return response.text


def api_run(site: Site, key: str, version: str) -> dict[str, Any]:
    """A run of every case of `key` at `version` (a sha) through the API's run route."""
    ran = site.api.post(f"/v1/ui/prompt-eval-runs/{key}/version/{version}")
    assert ran.status_code == 200, ran.text
    return ran.json()  # type: ignore[no-any-return]


# -- who may see and change -------------------------------------------------------------------


def test_the_pages_need_an_admin_and_a_score_the_csrf_token(site: Site) -> None:
    [run_id] = run_links(ok(site.get("/evals/greet")), "greet")[:1]
    run_page = ok(site.get(f"/evals/greet/runs/{run_id}"))
    result = result_ids(run_page)["says hello"]
    stranger = TestClient(site.api.app, raise_server_exceptions=False)
    for url in ("/evals", "/evals/greet", f"/evals/greet/runs/{run_id}"):
        sent = stranger.get(url, headers=HTML, follow_redirects=False)
        assert sent.status_code == 303 and sent.headers["location"].startswith("/sign-in?next=")
        assert stranger.get(url).status_code == 401
        refused = stranger.get(url, headers={**HTML, **site.api.run})
        assert refused.status_code == 403 and "needs an admin key" in refused.text
    url = f"/evals/results/{result}/score"
    assert stranger.post(url, data={"score": "3"}).status_code == 401
    assert stranger.post(url, data={"score": "3"}, headers=site.api.run).status_code == 403
    for data, headers, why in (
        ({"score": "3"}, {}, "Missing CSRF token"),
        ({"score": "3", "csrf_token": "0" * 64}, {}, "Wrong CSRF token"),
        ({"score": "3", "csrf_token": site.csrf}, {"Origin": "https://evil.example"}, "evil"),
    ):
        refused = site.post(url, data, **headers)
        assert refused.status_code == 403 and why in refused.text
    assert site.records.result(result)["human_score"] is None
    # A program with the admin key needs no CSRF token: the API's rule.
    scored = site.api.post(url, data={"score": "2"}, follow_redirects=False)
    assert scored.status_code == 303
    assert site.records.result(result)["human_score"] == 2


def test_every_eval_page_forbids_other_hosts_and_caching(site: Site) -> None:
    [run_id] = run_links(ok(site.get("/evals/greet")), "greet")[:1]
    for url in ("/evals", "/evals/greet", f"/evals/greet/runs/{run_id}", "/evals/farewell"):
        page = site.get(url)
        assert page.status_code == 200, (url, page.text)
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert "http://" not in page.text and "https://" not in page.text, url
        assert "<script>" not in page.text and "style=" not in page.text, url


# -- the list, the cases, the runs ------------------------------------------------------------


def test_the_list_shows_each_prompt_with_cases_and_its_latest_run(site: Site) -> None:
    page = ok(site.get("/evals"))
    rows = re.findall(r'<th scope="row"><a href="/evals/([^"]+)">[^<]*</a></th>\s*<td>(\d+)', page)
    assert rows == [("chat", "1"), ("farewell", "1"), ("greet", "3")]
    greet = page.split('href="/evals/greet"', 1)[1].split("</tr>", 1)[0]
    assert ">v2<" in greet and "vs v1" in greet and "67%" in greet and "(2/3)" in greet
    [summary] = [r for r in site.records.run_summaries() if r["prompt_key"] == "greet"]
    assert f'href="/evals/greet/runs/{summary["run_id"]}"' in greet
    farewell = page.split('href="/evals/farewell"', 1)[1].split("</tr>", 1)[0]
    assert "100%" in farewell and "vs main" in farewell and "vs v" not in farewell  # new


def test_a_prompts_cases_are_shown_as_their_files_write_them(site: Site) -> None:
    page = ok(site.get("/evals/greet"))
    assert "Cases (3)" in page
    for name in ("says hello", "mentions goodbye", "asks who"):
        assert f'">{name}</h3>' in page
    assert "<code>evals/greet/cases.yaml:6</code>" in page
    assert "<code>personality</code></th><td><pre>calm</pre>" in page
    assert "<code>question</code></th><td><pre>Who is there?</pre>" in page
    assert "- type: contains\n  value: Always say hello." in page
    assert "- type: contains\n  value: &#39;user: Who is there?&#39;" in page
    chat = ok(site.get("/evals/chat"))
    assert '<h4 class="role">assistant</h4><pre class="template">first answer</pre>' in chat
    assert "- type: equals\n  value: |-\n    system: You are a terse assistant." in chat


def test_runs_per_version_newest_first_with_counts_and_mean_score(two_versions: Site) -> None:
    site = two_versions
    v1, v2 = site.repo.log("--format=%H", "--", "prompts/greet.md")[::-1]
    first = api_run(site, "greet", v1)
    second = api_run(site, "greet", v2)
    site.records.set_score(second["runs"][0]["id"], 4)
    site.records.set_score(second["runs"][1]["id"], 1)
    page = ok(site.get("/evals/greet"))
    table = page.split('<table class="eval-runs">', 1)[1].split("</table>", 1)[0]
    assert run_links(table, "greet") == [second["run_id"], first["run_id"]]
    rows = table.split("<tbody>", 1)[1].split("</tr>")
    assert ">v2</a>" in rows[0] and ">v1</a>" in rows[1]
    cells = [re.findall(r"<td[^>]*>(\d+)</td>", row) for row in rows[:2]]
    assert cells == [["1", "1", "2"], ["1", "1", "2"]]  # passed, failed, total
    assert '2.50 <span class="hint">(2 scored)</span>' in rows[0]
    assert "none yet" in rows[1]
    versions = page.split('<table class="eval-versions">', 1)[1].split("</table>", 1)[0]
    shown = re.findall(r'<th scope="row">(v\d)</th>\s*<td>(\d) .*?</td>\s*<td>(\d+)%', versions)
    assert shown == [("v2", "1", "50"), ("v1", "1", "50")]
    # Uncommitted changes are served as a draft, and a run of them says so.
    site.repo.write("prompts/greet.md", GREET_FEATURE_MD + "\nAlways say hello.\n")
    site.api.ws.index.sync()  # as the watcher would
    draft = api_run(site, "greet", "served")
    page = ok(site.get("/evals/greet"))
    table = page.split('<table class="eval-runs">', 1)[1].split("</table>", 1)[0]
    assert run_links(table, "greet")[0] == draft["run_id"]
    assert '<th scope="row"><span class="badge draft">draft</span></th>' in table
    run_page = ok(site.get(f"/evals/greet/runs/{draft['run_id']}"))
    assert "<h1>Run of greet at draft</h1>" in run_page and "2 of 2" in run_page


# -- before and after -------------------------------------------------------------------------


def test_the_base_run_is_shown_before_and_after_as_the_cli_reported_it(
    site: Site, base_report: dict[str, Any]
) -> None:
    cli = {(c["prompt_key"], c["case_name"]): c["status"] for c in base_report["cases"]}
    assert cli == FEATURE_CHANGES
    for key in ("greet", "chat", "farewell"):
        page = ok(site.get(f"/evals/{key}"))
        shown = change_rows(page)
        assert shown == {name: status for (k, name), status in cli.items() if k == key}, key
    page = ok(site.get("/evals/greet"))
    assert "Before: v1 on main · After: v2 (run " in page
    assert "2/3 cases passed · 1 regression · 1 fixed" in page
    hello = page.split('<tr class="status-regression">', 1)[1].split("</tr>", 1)[0]
    before, after, change = hello.split("<td")[1:4]
    assert "passed" in before and "v1 · 1/1 run passed" in before
    assert "failed" in after and "expected output to contain" in after
    assert "newly failing" in change
    # Newly failing cases first, as the CLI's report orders them.
    assert list(change_rows(page)) == ["says hello", "mentions goodbye", "asks who"]
    assert "unchanged: passes" in page and "fixed" in page
    farewell = ok(site.get("/evals/farewell"))
    assert "new case" in farewell and "not run" in farewell


def test_two_runs_of_two_versions_are_compared_with_the_same_code(two_versions: Site) -> None:
    site = two_versions
    v1, v2 = site.repo.log("--format=%H", "--", "prompts/greet.md")[::-1]
    first = api_run(site, "greet", v1)
    second = api_run(site, "greet", v2)
    # Nothing picked: the newest run against the newest run of another version.
    page = ok(site.get("/evals/greet"))
    assert change_rows(page) == {"says hello": REGRESSION, "mentions goodbye": FIXED}
    assert f"Before: v1 (run {first['run_id'][:8]}) · After: v2 (run {second['run_id'][:8]})" in (
        page
    )
    assert f'<option value="{first["run_id"]}" selected>' in page
    # Picked the other way round: what v2 broke, v1 fixes.
    back = ok(
        site.get("/evals/greet", params={"before": second["run_id"], "after": first["run_id"]})
    )
    assert change_rows(back) == {"says hello": FIXED, "mentions goodbye": REGRESSION}
    # A run with no base ref, asked for against its base: said so, no table.
    alone = ok(site.get("/evals/greet", params={"after": first["run_id"]}))
    assert "was not run with a base ref" in alone and 'class="before-after"' not in alone
    same = ok(
        site.get("/evals/greet", params={"before": first["run_id"], "after": first["run_id"]})
    )
    assert set(change_rows(same).values()) == {PASS, "fail"}


def test_a_long_history_lists_the_newest_runs_and_all_on_request(site: Site) -> None:
    for _ in range(evals_web.RUNS_SHOWN):
        site.records.save_run([_result("says hello", number=2, passed=True)], source="api")
    total = evals_web.RUNS_SHOWN + 1
    [oldest] = [r["run_id"] for r in site.records.run_summaries("greet")][-1:]
    page = ok(site.get("/evals/greet"))
    table = page.split('<table class="eval-runs">', 1)[1].split("</table>", 1)[0]
    assert f"The newest {evals_web.RUNS_SHOWN} of {total} runs" in table
    assert len(run_links(table, "greet")) == evals_web.RUNS_SHOWN and oldest not in table
    every = ok(site.get("/evals/greet?runs=all"))
    table = every.split('<table class="eval-runs">', 1)[1].split("</table>", 1)[0]
    assert len(run_links(table, "greet")) == total and f"{total} runs, newest first" in table
    # An older run picked stays picked in the form, and is compared.
    picked = ok(site.get("/evals/greet", params={"after": oldest}))
    assert f'<option value="{oldest}" selected>' in picked
    assert change_rows(picked)["says hello"] == REGRESSION


def test_unknown_runs_and_odd_keys_are_pages_naming_them(site: Site) -> None:
    for url, status, text in (
        ("/evals/greet/runs/nope", 404, "No eval run &#39;nope&#39; of prompt &#39;greet&#39;"),
        ("/evals/greet?after=nope", 404, "No eval run &#39;nope&#39; of prompt &#39;greet&#39;"),
        ("/evals/greet?before=%3Cb%3E", 404, "&#39;&lt;b&gt;&#39;"),
        ("/evals/nope", 404, "No prompt &#39;nope&#39;"),
        ("/evals/a%20b", 400, "Invalid prompt key"),
        ("/evals/" + "x" * 5000, 400, "characters long"),
        ("/evals/greet?after=" + "x" * 300, 404, "x" * 60 + "…"),
        ("/evals/greet/runs/" + "y" * 300, 404, "&#39;" + "y" * 60 + "…&#39;"),
    ):
        page = site.get(url)
        assert page.status_code == status, (url, page.text[:500])
        assert text in page.text, (url, page.text[:2000])
    [run_id] = run_links(ok(site.get("/evals/greet")), "greet")[:1]
    assert site.get(f"/evals/chat/runs/{run_id}").status_code == 200  # one run, every prompt
    assert site.get(f"/evals/nope/runs/{run_id}").status_code == 404
    odd_run = site.get("/evals/greet/runs/a%20b")
    assert odd_run.status_code == 404 and "No eval run &#39;a b&#39;" in odd_run.text
    assert site.get("/evals/").headers["location"] == "/evals"


def test_a_prompt_key_ending_in_runs_has_its_eval_page(eval_repo: EvalRepo) -> None:
    eval_repo.write("prompts/team/runs/daily.md", "<!-- role:user -->\nHi\n")
    eval_repo.write("evals/team/runs/daily/basic.yaml", "name: greets\ninput: hi\n")
    eval_repo.commit("a prompt under runs/")
    with open_site(eval_repo) as site:
        page = ok(site.get("/evals/team/runs/daily"))
        assert "<h1>Evals of team/runs/daily</h1>" in page and "Cases (1)" in page


# -- scoring ----------------------------------------------------------------------------------


def test_scoring_an_output_stores_it_once_and_the_api_sees_it(site: Site) -> None:
    [run_id] = run_links(ok(site.get("/evals/greet")), "greet")[:1]
    page = ok(site.get(f"/evals/greet/runs/{run_id}"))
    assert "no output scored yet" in page
    ids = result_ids(page)
    assert set(ids) == {"says hello", "mentions goodbye", "asks who"}
    hello = ids["says hello"]
    rows_before = len(site.records.results(role=None))

    saved = site.score(hello, "3")
    assert saved.status_code == 303
    assert saved.headers["location"] == f"/evals/greet/runs/{run_id}?scored={hello}#result-{hello}"
    page = ok(site.get(saved.headers["location"].split("#")[0]))
    assert "Saved: score 3 for “says hello”." in page
    assert '<dd id="mean-score">3.00 <span class="hint">of 1 scored output</span>' in page
    assert f'id="score-{hello}-3" name="score" value="3" checked>' in page
    assert site.api.get(f"/v1/ui/prompt-eval-runs/{hello}").json()["score"] == 3

    # Changed, not added: one score per output.
    assert site.score(hello, "5").status_code == 303
    assert site.score(ids["asks who"], " 2 ").status_code == 303
    assert site.api.get(f"/v1/ui/prompt-eval-runs/{hello}").json()["score"] == 5
    assert len(site.records.results(role=None)) == rows_before
    page = ok(site.get(f"/evals/greet/runs/{run_id}"))
    assert '<dd id="mean-score">3.50 <span class="hint">of 2 scored outputs</span>' in page
    # A score given over the API shows here.
    put = site.api.put(f"/v1/ui/prompt-eval-runs/{ids['mentions goodbye']}", json={"score": 1})
    assert put.status_code == 200
    page = ok(site.get(f"/evals/greet/runs/{run_id}"))
    assert '<dd id="mean-score">2.67' in page
    assert '2.67 <span class="hint">(3 scored)</span>' in ok(site.get("/evals/greet"))
    performance = site.api.get("/v1/ui/prompts/greet/performance").json()
    assert [p["avg_score"] for p in performance if p["version_number"] == 2] == [8 / 3]


def test_bad_scores_are_refused_on_the_runs_page_naming_them(site: Site) -> None:
    [run_id] = run_links(ok(site.get("/evals/greet")), "greet")[:1]
    hello = result_ids(ok(site.get(f"/evals/greet/runs/{run_id}")))["says hello"]
    assert site.score(hello, "4").status_code == 303
    for sent, named in (
        ("0", "got 0"),
        ("6", "got 6"),
        ("-3", "got -3"),
        ("3.5", "got &#39;3.5&#39;"),
        ("three", "got &#39;three&#39;"),
        ("99999999999999999999999999", "got &#39;99999999999999999999999999&#39;"),
        ("<script>", "got &#39;&lt;script&gt;&#39;"),
        ("", "No score chosen"),
    ):
        page = site.score(hello, sent)
        assert page.status_code == 400, (sent, page.text[:300])
        assert "Score not saved" in page.text and named in page.text, (sent, page.text[:3000])
        assert f'<a href="#result-{hello}">says hello, run 1</a>' in page.text
        assert "<script>" not in page.text
    missing = site.post(f"/evals/results/{hello}/score", {"csrf_token": site.csrf})
    assert missing.status_code == 400 and "No score chosen" in missing.text
    assert site.records.result(hello)["human_score"] == 4
    gone = site.score(2**62, "3")
    assert gone.status_code == 404 and f"No eval run result with id {2**62}" in gone.text
    for odd in (0, -1, 2**64):
        assert site.score(odd, "3").status_code == 404
    as_json = site.client.post(
        f"/evals/results/{hello}/score",
        json={"score": 3},
        headers={**HTML, "Origin": ORIGIN, "X-CSRF-Token": site.csrf},
    )
    assert as_json.status_code == 400 and "HTML form" in as_json.text
    assert site.records.result(hello)["human_score"] == 4


# -- hostile text -----------------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def test_hostile_cases_outputs_and_problems_are_escaped(eval_repo: EvalRepo) -> None:
    eval_repo.write(
        "evals/greet/hostile.yaml",
        "name: '" + HOSTILE + "'\n"
        "description: '" + HOSTILE + "'\n"
        "vars:\n  personality: '" + HOSTILE + "'\n"
        "user_vars:\n  question: hi\n"
        "assert:\n- type: contains\n  value: '" + HOSTILE + "'\n",
    )
    eval_repo.commit("a hostile case")
    ran = invoke("eval", "--prompt", "greet", cwd=eval_repo.root)
    assert ran.exit_code == 1, ran.stdout + ran.stderr
    eval_repo.write("evals/chat/broken.yaml", "name: [" + HOSTILE + "\n")
    with open_site(eval_repo) as site:
        [run_id] = run_links(ok(site.get("/evals/greet")), "greet")[:1]
        for url in ("/evals", "/evals/greet", f"/evals/greet/runs/{run_id}", "/evals/chat"):
            page = ok(site.get(url))
            assert "<script>alert" not in page and "<img src=x" not in page, url
        run_page = ok(site.get(f"/evals/greet/runs/{run_id}"))
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in run_page  # the echoed output
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in ok(site.get("/evals/greet"))
        assert "problem" in ok(site.get("/evals")) and "evals/chat/broken.yaml" in ok(
            site.get("/evals/chat")
        )


# -- the records underneath -------------------------------------------------------------------


def _result(name: str, *, number: int, passed: bool, text: str = "out") -> CaseResult:
    return CaseResult(
        prompt_key="greet",
        case_name=name,
        file="evals/greet/cases.yaml",
        line=3,
        version_number=number,
        version_sha=f"{number:040d}",
        model="echo",
        repeat_index=0,
        outcome=Outcome(text=text, latency_ms=5.0, input_tokens=2, output_tokens=3, cost=0.5),
        assertions=[AssertionResult("contains", passed, float(passed), "why", 2.0)],
        passed=passed,
    )


def test_run_summaries_and_stored_results_on_both_backends(durable_db: DurableStore) -> None:
    records = EvalRecords(durable_db)
    first = records.save_run([_result("a", number=1, passed=True)], source="api")
    after = [_result("a", number=2, passed=False), _result("b", number=2, passed=True)]
    before = [_result("a", number=1, passed=True)]
    linked = records.save_run(after, before, ref=None, base_ref="main", source="cli")
    scored = records.results(run_id=linked)[1]["id"]
    records.set_score(scored, 5)

    summaries = records.run_summaries("greet")
    assert [s["run_id"] for s in summaries] == [linked, first]
    newest = summaries[0]
    assert (newest["version_number"], newest["base_number"], newest["base_ref"]) == (2, 1, "main")
    assert (newest["results"], newest["passed"], newest["failed"], newest["base_results"]) == (
        2,
        1,
        1,
        1,
    )
    assert (newest["mean_score"], newest["scored"], newest["pass_rate"]) == (5.0, 1, 0.5)
    assert (summaries[1]["base_results"], summaries[1]["mean_score"]) == (0, None)
    assert records.run_summaries("other") == []
    assert [s["run_id"] for s in records.run_summaries()] == [linked, first]
    assert records.latest_runs() == [newest]
    assert records.run_summaries("greet", first) == [summaries[1]]

    sides = records.results(run_id=linked, role=None)
    assert sorted(r["role"] for r in sides) == [AFTER, AFTER, BEFORE]
    [base_row] = records.results(run_id=linked, role=BEFORE)
    # A stored result reads back as the runner made it (the line and threshold are the
    # case's as it is now: here, no case, so none and the default).
    back, original = stored_result(base_row), before[0]
    assert back == CaseResult(**{**original.__dict__, "line": None})
    comparison = evals_views.compare(
        records.results(run_id=linked, role=BEFORE),
        records.results(run_id=linked),
        [],
        before_label="main",
        after_label="v2",
    )
    assert [(r.case_name, r.status) for r in comparison.rows] == [("a", REGRESSION), ("b", NEW)]


def test_a_score_as_typed() -> None:
    assert evals_views.score_value(" 3 ") == 3
    assert evals_views.score_value("+4") == 4
    assert evals_views.score_value("3.0") == "3.0"
    assert evals_views.score_value("9" * 50) == "9" * 40
    with pytest.raises(Exception, match="No score chosen"):
        evals_views.score_value("  ")
