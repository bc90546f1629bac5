"""The traces pages over HTTP, in-process (the journey in a real browser is in
test_web_traces_browser.py): the run log listed with its filters, paged by cursor forward and
back over rows written through the real run log, bad filters answered as a page naming the
field, hostile text escaped, one call's page, a trace link that arrives before its row, and
who may see them. Pages are read with a client of their own, so their HTML error pages stay
out of the API's one-shape check of JSON errors."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from llmkit.runlog import RunLog
from llmkit.runlog_query import encode_cursor
from llmkit.runlog_record import RunRecord
from llmkit.web import traces_views as tv
from tests.api_fixtures import HTML, SEED_FILES, ApiEnv, MakeApi

ECHO_YAML = "models:\n  default:\n    model: echo\n"
PROMPTS = ("alpha", "beta", "support/gamma")
MODELS = ("echo", "openai/gpt-4o-mini")
ROWS = 23  # more than four pages of five


@dataclass
class Pages:
    """The app's pages, read as a signed-in admin (by bearer key, as a program may)."""

    api: ApiEnv
    client: TestClient

    def get(self, url: str, **headers: str) -> httpx.Response:
        sent = {**HTML, **self.api.admin, **headers}
        return self.client.get(url, headers=sent, follow_redirects=False)


@pytest.fixture
def echo_api(make_api: MakeApi) -> ApiEnv:
    """The seeded repository with `default` as the echo model."""
    return make_api(files={**SEED_FILES, "llmkit.yaml": ECHO_YAML})


@pytest.fixture
def site(echo_api: ApiEnv) -> Iterator[Pages]:
    yield Pages(echo_api, TestClient(echo_api.app, raise_server_exceptions=False))


def log_rows(runlog: RunLog, count: int = ROWS) -> None:
    """`count` calls through the real run log: three prompts, two models, every fourth an
    error and every seventh cancelled, a minute apart from 2024-05-01T10:00Z, with ties (two
    calls in the same millisecond) that only the id orders."""
    for i in range(count):
        status = "cancelled" if i % 7 == 6 else "error" if i % 4 == 3 else "ok"
        minute = i - i % 3 // 2  # rows 1 and 2 of each three share a time
        runlog.log(
            RunRecord(
                prompt_key=PROMPTS[i % 3],
                version_number=1 + i % 2,
                version_sha=f"{1 + i % 2:02d}" + "ab" * 19,
                model=MODELS[i % 2],
                request={"messages": [{"role": "user", "content": f"call {i}"}]},
                response=f"answer {i}" if status == "ok" else None,
                status=status,
                error="upstream said no" if status == "error" else None,
                input_tokens=10 + i,
                output_tokens=i,
                cost=0.0001 * i,
                latency_ms=100.0 + i,
                created_at=f"2024-05-01T10:{minute:02d}:00.000Z",
            )
        )
    assert runlog.flush()


def everything(runlog: RunLog) -> list[dict[str, Any]]:
    """Every row, newest first, read straight from SQLite (not through the paging under test)."""
    rows = runlog._db.reader().execute("SELECT id FROM run_log").fetchall()
    found = [runlog.get_by_id(r[0]) for r in rows]
    return sorted(
        (r for r in found if r is not None), key=lambda r: (r["created_at"], r["id"]), reverse=True
    )


def ids_on(page: httpx.Response) -> list[int]:
    return [int(n) for n in re.findall(r'<a href="/traces/(\d+)">#', page.text)]


def link(page: httpx.Response, rel: str) -> str | None:
    """The first pager link with `rel` ("next": Older, "prev": Newer), as a URL to get."""
    found = re.search(rf'<a href="(/traces\?[^"]*)" rel="{rel}">', page.text)
    return unescape(found.group(1)) if found else None


def walk(site: Pages, url: str) -> tuple[list[int], list[list[int]]]:
    """Older links from `url` to the last page, then Newer links back to the newest: the ids
    of every row going down, and each page's ids as seen coming back up."""
    pages: list[list[int]] = []
    page = site.get(url)
    for _ in range(50):
        assert page.status_code == 200, page.text
        pages.append(ids_on(page))
        older = link(page, "next")
        if older is None:
            break
        page = site.get(older)
    else:
        raise AssertionError("more than 50 pages")
    down = [i for ids in pages for i in ids]
    back = [pages[-1]]
    for _ in range(50):
        newer = link(page, "prev")
        if newer is None:
            break
        page = site.get(newer)
        assert page.status_code == 200, page.text
        back.append(ids_on(page))
    return down, list(reversed(back))


def test_paging_by_cursor_walks_every_row_older_then_newer_with_the_filters_kept(
    site: Pages,
) -> None:
    runlog = site.api.ws.runlog
    log_rows(runlog)
    rows = everything(runlog)
    cases: list[tuple[dict[str, str], Any]] = [
        ({}, lambda r: True),
        ({"prompt": "beta"}, lambda r: r["prompt_key"] == "beta"),
        ({"model": "echo"}, lambda r: r["model"] == "echo"),
        ({"status": "error"}, lambda r: r["status"] == "error"),
        ({"version": "2"}, lambda r: r["version_number"] == 2),
        ({"version": "01abab"}, lambda r: r["version_number"] == 1),
        (
            # as a datetime-local input sends it: no seconds, no zone (read as UTC)
            {"from": "2024-05-01T10:05", "to": "2024-05-01T10:17"},
            lambda r: "2024-05-01T10:05" <= r["created_at"] < "2024-05-01T10:17",
        ),
        (
            {"prompt": "alpha", "status": "ok", "from": "2024-05-01T10:03:00Z"},
            lambda r: (
                r["prompt_key"] == "alpha"
                and r["status"] == "ok"
                and r["created_at"] >= "2024-05-01T10:03"
            ),
        ),
    ]
    for filters, keep in cases:
        expected = [r["id"] for r in rows if keep(r)]
        assert expected, filters
        query = httpx.QueryParams({**filters, "limit": "5"})
        down, back = walk(site, f"/traces?{query}")
        assert down == expected, filters
        # Coming back by Newer gives the same pages as going down, the newest one whole.
        assert [i for ids in back for i in ids] == expected, filters
        assert back[0] == expected[:5], filters
    # The unfiltered walk crossed pages whose rows share a time.
    assert len({r["created_at"] for r in rows}) < len(rows)


def test_the_links_keep_the_filters_and_the_form_shows_them(site: Pages) -> None:
    log_rows(site.api.ws.runlog)
    page = site.get("/traces?prompt=alpha&status=ok&version=&model=&from=&to=&limit=2")
    assert page.status_code == 200
    older = link(page, "next")
    assert older is not None and older.startswith("/traces?prompt=alpha&status=ok&limit=2&cursor=")
    assert 'id="f-prompt" name="prompt" type="text" value="alpha"' in page.text
    assert '<option value="ok" selected>ok</option>' in page.text
    assert "calls match" in page.text
    second = site.get(older)
    newer = link(second, "prev")
    assert newer is not None and newer.startswith("/traces?prompt=alpha&status=ok&limit=2&before=")
    assert 'href="/traces?prompt=alpha&amp;status=ok&amp;limit=2">Newest</a>' in second.text
    top = site.get(newer)
    assert ids_on(top) == ids_on(page) and link(top, "prev") is None
    assert ">Newest</a>" not in top.text and ">Newest</a>" not in page.text
    # A shared link's time in the stored shape is shown as the datetime-local input holds it.
    shared = site.get("/traces?from=2024-05-01T10:30:00Z&to=2024-05-01T10:30:15.000Z")
    assert 'name="from" type="datetime-local" step="1" value="2024-05-01T10:30"' in shared.text
    assert 'name="to" type="datetime-local" step="1" value="2024-05-01T10:30:15"' in shared.text


def test_each_row_shows_its_figures_and_links(site: Pages) -> None:
    log_rows(site.api.ws.runlog, 7)
    page = site.get("/traces?prompt=alpha")
    text = page.text
    # Row 6: alpha, v1, echo, cancelled; row 3: alpha, v2, openai, error; row 0: ok. Ids are
    # read from the log: they are reserved in blocks, so the first need not be 1.
    alpha = [r["id"] for r in everything(site.api.ws.runlog) if r["prompt_key"] == "alpha"]
    assert len(alpha) == 3 and ids_on(page) == alpha
    assert '<a href="/prompts/alpha?version=1">alpha <span class="version">v1</span></a>' in text
    assert '<a href="/prompts/alpha?version=2">alpha <span class="version">v2</span></a>' in text
    for status, mark in (("cancelled", "⊘"), ("error", "✕"), ("ok", "✓")):
        assert f'<span aria-hidden="true">{mark}</span> {status}</span>' in text
    assert "<code>openai/gpt-4o-mini</code>" in text
    assert "106 ms" in text and "16 → 6" in text and "$0.0006" in text
    assert "<td>api</td>" in text
    assert "3 calls match" in text


def test_the_empty_log_and_an_empty_filter_say_so(site: Pages) -> None:
    empty = site.get("/traces")
    assert empty.status_code == 200
    assert "No calls yet: the run log is empty." in empty.text
    log_rows(site.api.ws.runlog, 3)
    none = site.get("/traces?prompt=nothing-like-it")
    assert none.status_code == 200 and "No calls match these filters." in none.text
    assert ids_on(none) == []


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("status=bogus", "Status: Unknown status &#39;bogus&#39;"),
        ("from=yesterday", "From: from is not an ISO-8601 time: &#39;yesterday&#39;"),
        ("to=2024-13-01T00:00", "To: to is not an ISO-8601 time"),
        ("from=2024-05-02T00:00&to=2024-05-01T00:00", "To: To (2024-05-01T00:00:00.000Z) must"),
        ("version=v1", "Version: version must be a version number"),
        ("limit=0", "Rows per page: Rows per page must be from 1 to 500, got 0"),
        ("limit=lots", "Rows per page: Rows per page must be a whole number"),
        ("limit=100000000000", "Rows per page: Rows per page must be a whole number"),
        ("cursor=garbage", "Older: This link&#39;s page position (cursor=&#39;garbage&#39;)"),
        ("before=W10", "Newer: This link&#39;s page position (before=&#39;W10&#39;)"),
        (
            f"cursor={encode_cursor('2024-05-01T10:00:00.000Z', 3)}&before=x",
            "Newer: A link names either older or newer calls, not both",
        ),
        ("prompt=" + "p" * 501, "Prompt: Prompt is 501 characters long; at most 500"),
    ],
)
def test_bad_filters_are_a_page_naming_the_field(site: Pages, query: str, shown: str) -> None:
    log_rows(site.api.ws.runlog, 3)
    page = site.get(f"/traces?{query}")
    assert page.status_code == 400, page.text
    assert "text/html" in page.headers["content-type"]
    assert shown in page.text
    assert 'role="alert"' in page.text and ids_on(page) == []
    # The form is still there, holding what was sent, so it can be put right.
    assert '<form method="get" action="/traces"' in page.text


def test_hostile_text_is_escaped_on_both_pages(site: Pages) -> None:
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    site.api.ws.runlog.log(
        RunRecord(
            prompt_key=f"p/{hostile}",
            model=f"m{hostile}",
            request={
                "messages": [
                    {"role": f"user{hostile}", "content": f"hi {hostile}"},
                    {"role": "user", "content": [{"type": "text", "text": hostile}]},
                ]
            },
            response={"choices": [{"message": {"role": "assistant", "content": hostile}}]},
            status="error",
            error=f"said {hostile}",
        )
    )
    assert site.api.ws.runlog.flush()
    (row,) = everything(site.api.ws.runlog)
    one = f"/traces/{row['id']}"
    for url in ("/traces", one, f"/traces?{httpx.QueryParams({'model': hostile})}"):
        page = site.get(url)
        assert page.status_code in (200, 400), (url, page.text)
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, url
    call = site.get(one).text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in call
    assert call.count('<pre class="template">hi &lt;script&gt;') == 1
    assert 'aria-label="assistant answer"' in call
    assert "said &lt;script&gt;" in call


def test_a_call_through_the_api_is_shown_whole(site: Pages) -> None:
    api = site.api
    body = {
        "model": "hello",
        "messages": [],
        "variables": {"personality": "<b>dry</b>", "question": "Where is the moon?"},
    }
    answered = api.client.post("/v1/chat/completions", json=body, headers=api.run)
    assert answered.status_code == 200, answered.text
    completion_id = answered.json()["id"]
    page = site.get(f"/traces/{completion_id}")
    assert page.status_code == 200, page.text
    text = page.text
    [row] = everything(api.ws.runlog)
    assert completion_id == f"chatcmpl-{row['id']}"
    assert '<article class="section" aria-label="system message">' in text
    assert "with a &lt;b&gt;dry&lt;/b&gt; personality." in text
    assert '<pre class="template">Where is the moon?</pre>' in text
    assert '<pre class="template answer">system: You are a helpful assistant' in text
    assert f"<dt>Tokens in</dt><dd>{row['input_tokens']}</dd>" in text
    assert f"<dt>Tokens out</dt><dd>{row['output_tokens']}</dd>" in text
    assert "<dt>Provider</dt><dd>echo</dd>" in text
    assert "— (not streamed)" in text
    assert f"<code>{row['trace_id']}</code>" in text
    assert '<a href="/prompts/hello?version=1">v1</a>' in text
    assert "<summary>The request as logged (JSON)</summary>" in text
    # The id, the completion id, the trace id and a prefix of it name the same call.
    for ident in (str(row["id"]), row["trace_id"], row["trace_id"][:8]):
        assert site.get(f"/traces/{ident}").text == text, ident


def test_a_streamed_call_shows_its_time_to_first_token(site: Pages) -> None:
    api = site.api
    body = {"model": "hello", "messages": [], "variables": {"personality": "calm", "question": "?"}}
    with api.client.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=api.run
    ) as streamed:
        assert streamed.status_code == 200
        text = "".join(streamed.iter_text())
    completion_id = re.search(r'"id":\s*"(chatcmpl-\d+)"', text)
    assert completion_id is not None, text
    page = site.get(f"/traces/{completion_id.group(1)}")
    assert page.status_code == 200, page.text
    [row] = everything(api.ws.runlog)
    assert row["stream"] and row["ttft_ms"] is not None
    assert f"<dt>Time to first token</dt><dd>{tv.ms(row['ttft_ms'])}</dd>" in page.text
    assert '<pre class="template answer">system: You are a helpful assistant' in page.text


def test_a_trace_link_that_arrives_before_its_row_waits_for_it(site: Pages) -> None:
    runlog = site.api.ws.runlog
    call_id = runlog.new_id()
    assert call_id is not None
    record = RunRecord(id=call_id, prompt_key="late", model="echo", request={}, response="done")
    # The row is queued only after the page has started waiting for it.
    later = threading.Timer(0.3, runlog.log, (record,))
    later.start()
    try:
        page = site.get(f"/traces/chatcmpl-{call_id}")
    finally:
        later.join()
    assert page.status_code == 200, page.text
    assert f"<h1>Call #{call_id}" in page.text


def test_a_call_that_is_not_in_the_log_is_a_404_page(site: Pages) -> None:
    log_rows(site.api.ws.runlog, 2)
    for ident in ("999999", "chatcmpl-999999", "f" * 32, "abcdef12"):
        page = site.get(f"/traces/{ident}")
        assert page.status_code == 404, ident
        assert "No log entry with" in page.text and 'href="/traces"' in page.text
        program = site.client.get(f"/traces/{ident}", headers=site.api.admin)
        assert program.status_code == 404 and program.json()["error"]["param"] in ("id", "trace_id")
    short = site.get("/traces/abc")
    assert short.status_code == 400 and "needs at least 6 characters" in short.text
    hostile = site.get("/traces/%3Cscript%3Ealert(1)")
    assert hostile.status_code == 404
    assert "<script>alert" not in hostile.text and "&lt;script&gt;alert(1)" in hostile.text


def test_the_pages_need_an_admin(site: Pages) -> None:
    api = site.api
    for url in ("/traces", "/traces?prompt=alpha", "/traces/1"):
        sent = site.client.get(url, headers=HTML, follow_redirects=False)
        assert sent.status_code == 303, url
        assert sent.headers["location"].startswith("/sign-in?next=%2Ftraces"), url
        program = site.client.get(url, follow_redirects=False)
        assert program.status_code == 401, url
        refused = site.client.get(url, headers={**HTML, **api.run})
        assert refused.status_code == 403 and "needs an admin key" in refused.text, url
    # Signed in with a session cookie, as a browser is.
    signed = site.client.post("/v1/ui/auth/login", json={"key": api.admin_key})
    assert signed.status_code == 200
    page = site.client.get("/traces", headers=HTML)
    assert page.status_code == 200 and "<h1>Traces" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_page_before_is_page_after_backwards(echo_api: ApiEnv) -> None:
    runlog = echo_api.ws.runlog
    log_rows(runlog)
    pages = []
    found = runlog.page_after(None, limit=4)
    pages.append(found.rows)
    while found.next_cursor:
        found = runlog.page_after(found.next_cursor, limit=4)
        pages.append(found.rows)
    # From each page's first row, page_before gives the page above it, and says whether
    # there are newer rows still.
    for above, page in itertools.pairwise(pages):
        back = runlog.page_before(encode_cursor(page[0]["created_at"], page[0]["id"]), limit=4)
        assert back.rows == above
        first = above[0]
        is_top = above is pages[0]
        assert back.next_cursor == (
            None if is_top else encode_cursor(first["created_at"], first["id"])
        )
    filtered = runlog.page_before(
        encode_cursor("2024-05-01T10:00:00.000Z", 0), limit=500, prompt="beta", status="ok"
    )
    assert [r["id"] for r in filtered.rows] == [
        r["id"] for r in everything(runlog) if r["prompt_key"] == "beta" and r["status"] == "ok"
    ]
    assert filtered.next_cursor is None


def test_view_helpers_read_every_logged_shape() -> None:
    assert tv.log_id_of("chatcmpl-42") == "42" and tv.log_id_of("chatcmpl-x") == "chatcmpl-x"
    assert tv.answer_of("streamed text") == tv.Answer("streamed text", None)
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    with_tools = tv.answer_of({"content": "", "tool_calls": calls})
    assert with_tools is not None and '"name": "f"' in (with_tools.tool_calls or "")
    assert tv.answer_of({"error": "cut"}) is None and tv.answer_of(None) is None
    assert tv.messages_of('{"messages": [cut') is None
    [image] = (
        tv.messages_of(
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
        )
        or []
    )
    assert image.text is None and "image_url" in (image.extra or "")
    assert tv.cost(None) == "—" and tv.cost(0.0) == "$0" and tv.cost(1.5) == "$1.50"
    assert tv.cost(0.000123) == "$0.000123"
    assert tv.time_input_value("2024-05-01T10:30:00.000Z") == "2024-05-01T10:30"
    assert tv.time_input_value("garbage") == "garbage"
