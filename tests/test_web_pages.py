"""The web UI's pages over HTTP, in-process (the journeys in a real browser are in
test_web_ui.py): who may see them, CSRF on their forms, their headers, errors as pages, and
what they show from hostile or broken prompt files. The pages are read with a client of their
own, so their HTML error pages stay out of the API's one-shape check of JSON errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from llmkit import __version__
from llmkit.prompt_views import iso_time
from llmkit.sessions import SESSION_COOKIE
from llmkit.web import views
from tests.api_fixtures import HTML, ORIGIN, ApiEnv, Browser
from tests.helpers import git, invoke


@pytest.fixture
def pages(api: ApiEnv) -> Iterator[TestClient]:
    """A client of the app that records no errors (the API fixture's client does)."""
    yield TestClient(api.app, raise_server_exceptions=False)


@pytest.fixture
def signed_in(api: ApiEnv, pages: TestClient) -> Browser:
    return Browser.sign_in(api, pages)


def test_a_browser_is_sent_to_sign_in_and_a_program_gets_the_api_401(
    api: ApiEnv, pages: TestClient
) -> None:
    for url in ("/", "/prompts/hello", "/history/hello", "/diff/hello?from=1", "/keys"):
        sent = pages.get(url, headers=HTML, follow_redirects=False)
        assert sent.status_code == 303, (url, sent.text)
        assert sent.headers["location"].startswith("/sign-in?next=%2F"), url
        program = pages.get(url, follow_redirects=False)
        assert program.status_code == 401, url
        assert program.json()["error"]["type"] == "authentication_error"
    form = pages.get("/sign-in?next=/history/hello", headers=HTML)
    assert form.status_code == 200
    assert 'action="/v1/ui/auth/login"' in form.text
    assert 'name="next" value="/history/hello"' in form.text
    for elsewhere in ("//evil.example/", "https://evil.example/", "/sign-in"):
        page = pages.get("/sign-in", params={"next": elsewhere}, headers=HTML)
        assert 'name="next" value="/"' in page.text, elsewhere


def test_a_run_key_sees_no_page(api: ApiEnv, pages: TestClient) -> None:
    page = pages.get("/keys", headers={**HTML, **api.run})
    assert page.status_code == 403
    assert "needs an admin key" in page.text and "text/html" in page.headers["content-type"]
    assert api.run_key not in page.text


def test_an_ended_session_is_told_why_on_the_sign_in_page(api: ApiEnv, signed_in: Browser) -> None:
    api.ws.keys.revoke(api.admin_key_id)
    sent = signed_in.get("/keys")
    assert sent.status_code == 303 and sent.headers["location"] == "/sign-in?next=%2Fkeys"
    page = signed_in.get("/sign-in?next=/keys")
    assert "Session ended: the key it was signed in with" in page.text


def test_every_page_forbids_other_hosts_and_caching(api: ApiEnv, signed_in: Browser) -> None:
    for url in ("/", "/prompts/hello", "/history/hello", "/diff/hello", "/edit/hello", "/keys"):
        page = signed_in.get(url)
        assert page.status_code == 200, (url, page.text)
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert page.headers["cache-control"] == "no-store"
        assert "http://" not in page.text and "https://" not in page.text, url
    for asset in ("/static/llmkit.css", "/static/llmkit.js"):
        assert signed_in.client.get(asset, headers={"Cookie": ""}).status_code == 200


def test_forms_need_the_csrf_token_and_our_origin(api: ApiEnv, signed_in: Browser) -> None:
    head = api.head()
    content = api.repo.joinpath("prompts/hello.md").read_text("utf-8") + "\nMore.\n"
    fields = {"content": content, "base": head, "message": "from a form"}
    for headers, data, code in (
        ({"Origin": ORIGIN}, fields, "Missing CSRF token"),
        ({"Origin": ORIGIN}, {**fields, "csrf_token": "0" * 64}, "Wrong CSRF token"),
        ({"Origin": "https://evil.example"}, {**fields, "csrf_token": signed_in.csrf}, "evil"),
        ({}, {**fields, "csrf_token": signed_in.csrf}, "must carry an Origin"),
    ):
        refused = signed_in.client.post(
            "/edit/hello", data=data, headers={**HTML, **headers}, follow_redirects=False
        )
        assert refused.status_code == 403, refused.text
        assert code in refused.text
        created = signed_in.client.post(
            "/keys", data={"name": "x", **data}, headers={**HTML, **headers}
        )
        assert created.status_code == 403
    assert api.head() == head
    assert [k.name for k in api.ws.keys.list()] == ["test admin", "test run"]

    done = signed_in.client.post(
        "/edit/hello",
        data={**fields, "csrf_token": signed_in.csrf},
        headers={**HTML, "Origin": ORIGIN},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert git(api.repo, "log", "-1", "--format=%s") == "from a form"


def test_a_broken_file_is_refused_with_the_text_kept(api: ApiEnv, signed_in: Browser) -> None:
    head = api.head()
    broken = "---\nmodel: [unclosed\n---\n<!-- role:user -->\nHi <b>there</b>\n"
    page = signed_in.client.post(
        "/edit/hello",
        data={"content": broken, "base": head, "csrf_token": signed_in.csrf},
        headers={**HTML, "Origin": ORIGIN},
    )
    assert page.status_code == 400
    assert "Not committed:" in page.text
    assert "Hi &lt;b&gt;there&lt;/b&gt;" in page.text  # kept in the editor, escaped
    assert api.head() == head


def test_a_draft_cannot_be_edited_and_is_shown_as_a_draft(api: ApiEnv, signed_in: Browser) -> None:
    path = api.repo / "prompts/hello.md"
    path.write_text(path.read_text("utf-8") + "\n<script>alert(1)</script> {{ extra }}\n")
    api.ws.index.sync()
    listing = signed_in.get("/")
    assert 'class="badge draft"' in listing.text
    page = signed_in.get("/prompts/hello")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>alert" not in page.text
    assert '<mark class="expr">{{ extra }}</mark>' in page.text
    edit = signed_in.get("/edit/hello")
    assert edit.status_code == 409 and "uncommitted changes" in edit.text


def test_unknown_prompts_and_versions_are_pages_that_say_so(
    api: ApiEnv, signed_in: Browser
) -> None:
    missing = signed_in.get("/prompts/no/such")
    assert missing.status_code == 404 and "No prompt found with key &#39;no/such&#39;" in (
        missing.text
    )
    assert signed_in.get("/prompts/hello?version=9").status_code == 404
    assert signed_in.get("/diff/hello?from=no-such-branch").status_code == 404
    assert signed_in.get("/diff/hello?from=" + "x" * 300).status_code == 400
    assert signed_in.get("/prompts/..%2Fsecrets").status_code in (400, 404)


def test_side_by_side_pairs_changed_lines_and_keeps_the_rest() -> None:
    rows = views.side_by_side("a\nb\nc\n", "a\nB\nc\nd\n")
    assert [(r.kind, r.old, r.new) for r in rows] == [
        ("same", "a", "a"),
        ("changed", "b", "B"),
        ("same", "c", "c"),
        ("added", None, "d"),
    ]
    assert [(r.old_number, r.new_number) for r in rows] == [(1, 1), (2, 2), (3, 3), (None, 4)]
    removed = views.side_by_side("x\ny\n", "x\n")
    assert [(r.kind, r.old_number, r.new_number) for r in removed][-1] == ("removed", 2, None)


def test_marked_escapes_text_and_marks_each_expression() -> None:
    shown = views.marked("<b>{{ name }}</b> {% if x %}{{ '<i>' }}{% endif %}")
    assert str(shown) == (
        '&lt;b&gt;<mark class="expr">{{ name }}</mark>&lt;/b&gt; '
        '<mark class="expr">{% if x %}</mark><mark class="expr">{{ &#39;&lt;i&gt;&#39; }}</mark>'
        '<mark class="expr">{% endif %}</mark>'
    )


def test_the_session_cookie_is_never_on_a_page(api: ApiEnv, signed_in: Browser) -> None:
    token = signed_in.client.cookies[SESSION_COOKIE]
    for url in ("/", "/keys", "/prompts/hello"):
        assert token not in signed_in.get(url).text


def test_the_list_shows_each_prompts_last_change_escaped(api: ApiEnv, signed_in: Browser) -> None:
    (api.repo / "prompts/team").mkdir(exist_ok=True)
    (api.repo / "prompts/team/a_b.md").write_text("---\nmodel: echo\n---\nHi\n", "utf-8")
    git(api.repo, "add", "-A")
    git(api.repo, "commit", "-q", "-m", "<b>Add</b> a&b\r\n\nwhy it was added")
    api.ws.index.sync()
    commit = api.ws.index.version("team/a_b").commit
    assert commit is not None
    listing = signed_in.get("/").text
    assert 'href="/prompts/team/a_b"' in listing
    assert f'<time datetime="{iso_time(commit.authored_at)}">{views.when(commit)}</time>' in listing
    assert "&lt;b&gt;Add&lt;/b&gt; a&amp;b</p>" in listing
    assert "<b>Add" not in listing and "why it was added" not in listing


def test_every_area_names_llmkits_version_in_its_footer(signed_in: Browser) -> None:
    """A page's own `version` (the playground's chosen version, say) never hides llmkit's."""
    for url in ("/", "/prompts/hello", "/playground/hello", "/traces", "/evals", "/keys"):
        page = signed_in.get(url)
        assert page.status_code == 200, (url, page.text[:300])
        assert f"llmkit {__version__}</footer>" in page.text, url


def test_the_list_and_the_prompt_page_show_each_prompts_model_and_type(
    api: ApiEnv, signed_in: Browser
) -> None:
    (api.repo / "prompts/static.md").write_text("---\nmodel: echo\nchat: true\n---\nHi\n", "utf-8")
    git(api.repo, "add", "-A")
    git(api.repo, "commit", "-q", "-m", "Add a static chat prompt")
    api.ws.index.sync()
    listing = signed_in.get("/").text
    assert '<span class="kind">dynamic_both</span>' in listing  # hello reads a user variable
    assert '<span class="kind">static · chat</span>' in listing
    page = signed_in.get("/prompts/hello").text
    assert "<dt>Model</dt><dd><code>default</code></dd>" in page
    assert "<dt>Type</dt><dd>dynamic_both</dd>" in page


def test_the_list_follows_every_change_of_the_index_even_one_made_by_another_process(
    api: ApiEnv, signed_in: Browser
) -> None:
    """The list's rows are kept between requests; a commit, a draft and a sync by another
    process (here `llmkit index` in the repository) must each show at the next request."""
    assert "fresh" not in signed_in.get("/").text
    (api.repo / "prompts/fresh.md").write_text("---\nmodel: echo\n---\nHi\n", "utf-8")
    git(api.repo, "add", "-A")
    git(api.repo, "commit", "-q", "-m", "Add fresh")
    api.ws.index.sync()
    listing = signed_in.get("/").text
    assert 'href="/prompts/fresh"' in listing and "Add fresh" in listing
    assert '<span class="badge draft">draft</span>' not in listing

    (api.repo / "prompts/fresh.md").write_text("---\nmodel: echo\n---\nZebras\n", "utf-8")
    synced = invoke("index", cwd=api.repo)  # another Index, as another process would sync
    assert synced.exit_code == 0, synced.output
    listing = signed_in.get("/").text
    assert '<span class="badge draft">draft</span>' in listing
    assert "1 prompt matching" in signed_in.get("/?q=zebra").text
