"""The playground page in-process (the streamed journey in a real browser is in
test_web_playground_browser.py): the form it builds from a version's template, the unstreamed
run of a browser without JavaScript (through the API's executor, into the run log), the
version and model it runs, and what it says about bad input. Also the API's `model_override`,
which the page's script sends."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from llmkit.errors import BadRequest
from llmkit.web import playground_views as pv
from llmkit.web.playground import ADD_TURN
from tests.api_fixtures import HELLO_MD, HTML, ORIGIN, ApiEnv, Browser, MakeApi
from tests.fake_upstream import FakeUpstream

UNSET_KEY = "LLMKIT_TEST_PLAYGROUND_UNSET_KEY"

CONFIG = f"""\
models:
  default: {{model: echo}}
  other: {{model: echo}}
  keyless: {{model: openai/model-a, api_base: 'http://127.0.0.1:9/v1', api_key_env: {UNSET_KEY}}}
"""
SHOP_MD = """\
---
model: default
chat: true
---
<!-- role:system -->
You help {{ customer.name }} choose among:
{% for item in items %}- {{ item }}
{% endfor %}
Tone: {{ tone }}.
"""
NOTE_MD = """\
---
model: default
---
<!-- role:system -->
Summarise what the user says, in {{ language }}.
"""
FILES = {
    "llmkit.yaml": CONFIG,
    "prompts/hello.md": HELLO_MD,
    "prompts/shop/assist.md": SHOP_MD,
    "prompts/note.md": NOTE_MD,
}


class Playground(Browser):
    """A signed-in browser on the playground: it reads pages and runs prompts by its form."""

    def run(self, key: str, fields: dict[str, str], **headers: str) -> httpx.Response:
        """Post the playground's form as a browser does, CSRF token and origin included."""
        data = {"csrf_token": self.csrf, "action": "run", **fields}
        return self.client.post(
            f"/playground/{key}", data=data, headers={**HTML, "Origin": ORIGIN, **headers}
        )

    def rows(self) -> list[dict[str, Any]]:
        """The run log, newest first."""
        assert self.api.ws.runlog.flush()
        return list(self.api.ws.runlog.list())


@pytest.fixture
def shop(make_api: MakeApi) -> ApiEnv:
    return make_api(files=FILES)


@pytest.fixture
def browser(shop: ApiEnv) -> Playground:
    return Playground.sign_in(shop)


def inputs(html: str) -> dict[str, str]:
    """name -> the tag (input, textarea or select) of every form control on the page."""
    found = {}
    for tag in re.findall(r"<(?:input|textarea|select)\b[^>]*>", html):
        name = re.search(r'name="([^"]*)"', tag)
        if name:
            found[name.group(1)] = tag
    return found


def label_for(html: str, tag: str) -> str:
    """The text of the label of the control `tag`, which must have one."""
    ident = re.search(r'id="([^"]+)"', tag)
    assert ident, tag
    label = re.search(
        rf'<label for="{re.escape(ident.group(1))}"[^>]*>(.*?)</label>', html, re.DOTALL
    )
    assert label, f"no label for {tag}"
    return re.sub(r"<[^>]+>", "", label.group(1))


# -- the form --------------------------------------------------------------------------------


def test_the_form_has_a_labelled_input_per_variable_json_ticked_where_text_would_fail(
    browser: Playground,
) -> None:
    page = browser.get("/playground/shop/assist")
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"  # it holds the session's CSRF token
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/playground.js" defer></script>' in page.text
    controls = inputs(page.text)
    variables = sorted(n for n in controls if n.startswith("var:"))
    assert variables == ["var:customer", "var:items", "var:tone"]  # `item` is the loop's own
    for name in variables:
        assert label_for(page.text, controls[name]).startswith(name.removeprefix("var:"))
    # Looped over, or a field of it read: JSON, in a text area.
    assert controls["var:items"].startswith("<textarea")
    assert controls["var:customer"].startswith("<textarea")
    assert "checked" in controls["json:items"] and "checked" in controls["json:customer"]
    assert controls["var:tone"].startswith("<input") and "checked" not in controls["json:tone"]
    # A variable alone on its line is a passage: a text area.
    hello = inputs(browser.get("/playground/hello").text)
    assert hello["var:question"].startswith("<textarea")
    assert hello["var:personality"].startswith("<input")
    assert not any(n.startswith("role:") for n in hello)  # not a chat prompt


def test_a_chat_prompt_takes_turns_and_a_turn_is_added_without_javascript(
    browser: Playground,
) -> None:
    page = browser.get("/playground/shop/assist")
    controls = inputs(page.text)
    assert "role:0" in controls and "content:0" in controls and "role:1" not in controls
    assert label_for(page.text, controls["role:0"]) == "Turn 1"
    added = browser.client.post(
        "/playground/shop/assist",
        data={
            "csrf_token": browser.csrf,
            "action": ADD_TURN,
            "var:tone": "warm <b>",
            "role:0": "user",
            "content:0": "Which is cheapest?",
        },
        headers={**HTML, "Origin": ORIGIN},
    )
    assert added.status_code == 200, added.text
    controls = inputs(added.text)
    assert "role:1" in controls and "content:1" in controls
    assert ">Which is cheapest?</textarea>" in added.text  # what was typed is kept
    assert 'value="warm &lt;b&gt;"' in controls["var:tone"]
    assert browser.rows() == []  # adding a turn runs nothing


def test_an_answer_continues_the_conversation_without_javascript(browser: Playground) -> None:
    fields = {"var:items": '["tea"]', "json:items": "1", "var:customer": '{"name": "Al"}'}
    fields |= {"json:customer": "1", "var:tone": "kind", "role:0": "user", "content:0": "Which?"}
    ran = browser.run("shop/assist", fields)
    assert ran.status_code == 200, ran.text
    answer = re.search(r'name="answer" id="pg-answer" value="([^"]*)"', ran.text)
    assert answer and "user: Which?" in answer.group(1)
    assert '<p class="pg-continue">' in ran.text  # offered once there is an answer
    went_on = browser.run(
        "shop/assist",
        {**fields, "role:1": "user", "content:1": "", "action": "continue", "answer": "Tea."},
    )
    assert went_on.status_code == 200, went_on.text
    controls = inputs(went_on.text)
    assert "role:3" not in controls  # the empty turn was dropped
    assert re.search(r'<option value="assistant" selected>', went_on.text)
    assert ">Tea.</textarea>" in went_on.text
    assert 'id="content-2" name="content:2" rows="2"></textarea>' in went_on.text
    assert len(browser.rows()) == 1  # continuing runs nothing


def test_a_prompt_without_a_user_section_takes_one_message(browser: Playground) -> None:
    controls = inputs(browser.get("/playground/note").text)
    assert "message" in controls and "role:0" not in controls
    page = browser.run("note", {"var:language": "French", "message": "It rained all day."})
    assert page.status_code == 200, page.text
    [row] = browser.rows()
    assert row["request"]["messages"][-1] == {"role": "user", "content": "It rained all day."}


def test_versions_branches_and_tags_are_offered_and_the_chosen_one_runs(
    browser: Playground,
) -> None:
    api = browser.api
    api.git("tag", "v1-released")
    api.repo.joinpath("prompts/hello.md").write_text(
        HELLO_MD.replace("{{ question }}", "{{ question }} ({{ mood }})"), "utf-8"
    )
    api.git("commit", "-qam", "Ask about the mood")
    api.git("branch", "feature/tone")
    api.ws.index.sync()

    page = browser.get("/playground/hello")
    assert '<option value="" selected>served (version 2)</option>' in page.text
    for value in ("1", "2", "main", "feature/tone", "v1-released"):
        assert f'<option value="{value}"' in page.text, value
    assert "var:mood" in inputs(page.text)

    old = browser.get("/playground/hello?version=v1-released")
    assert '<option value="v1-released" selected>' in old.text
    controls = inputs(old.text)
    assert "var:mood" not in controls  # the form is the chosen version's
    assert 'value="v1-released"' in controls["version"]

    ran = browser.run("hello", {"version": "1", "var:personality": "calm", "var:question": "Hi?"})
    assert ran.status_code == 200, ran.text
    [row] = browser.rows()
    assert row["version_number"] == 1
    assert browser.get("/playground/hello?version=9").status_code == 404
    assert browser.get("/playground/hello?version=" + "x" * 300).status_code == 400
    assert browser.get("/playground/no/such").status_code == 404


# -- running without JavaScript --------------------------------------------------------------


def test_a_run_without_javascript_is_logged_and_shows_the_answer_and_its_figures(
    browser: Playground,
) -> None:
    page = browser.run("hello", {"var:personality": "cheerful", "var:question": "Hello?"})
    assert page.status_code == 200, page.text
    [row] = browser.rows()
    assert (row["status"], row["source"], row["prompt_key"]) == ("ok", "ui", "hello")
    assert row["request"]["messages"][0]["content"].endswith("a cheerful personality.")
    assert "user: Hello?" in page.text  # the echo model's answer
    figures = pv.figures(row)
    assert f'<dd id="pg-tokens">{figures.tokens}</dd>' in page.text
    assert re.search(r'<dd id="pg-latency">[\d,]+ ms</dd>', page.text)
    assert f'<dd id="pg-cost">{figures.cost}</dd>' in page.text
    assert f'<a href="/traces/{row["id"]}">trace {row["id"]}</a> (ok)' in page.text


def test_json_values_are_sent_as_json_and_bad_json_is_named(browser: Playground) -> None:
    fields = {
        "var:customer": '{"name": "Ada"}',
        "json:customer": "1",
        "var:items": '["tea", "cake"]',
        "json:items": "1",
        "var:tone": "[not json, as text]",
        "role:0": "user",
        "content:0": "Which?",
        "role:1": "assistant",
        "content:1": "",
    }
    page = browser.run("shop/assist", fields)
    assert page.status_code == 200, page.text
    [row] = browser.rows()
    system, *turns = row["request"]["messages"]
    assert system["content"].startswith("You help Ada choose among:\n- tea\n- cake\n")
    assert "Tone: [not json, as text]." in system["content"]
    assert turns == [{"role": "user", "content": "Which?"}]  # the empty turn is not sent

    bad = browser.run("shop/assist", {**fields, "var:items": "[tea, cake]"})
    assert bad.status_code == 400
    assert "Variable &#39;items&#39; is marked as JSON but is not a JSON value" in bad.text
    assert ">[tea, cake]</textarea>" in bad.text  # kept as typed, to be fixed
    assert len(browser.rows()) == 1  # nothing was called


def test_an_error_of_the_call_is_the_apis_message(browser: Playground) -> None:
    missing = browser.run("hello", {"var:personality": "calm"})
    assert missing.status_code == 400
    assert "Missing variables" in missing.text and "question" in missing.text
    unset = browser.run(
        "hello", {"var:personality": "calm", "var:question": "Hi", "model": "keyless"}
    )
    assert unset.status_code == 503, unset.text
    assert UNSET_KEY in unset.text
    [row] = browser.rows()  # the missing variable stopped the first before any call
    assert (row["status"], row["http_status"]) == ("error", 503)
    assert f'<a href="/traces/{row["id"]}">trace {row["id"]}</a> (error)' in unset.text


def test_the_model_can_be_overridden_by_a_configured_one_only(browser: Playground) -> None:
    page = browser.get("/playground/hello")
    for name in ("default", "other", "keyless"):
        assert f'<option value="{name}"' in page.text, name
    ran = browser.run("hello", {"var:personality": "calm", "var:question": "Hi", "model": "other"})
    assert ran.status_code == 200, ran.text
    assert browser.rows()[0]["model_name"] == "other"
    refused = browser.run(
        "hello", {"var:personality": "calm", "var:question": "Hi", "model": "openai/gpt-4o"}
    )
    assert refused.status_code == 400
    assert "model_override &#39;openai/gpt-4o&#39; is neither an alias" in refused.text
    assert len(browser.rows()) == 1


def test_the_api_takes_model_override_for_any_key(shop: ApiEnv) -> None:
    body = {"model": "hello", "variables": {"personality": "calm", "question": "Hi"}}
    for headers in (shop.admin, shop.run):
        done = shop.post(
            "/v1/chat/completions", json={**body, "model_override": "other"}, headers=headers
        )
        assert done.status_code == 200, done.text
    assert shop.ws.runlog.flush()
    assert [r["model_name"] for r in shop.ws.runlog.list()] == ["other", "other"]
    for wrong in ("openai/gpt-4o", "", 3, "x" * 400):
        refused = shop.post("/v1/chat/completions", json={**body, "model_override": wrong})
        assert refused.status_code == 400, wrong
        assert refused.json()["error"]["param"] == "model_override"
    streamed = shop.post(
        "/v1/chat/completions", json={**body, "model_override": "other", "stream": True}
    )
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text


def test_hostile_text_is_escaped_everywhere(browser: Playground) -> None:
    api = browser.api
    hostile = '<script>alert("x")</script>'
    api.git("commit", "-q", "--allow-empty", "-m", "unrelated")
    api.repo.joinpath("prompts/hello.md").write_text(HELLO_MD + "\n", "utf-8")
    api.git("commit", "-qam", f"Tweak {hostile}")
    api.ws.index.sync()
    page = browser.run("hello", {"var:personality": hostile, "var:question": hostile})
    assert page.status_code == 200, page.text
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
    listing = browser.get(f"/playground/hello?version={hostile}")
    assert listing.status_code == 404 and "<script>alert" not in listing.text


def test_a_version_that_cannot_be_read_says_so_and_does_not_run(browser: Playground) -> None:
    api = browser.api
    api.repo.joinpath("prompts/hello.md").write_text("---\nmodel: [unclosed\n---\nHi\n")
    api.git("commit", "-qam", "Break hello")
    api.ws.index.sync()
    page = browser.get("/playground/hello")
    assert page.status_code == 200
    assert "This version cannot be run:" in page.text and 'id="playground"' not in page.text
    assert 'id="playground"' in browser.get("/playground/hello?version=1").text
    refused = browser.run("hello", {"var:personality": "calm", "var:question": "Hi"})
    assert refused.status_code == 400 and "This version cannot be run" in refused.text
    assert browser.rows() == []


def test_a_broken_llmkit_yaml_leaves_the_page_readable(browser: Playground) -> None:
    browser.api.repo.joinpath("llmkit.yaml").write_text("models: [unclosed\n", "utf-8")
    page = browser.get("/playground/hello")
    assert page.status_code == 200, page.text
    assert "Only the prompt's own model can be picked: llmkit.yaml:2: YAML syntax" in page.text
    assert "var:question" in inputs(page.text)


def test_a_form_without_the_csrf_token_or_from_elsewhere_is_refused(browser: Playground) -> None:
    fields = {"var:personality": "calm", "var:question": "Hi", "action": "run"}
    for headers, data, said in (
        ({"Origin": ORIGIN}, fields, "Missing CSRF token"),
        ({"Origin": ORIGIN}, {**fields, "csrf_token": "0" * 64}, "Wrong CSRF token"),
        ({"Origin": "https://evil.example"}, {**fields, "csrf_token": browser.csrf}, "evil"),
    ):
        refused = browser.client.post("/playground/hello", data=data, headers={**HTML, **headers})
        assert refused.status_code == 403, refused.text
        assert said in refused.text
    assert browser.rows() == []
    program = browser.api.client.post("/playground/hello", data=fields)
    assert program.status_code == 401


# -- reading the form ------------------------------------------------------------------------


def test_read_variables_leaves_out_empty_fields_and_names_bad_json() -> None:
    fields = {"var:a": "text", "var:b": "", "var:n": "3", "json:n": "1", "var:deep": "[" * 100}
    names = ["a", "b", "n"]
    assert pv.read_variables(fields, names) == {"a": "text", "n": 3}
    with pytest.raises(BadRequest, match="Variable 'deep' .* nests more than 64 levels"):
        pv.read_variables({**fields, "json:deep": "1"}, ["deep"])


def test_read_turns_refuses_a_role_it_cannot_send() -> None:
    turns = pv.read_turns({"role:0": "user", "content:0": "a\r\nb", "role:1": "assistant"})
    assert turns == [pv.Turn("user", "a\nb"), pv.Turn("assistant", "")]
    with pytest.raises(BadRequest, match="Turn 2 has role 'system'"):
        pv.read_turns({"role:0": "user", "role:1": "system"})


def test_figures_say_what_is_not_known() -> None:
    shown = pv.figures({"id": 7, "stream": False, "latency_ms": 1234.4, "cost": None})
    assert (shown.tokens, shown.cost, shown.latency, shown.ttft, shown.log_id) == (
        "not reported",
        "not known for this model",
        "1,234 ms",
        "not streamed",
        7,
    )
    streamed = pv.figures(
        {"input_tokens": 3, "output_tokens": 5, "cost": 0.00012, "stream": True, "ttft_ms": 9}
    )
    assert (streamed.tokens, streamed.cost, streamed.ttft) == ("3 in / 5 out", "$0.00012", "9 ms")


def test_another_model_runs_with_its_own_api_base_not_the_prompts(
    make_api: MakeApi, fake_upstream: FakeUpstream
) -> None:
    dead = "http://127.0.0.1:9/v1"  # nothing listens there: a call sent to it fails
    config = (
        "models:\n"
        f"  far: {{model: openai/far-model, api_base: '{dead}', api_key_env: null}}\n"
        f"  near: {{model: openai/fake-model, api_base: '{fake_upstream.url}',"
        " api_key_env: null}\n"
    )
    prompt = f"---\nmodel: far\napi_base: {dead}\nfallbacks: [far]\n---\nSay hi.\n"
    api = make_api(files={"llmkit.yaml": config, "prompts/greet.md": prompt})
    answered = api.post(
        "/v1/chat/completions",
        json={
            "model": "greet",
            "model_override": "near",
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    assert answered.status_code == 200, answered.text
    [sent] = fake_upstream.chat_requests
    assert sent.body["model"] == "fake-model"
