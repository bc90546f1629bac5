"""The numbers page, the branch and tag badges and restoring a version, in-process (the journey
in a real browser is in test_web_numbers_browser.py): the charts' geometry, charts drawn from
real run-log rows and eval records of three versions, badges read from a real repository's
branches and tags, and a restore that commits an old text, refuses a stale base and a missing
CSRF token, and never overwrites."""

from __future__ import annotations

import math
import re
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest

from llmkit.ref_versions import RefVersions
from llmkit.runlog_record import RunRecord
from llmkit.web import charts
from llmkit.web.numbers import number_charts
from tests.api_fixtures import HELLO_MD, ApiEnv, Browser
from tests.helpers import git

HELLO = [HELLO_MD.replace("helpful", word) for word in ("helpful", "patient", "cheerful")]


@pytest.fixture
def signed_in(api: ApiEnv) -> Browser:
    return Browser.sign_in(api)


def three_versions(api: ApiEnv) -> list[str]:
    """`hello` at versions 2 and 3 (the seed is version 1); the commits, oldest first."""
    for number, text in enumerate(HELLO[1:], start=2):
        api.repo.joinpath("prompts/hello.md").write_text(text, "utf-8")
        git(api.repo, "commit", "-qam", f"hello v{number}")
    api.ws.index.sync()
    return [v.sha or "" for v in api.ws.index.versions("hello")]


# -- the charts' geometry --------------------------------------------------------------------


def test_a_scale_maps_the_domain_onto_the_pixels_and_an_empty_one_to_the_middle() -> None:
    y = charts.Scale(0, 100, 200, 0)  # y pixels grow downwards
    assert (y(0), y(100), y(25)) == (200, 0, 150)
    assert y(200) == -200  # linear beyond the domain; the chart clamps
    assert charts.Scale(5, 5, 0, 10)(5) == 5


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0, 97, [0, 20, 40, 60, 80, 100]),
        (0, 100, [0, 20, 40, 60, 80, 100]),
        (0, 0.3, [0, 0.1, 0.2, 0.3]),
        (0, 0.7, [0, 0.2, 0.4, 0.6, 0.8]),
        (0, 0, [0, 0.2, 0.4, 0.6, 0.8, 1]),
        (0, 7, [0, 2, 4, 6, 8]),
        (3, 3, [0, 1, 2, 3]),
        (0, 5, [0, 1, 2, 3, 4, 5]),
    ],
)
def test_ticks_are_round_and_cover_the_values(low: float, high: float, expected: list) -> None:
    assert charts.nice_ticks(low, high) == expected


def test_huge_values_have_finite_ticks_and_short_labels() -> None:
    ticks = charts.nice_ticks(0, 3.6e12)
    assert ticks[0] == 0 and ticks[-1] >= 3.6e12 and all(math.isfinite(t) for t in ticks)
    top = charts.nice_ticks(0, 1.7e308)
    assert all(math.isfinite(t) for t in top) and top[-1] >= 1.7e308 * (1 - 1e-9)
    assert [charts.compact(v) for v in (0, 0.000123, 12.34, 1200, 3.6e6, 2e12, 5e15)] == [
        "0",
        "0.000123",
        "12.3",
        "1.2k",
        "3.6M",
        "2T",
        "5e+15",
    ]


def test_bars_stand_on_zero_with_heights_in_proportion_and_missing_values_skipped() -> None:
    drawn = charts.chart(
        "bar", "t", ["v1", "v2", "v3", "v4"], [("s", [50, None, 100, 0])], y_label="y"
    )
    [series] = drawn.series
    assert [m.category for m in series.marks] == ["v1", "v3", "v4"]
    v1, v3, v4 = series.marks
    assert drawn.y_ticks[0].text == "0" and drawn.y_ticks[-1].text == "100"
    assert v3.y == pytest.approx(drawn.top) and v3.y + v3.height == pytest.approx(drawn.bottom)
    assert v1.height == pytest.approx(v3.height / 2)
    assert v4.height == 0 and v4.y == pytest.approx(drawn.bottom)
    # A zero is drawn as a sliver on the axis, so it is told apart from no value at all.
    assert v4.drawn(drawn.bottom) == (drawn.bottom - charts.MIN_BAR_PX, charts.MIN_BAR_PX)
    assert v3.drawn(drawn.bottom) == (v3.y, v3.height)
    assert (v1.label, v1.text) == ("50", "v1: 50") and drawn.values_shown
    # One band per version, in order: bar centres equally spaced, left to right.
    band = (drawn.right - drawn.left) / 4
    centres = [m.x + m.width / 2 for m in series.marks]
    assert centres == pytest.approx([drawn.left + band * (i + 0.5) for i in (0, 2, 3)])
    assert [t.text for t in drawn.x_ticks] == ["v1", "v2", "v3", "v4"]
    assert drawn.rows[1] == ("v2", [""]) and drawn.rows[2] == ("v3", ["100"])


def test_a_line_breaks_at_a_missing_value_and_skips_what_is_no_number() -> None:
    values = [10, 20, None, 30, float("nan"), 40, float("inf"), "x", True]
    names = [f"v{i}" for i in range(1, len(values) + 1)]
    drawn = charts.chart("line", "t", names, [("p50", values)], y_label="ms")
    [series] = drawn.series
    assert [m.category for m in series.marks] == ["v1", "v2", "v4", "v6"]
    # v1-v2 is a run; v4 and v6 stand alone (a point each, no line).
    [line] = series.lines
    assert line == " ".join(f"{m.x:.1f},{m.y:.1f}" for m in series.marks[:2])
    assert [m.width for m in series.marks] == [0.0] * 4
    assert [row[1] for row in drawn.rows][2:5] == [[""], ["30"], [""]]


def test_one_point_all_equal_and_no_values() -> None:
    one = charts.chart("line", "t", ["v1"], [("s", [7])], y_label="y")
    assert [(m.category, m.value) for m in one.series[0].marks] == [("v1", 7)]
    assert one.series[0].lines == [] and not one.empty
    assert one.series[0].marks[0].x == pytest.approx((one.left + one.right) / 2)
    flat = charts.chart("line", "t", ["v1", "v2", "v3"], [("s", [3, 3, 3])], y_label="y")
    ys = {m.y for m in flat.series[0].marks}
    assert len(ys) == 1 and flat.top <= ys.pop() < flat.bottom
    zeros = charts.chart("bar", "t", ["v1", "v2"], [("s", [0, 0])], y_label="y")
    assert (zeros.y_ticks[0].text, zeros.y_ticks[-1].text) == ("0", "1") and not zeros.empty
    assert {m.height for m in zeros.series[0].marks} == {0}
    nothing = charts.chart("bar", "t", ["v1", "v2"], [("s", [None, float("nan")])], y_label="y")
    assert nothing.empty
    assert charts.chart("line", "t", [], [("s", [])], y_label="y").empty


def test_a_fixed_top_and_many_versions() -> None:
    rate = charts.chart("bar", "t", ["v1", "v2"], [("r", [50, 25])], y_label="%", y_max=100)
    assert rate.y_ticks[-1].text == "100"
    assert rate.series[0].marks[0].y == pytest.approx((rate.top + rate.bottom) / 2)
    many = [f"v{i}" for i in range(1, 101)]
    drawn = charts.chart("line", "t", many, [("s", list(range(100)))], y_label="y")
    assert len(drawn.series[0].marks) == 100
    assert len(drawn.x_ticks) <= charts.MAX_X_LABELS
    crowded = charts.chart("bar", "t", many, [("s", list(range(100)))], y_label="y")
    assert not crowded.values_shown
    assert drawn.x_ticks[0].text == "v1"


# -- the numbers page ------------------------------------------------------------------------


def log_calls(api: ApiEnv, shas: list[str]) -> None:
    """Calls of each version through the run log's real writer: v1 fast and cheap, v2 slower
    and failing one call in four, v3 slowest; a judge's call about v3 is not one of its calls."""
    figures = {1: (100, 0.001, 0), 2: (200, 0.002, 1), 3: (400, 0.004, 0)}
    for number, (latency, cost, errors) in figures.items():
        for i in range(4):
            api.ws.runlog.log(
                RunRecord(
                    prompt_key="hello",
                    version_number=number,
                    version_sha=shas[number - 1],
                    model="echo",
                    request={"messages": []},
                    status="error" if i < errors else "ok",
                    latency_ms=latency,
                    cost=cost,
                )
            )
    api.ws.runlog.log(
        RunRecord(
            prompt_key="hello",
            version_number=3,
            version_sha=shas[2],
            model="echo",
            request={"messages": []},
            source="judge",
            latency_ms=99_999,
        )
    )


def run_and_score(api: ApiEnv, number: int, score: int) -> None:
    version = api.get(f"/v1/ui/prompts/hello/versions/{number}").json()
    ran = api.post(f"/v1/ui/prompt-eval-runs/hello/version/{version['version_id']}")
    assert ran.status_code == 200, ran.text
    for result in ran.json()["runs"]:
        scored = api.put(f"/v1/ui/prompt-eval-runs/{result['id']}", json={"score": score})
        assert scored.status_code == 200, scored.text


def section(page: str, slug: str) -> str:
    found = re.search(rf'<section class="numbers-chart" id="{slug}".*?</section>', page, re.DOTALL)
    assert found, slug
    return found.group(0)


def titles(svg: str) -> list[str]:
    return [unescape(t) for t in re.findall(r"<(?:rect|circle)[^>]*><title>(.*?)</title>", svg)]


def test_the_charts_read_the_run_log_and_eval_records_of_three_versions(
    signed_in: Browser,
) -> None:
    api = signed_in.api
    shas = three_versions(api)
    log_calls(api, shas)
    run_and_score(api, 1, 2)
    run_and_score(api, 3, 5)

    page = signed_in.get("/numbers/hello")
    assert page.status_code == 200, page.text
    assert page.text.count("<svg") == 5
    assert "style=" not in page.text and "<script>" not in page.text
    assert "http://" not in page.text and "https://" not in page.text
    latency = section(page.text, "latency")
    assert titles(latency) == [
        "p50, v1: 100 ms",
        "p50, v2: 200 ms",
        "p50, v3: 400 ms",
        "p95, v1: 100 ms",
        "p95, v2: 200 ms",
        "p95, v3: 400 ms",
    ]
    assert "Latency (ms)" in latency and ">Version<" in latency
    assert titles(section(page.text, "cost")) == [
        "cost per call, v1: 0.001 USD",
        "cost per call, v2: 0.002 USD",
        "cost per call, v3: 0.004 USD",
    ]
    errors = section(page.text, "errors")
    assert titles(errors) == [
        "error rate, v1: 0%",
        "error rate, v2: 25%",
        "error rate, v3: 0%",
    ]
    assert '<th scope="row">v2</th><td>25%</td>' in errors
    passed = titles(section(page.text, "pass-rate"))
    assert [t.split(":")[0] for t in passed] == ["pass rate, v1", "pass rate, v3"]
    assert titles(section(page.text, "score")) == [
        "mean score, v1: 2.00 of 5",
        "mean score, v3: 5.00 of 5",
    ]
    # The bars stand in version order, each taller as its cost grows.
    heights = [
        float(h) for h in re.findall(r'<rect[^>]*height="([\d.]+)"', section(page.text, "cost"))
    ]
    assert heights[0] < heights[1] < heights[2]
    assert "12 calls in the run log" in page.text


def test_a_prompt_with_no_numbers_says_so_and_an_unknown_one_is_a_404(
    signed_in: Browser,
) -> None:
    page = signed_in.get("/numbers/support/triage")
    assert page.status_code == 200
    assert "<svg" not in page.text
    assert "No calls of this prompt" in page.text and "No eval has been run" in page.text
    assert "No eval output of this prompt has been scored" in page.text
    missing = signed_in.get("/numbers/nope")
    assert missing.status_code == 404 and "No prompt found" in missing.text
    assert signed_in.api.client.get("/numbers/hello").status_code == 401


def test_draft_calls_are_counted_but_not_charted(signed_in: Browser) -> None:
    api = signed_in.api
    [sha] = [v.sha for v in api.ws.index.versions("hello")]
    for draft in (False, True):
        api.ws.runlog.log(
            RunRecord(
                prompt_key="hello",
                version_number=None if draft else 1,
                version_sha=None if draft else sha,
                draft=draft,
                draft_blob="ab" * 20 if draft else None,
                model="echo",
                request={},
                latency_ms=5,
            )
        )
    api.ws.runlog.flush()
    charts_ = number_charts(api.ws.index.versions("hello"), api.ws.runlog.stats("hello"), [])
    assert [t.text for t in charts_[0].chart.x_ticks] == ["v1"]
    assert charts_[0].note.startswith("1 call of drafts")
    page = signed_in.get("/numbers/hello")
    assert "1 call of drafts or of versions no longer in history" in page.text


# -- branches and tags -----------------------------------------------------------------------


def test_badges_name_the_version_a_branch_or_tag_holds_and_link_to_the_diff(
    signed_in: Browser,
) -> None:
    api = signed_in.api
    repo = api.repo
    three_versions(api)
    git(repo, "tag", "-a", "v1.2", "-m", "release", "HEAD~1")  # hello v2 (annotated)
    git(repo, "branch", "old", "HEAD~2")  # hello v1
    git(repo, "checkout", "-qb", "feature")
    repo.joinpath("prompts/hello.md").write_text(HELLO[2] + "\nA feature line.\n", "utf-8")
    git(repo, "commit", "-qam", "feature")
    git(repo, "checkout", "-q", "-")
    git(repo, "branch", "same")  # holds what is served

    listing = signed_in.get("/").text
    hello_row = re.search(r'href="/prompts/hello".*?</li>\s*</ul>', listing, re.DOTALL)
    assert hello_row
    texts = [unescape(t) for t in re.findall(r'class="badge ref[^"]*"[^>]*>(.*?)</a>', listing)]
    assert sorted(texts) == ["feature: differs", "old → v1", "v1.2 tag → v2"]
    assert "same" not in texts  # the list leaves out refs at the served version
    assert 'href="/diff/hello?from=refs%2Fheads%2Ffeature"' in listing

    page = signed_in.get("/prompts/hello").text
    shown = [unescape(t) for t in re.findall(r'class="badge ref[^"]*"[^>]*>(.*?)</a>', page)]
    assert sorted(shown) == [
        "feature: differs",
        "old → v1",
        "same → v3 (served)",
        "v1.2 tag → v2",
    ]
    diff = signed_in.get("/diff/hello?from=refs%2Fheads%2Ffeature")
    assert diff.status_code == 200 and "A feature line." in diff.text
    # triage is the same on every ref: no badge in the list.
    triage = re.search(r'href="/prompts/support/triage".*?</li>', listing, re.DOTALL)
    assert triage and "badge ref" not in triage.group(0)


def test_hostile_ref_names_are_escaped(signed_in: Browser) -> None:
    api = signed_in.api
    three_versions(api)
    hostile = '"><svg/onload=alert(1)>&'
    git(api.repo, "branch", hostile, "HEAD~1")
    git(api.repo, "tag", "<b>t</b>", "HEAD~2")
    for url in ("/", "/prompts/hello"):
        page = signed_in.get(url).text
        assert "<svg/onload" not in page and "<b>t</b>" not in page
        assert "&#34;&gt;&lt;svg/onload=alert(1)&gt;&amp; → v2" in page
        assert "&lt;b&gt;t&lt;/b&gt; tag → v1" in page
        link = re.search(r'href="(/diff/hello\?from=refs%2Fheads%2F[^"]*)"', page)
        assert link
        query = parse_qs(urlsplit(unescape(link.group(1))).query)
        assert query["from"] == [f"refs/heads/{hostile}"]
    diff = signed_in.get(f"/diff/hello?from=refs%2Fheads%2F{hostile.replace('&', '%26')}")
    assert diff.status_code == 200 and "<svg/onload" not in diff.text


def test_refs_are_read_once_per_ref_and_commit(api: ApiEnv) -> None:
    three_versions(api)
    git(api.repo, "branch", "b1", "HEAD~1")
    refs = RefVersions()
    first = refs.marks(api.ws.index)
    assert [(m.name, m.number) for m in first["hello"]] == [("b1", 2)]
    assert refs.marks(api.ws.index) is first  # nothing moved: the answer kept whole
    git(api.repo, "branch", "-f", "b1", "HEAD~2")
    moved = refs.marks(api.ws.index)
    assert [(m.name, m.number) for m in moved["hello"]] == [("b1", 1)]
    assert list(refs._trees) == [("refs/heads/b1", git(api.repo, "rev-parse", "HEAD~2"))]
    git(api.repo, "branch", "-D", "b1")
    assert refs.marks(api.ws.index) == {}
    limited = RefVersions(max_refs=1)
    for name in ("x1", "x2", "x3"):
        git(api.repo, "branch", name)
    assert len(limited.marks(api.ws.index)["hello"]) == 1


# -- restoring a version ---------------------------------------------------------------------


def restore_form(page: str, number: int) -> dict[str, str]:
    found = re.search(
        rf'<form method="post" action="/restore/hello"[^>]*>.*?name="version" value="{number}"'
        r'.*?name="base" value="([0-9a-f]+)"',
        page,
        re.DOTALL,
    )
    assert found, page
    return {"version": str(number), "base": found.group(1)}


def test_restore_commits_the_old_text_as_a_new_version(signed_in: Browser) -> None:
    api = signed_in.api
    three_versions(api)
    history = signed_in.get("/history/hello").text
    assert 'data-confirm="Restore version 1 of hello?' in history
    assert 'name="version" value="3"' not in history  # the version served has no button
    fields = restore_form(history, 1)
    done = signed_in.post("/restore/hello", {**fields, "csrf_token": signed_in.csrf})
    assert done.status_code == 303, done.text
    target = done.headers["location"]
    assert target.startswith("/prompts/hello?committed=") and target.endswith("&restored=1")
    head = git(api.repo, "rev-parse", "HEAD")
    assert git(api.repo, "show", "HEAD:prompts/hello.md") + "\n" == HELLO[0]
    assert git(api.repo, "log", "-1", "--format=%s").startswith("Restore hello to version 1")
    assert api.repo.joinpath("prompts/hello.md").read_text("utf-8") == HELLO[0]
    page = signed_in.get(target).text
    assert "Restored version 1: committed as version 4" in page and head[:12] in page
    assert [v.number for v in api.ws.index.versions("hello")] == [1, 2, 3, 4]


def test_a_stale_base_is_a_conflict_and_nothing_is_overwritten(signed_in: Browser) -> None:
    api = signed_in.api
    three_versions(api)
    fields = restore_form(signed_in.get("/history/hello").text, 1)
    # Someone else commits meanwhile.
    api.repo.joinpath("prompts/hello.md").write_text(HELLO[2] + "Theirs.\n", "utf-8")
    git(api.repo, "commit", "-qam", "theirs")
    api.ws.index.sync()
    head = git(api.repo, "rev-parse", "HEAD")
    refused = signed_in.post("/restore/hello", {**fields, "csrf_token": signed_in.csrf})
    assert refused.status_code == 409, refused.text
    assert "Version 1 was not restored" in refused.text and "moved on" in refused.text
    assert "Nothing was overwritten" in refused.text
    assert 'name="version" value="1"' in refused.text  # the history as it is now, to try again
    assert git(api.repo, "rev-parse", "HEAD") == head
    assert api.repo.joinpath("prompts/hello.md").read_text("utf-8") == HELLO[2] + "Theirs.\n"


def test_restore_needs_the_csrf_token_and_refuses_bad_input(signed_in: Browser) -> None:
    api = signed_in.api
    three_versions(api)
    fields = restore_form(signed_in.get("/history/hello").text, 2)
    head = git(api.repo, "rev-parse", "HEAD")
    for data, headers, status, says in (
        (fields, {}, 403, "Missing CSRF token"),
        ({**fields, "csrf_token": "0" * 64}, {}, 403, "Wrong CSRF token"),
        ({**fields, "csrf_token": signed_in.csrf}, {"Origin": "https://evil.example"}, 403, ""),
        ({**fields, "version": "x", "csrf_token": signed_in.csrf}, {}, 400, "Invalid version"),
        ({**fields, "version": "9" * 40, "csrf_token": signed_in.csrf}, {}, 400, "Invalid"),
        ({**fields, "version": "0", "csrf_token": signed_in.csrf}, {}, 400, "Invalid version"),
        ({**fields, "version": "99", "csrf_token": signed_in.csrf}, {}, 404, "no version 99"),
        ({**fields, "base": "", "csrf_token": signed_in.csrf}, {}, 400, "no base version"),
        ({**fields, "base": "zz", "csrf_token": signed_in.csrf}, {}, 400, "not a commit sha"),
    ):
        refused = signed_in.post("/restore/hello", data, **headers)
        assert refused.status_code == status, (data, refused.text)
        assert says in refused.text and "text/html" in refused.headers["content-type"]
    missing = signed_in.post("/restore/nope", {**fields, "csrf_token": signed_in.csrf})
    assert missing.status_code == 404
    program = api.client.post("/restore/hello", data=fields)
    assert program.status_code == 401
    assert git(api.repo, "rev-parse", "HEAD") == head


def test_a_draft_served_offers_no_restore_and_a_forced_one_is_refused(signed_in: Browser) -> None:
    api = signed_in.api
    three_versions(api)
    fields = restore_form(signed_in.get("/history/hello").text, 1)
    draft = HELLO[2] + "An uncommitted line.\n"
    api.repo.joinpath("prompts/hello.md").write_text(draft, "utf-8")
    api.ws.index.sync()
    history = signed_in.get("/history/hello").text
    assert 'action="/restore/hello"' not in history
    head = git(api.repo, "rev-parse", "HEAD")
    refused = signed_in.post("/restore/hello", {**fields, "csrf_token": signed_in.csrf})
    assert refused.status_code == 409 and "uncommitted changes" in refused.text
    assert git(api.repo, "rev-parse", "HEAD") == head
    assert api.repo.joinpath("prompts/hello.md").read_text("utf-8") == draft
