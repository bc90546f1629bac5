"""Budgets over HTTP: hostile templates, YAML bombs, huge, deep and odd input. Each is an error
naming what was wrong (never a 500), changes nothing in git, and never stalls the server."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_fixtures import ApiEnv, MakeApi, repo_state
from tests.exec_fixtures import server_env
from tests.helpers import init_repo, start_server

ECHO_YAML = "models:\n  default:\n    model: echo\n"


def prompt(body: str) -> str:
    return f"---\nmodel: default\n---\n<!-- role:system -->\n{body}\n"


# An alias bomb: each line expands the one before tenfold, so a few hundred bytes of
# frontmatter would serialize to hundreds of megabytes.
ALIAS_BOMB = """\
---
model: default
description: Fine so far.
json_schema:
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
---
<!-- role:system -->
Hi.
"""

FILES = {
    "llmkit.yaml": ECHO_YAML + "limits:\n  render_cpu_ms: 300\n",
    "prompts/greet.md": prompt("Hello {{ name }}."),
    "prompts/wide.md": prompt("{{ '-' * width }}"),
    "prompts/padded.md": prompt("{{ '%*d' | format(width, 1) }}"),
    "prompts/ranges.md": prompt(
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    ),
    "prompts/pairs.md": prompt(
        "Pairs:\n{% for a in xs %}{% for b in xs %}{% endfor %}{% endfor %}"
    ),
    "prompts/recursive.md": prompt(
        "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(40) }}"
    ),
    "prompts/deep.md": prompt("First.\n{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}"),
    "prompts/bomb.md": ALIAS_BOMB,
    "prompts/huge.md": prompt("x" * 1_000_000),
    "evals/greet/bomb.yaml": (
        "name: bomb\nvars:\n  a: &a [x,x,x,x,x,x,x,x,x,x]\n"
        "  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
        "  c: [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    ),
    "evals/greet/fine.yaml": "name: fine\nvars:\n  name: Ada\n",
}


@pytest.fixture
def api(make_api: MakeApi) -> ApiEnv:
    return make_api(FILES)


def complete(api: ApiEnv, body: dict[str, Any]) -> httpx.Response:
    return api.post("/v1/chat/completions", json=body, headers=api.run)


def refused(response: httpx.Response, status: int, param: str | None = None) -> str:
    """The error message, checking the status, the shape and (when given) the param."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error
    return str(error["message"])


def send_raw(api: ApiEnv, method: str, url: str, body: object) -> httpx.Response:
    """JSON as Python writes it: lone surrogates travel as \\ud800 escapes, as any client may."""
    headers = {**api.admin, "content-type": "application/json"}
    return api.request(method, url, content=json.dumps(body), headers=headers)


# -- hostile templates ----------------------------------------------------------------------


def test_a_callers_width_that_would_build_300_mb_is_a_422_naming_the_prompt(api: ApiEnv) -> None:
    message = refused(
        complete(api, {"model": "wide", "variables": {"width": 300_000_000}}),
        422,
        "limits.render_output_chars",
    )
    assert message.startswith("prompts/wide.md:5: the template exceeded its render budget")
    message = refused(
        complete(api, {"model": "padded", "variables": {"width": 10**9}}),
        422,
        "limits.render_output_chars",
    )
    assert message.startswith("prompts/padded.md:5: ")
    # 3e8 in JSON is a float, which Python will not multiply a string by: a template error.
    assert "prompts/wide.md:5: Template error: TypeError" in refused(
        complete(api, {"model": "wide", "variables": {"width": 3e8}}), 400
    )
    assert complete(api, {"model": "wide", "variables": {"width": 3}}).status_code == 200
    api.ws.runlog.flush()
    # Refused before any call: nothing of it reaches the run log.
    assert api.ws.runlog.count(prompt="wide") == 1
    assert api.ws.runlog.count(prompt="padded") == 0


@pytest.mark.parametrize(
    ("model", "variables", "budget", "line"),
    [
        ("ranges", {}, "limits.render_range", 5),
        ("pairs", {"xs": list(range(10_000))}, "limits.render_cpu_ms", 6),
        ("recursive", {}, "limits.render_cpu_ms", 5),
    ],
)
def test_loops_and_recursion_stop_at_their_budget(
    api: ApiEnv, model: str, variables: dict[str, Any], budget: str, line: int
) -> None:
    response = complete(api, {"model": model, "variables": variables})
    assert refused(response, 422, budget).startswith(f"prompts/{model}.md:{line}: ")
    assert response.json()["error"]["code"] == "render_budget_exceeded"
    # The server goes on as before.
    assert complete(api, {"model": "greet", "variables": {"name": "Ada"}}).status_code == 200


def test_a_template_too_deep_to_compile_is_a_400_naming_the_prompt_and_line(api: ApiEnv) -> None:
    message = refused(complete(api, {"model": "deep"}), 400)
    assert message.startswith("prompts/deep.md:6: Template syntax error: the template nests too")
    before = repo_state(api.repo)
    for body in (
        {"key": "deeper", "system": "Intro.\n\n{{ " + "[" * 3000 + "]" * 3000 + " }}"},
        {"key": "deeper", "content": prompt("{% if x %}" * 3000 + "{% endif %}" * 3000)},
    ):
        message = refused(api.post("/v1/ui/prompts", json=body), 400, "template")
        assert message.startswith("prompts/deeper.md:")
        assert "nests too deeply" in message
    assert refused(
        api.put("/v1/ui/prompts/greet", json={"system": "{{ " + "(" * 3000 + ")" * 3000 + " }}"}),
        400,
    )
    assert repo_state(api.repo) == before


def prepare_threads() -> int:
    return sum(t.name.startswith("llmkit-prepare") for t in threading.enumerate())


def test_only_templates_that_can_loop_or_call_render_on_prepare_threads(api: ApiEnv) -> None:
    before = prepare_threads()
    for _ in range(3):
        response = complete(api, {"model": "greet", "variables": {"name": "Ada"}})
        assert response.status_code == 200, response.text
    assert prepare_threads() == before  # inline: no thread hop for plain substitution
    response = complete(api, {"model": "wide", "variables": {"width": 3}})
    assert response.status_code == 200, response.text
    assert prepare_threads() > before


# -- YAML bombs and huge files --------------------------------------------------------------


def test_an_alias_bomb_in_frontmatter_is_an_error_and_listings_stay_small(api: ApiEnv) -> None:
    listing = api.get("/v1/ui/prompts")
    assert listing.status_code == 200
    assert len(listing.content) < 50_000, len(listing.content)
    errors = {p["key"]: p["error"] for p in listing.json()}
    assert errors["bomb"].startswith(
        "prompts/bomb.md:5: Frontmatter: YAML anchor &a is not allowed"
    )
    assert errors["greet"] is None
    assert len(api.get("/v1/ui/prompts/bomb").content) < 5_000
    assert refused(complete(api, {"model": "bomb"}), 400).startswith("prompts/bomb.md:5: ")
    models = api.get("/v1/ui/models")
    assert models.status_code == 200 and len(models.content) < 50_000


def test_an_alias_bomb_written_through_the_api_is_refused_and_changes_nothing(api: ApiEnv) -> None:
    before = repo_state(api.repo)
    message = refused(
        api.post("/v1/ui/prompts", json={"key": "bomb2", "content": ALIAS_BOMB}), 400, "content"
    )
    assert message.startswith("prompts/bomb2.md:5: Frontmatter: YAML anchor &a")
    deep = {
        "key": "deep2",
        "content": "---\nmodel: default\ntags: " + "[" * 10_000 + "]" * 10_000 + "\n---\nhi\n",
    }
    assert "YAML nests deeper than 64 levels" in refused(api.post("/v1/ui/prompts", json=deep), 400)
    assert repo_state(api.repo) == before


def test_an_alias_bomb_in_an_eval_file_hides_that_file_only(api: ApiEnv) -> None:
    cases = api.get("/v1/ui/prompts/greet/prompt-evals")
    assert cases.status_code == 200
    assert [c["name"] for c in cases.json()] == ["fine"]
    assert len(cases.content) < 5_000


def test_a_prompt_file_over_the_size_limit_is_an_error_not_a_huge_listing(api: ApiEnv) -> None:
    listing = api.get("/v1/ui/prompts")
    assert len(listing.content) < 50_000, len(listing.content)
    [huge] = [p for p in listing.json() if p["key"] == "huge"]
    assert "over the limit of 262,144 for a prompt file" in huge["error"]
    assert "system" not in huge
    assert refused(complete(api, {"model": "huge"}), 400).startswith(
        "prompts/huge.md:1: file is 1,000,"
    )
    before = repo_state(api.repo)
    message = refused(
        api.post("/v1/ui/prompts", json={"key": "big", "system": "y" * 300_000}), 413, "content"
    )
    assert message.startswith("prompts/big.md would be 300,0")
    refused(api.put("/v1/ui/prompts/greet", json={"system": "y" * 300_000}), 413)
    assert repo_state(api.repo) == before


# -- input that used to be a 500 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("page=9223372036854775807", "page"),
        ("page=0", "page"),
        ("page=x", "page"),
        ("page_size=99999999999999999999", "page_size"),
        ("page_size=-1", "page_size"),
    ],
)
def test_out_of_range_log_parameters_are_400s_naming_them(
    api: ApiEnv, query: str, param: str
) -> None:
    refused(api.get(f"/v1/ui/logs?{query}"), 400, param)


def test_a_version_filter_of_too_many_digits_is_a_sha_prefix_not_an_overflow(api: ApiEnv) -> None:
    assert complete(api, {"model": "greet", "variables": {"name": "Ada"}}).status_code == 200
    api.ws.runlog.flush()
    assert api.get("/v1/ui/logs?version=99999999999999999999").json() == []
    assert api.get("/v1/ui/logs/count?version=99999999999999999999").json() == {"count": 0}
    assert len(api.get("/v1/ui/logs?version=1").json()) == 1
    refused(api.get("/v1/ui/logs?version=" + "9" * 5000), 400, "version")
    refused(api.delete(f"/v1/ui/settings/api-keys/{'9' * 30}"), 400, "key_id")


@pytest.mark.parametrize("depth", [100_000, 65])
@pytest.mark.parametrize(
    "url", ["/v1/chat/completions", "/v1/ui/prompts", "/v1/ui/prompt-evals", "/v1/ui/prompts/greet"]
)
def test_deeply_nested_json_bodies_are_400s_before_parsing(
    api: ApiEnv, url: str, depth: int
) -> None:
    body = '{"model": "greet", "variables": {"name": ' + "[" * depth + "]" * depth + "}}"
    method = "PUT" if url.endswith("greet") else "POST"
    response = api.request(
        method, url, content=body, headers={**api.admin, "content-type": "application/json"}
    )
    assert "nests more than 64 levels" in refused(response, 400)


def test_wide_bodies_and_64_levels_of_nesting_are_still_fine(api: ApiEnv) -> None:
    history = [{"role": "user", "content": f"turn {i} [{{}}]"} for i in range(2000)]
    response = complete(api, {"model": "greet", "variables": {"name": "Ada"}, "messages": history})
    assert response.status_code == 200, response.text
    nested: Any = "Ada"
    for _ in range(62):
        nested = [nested]
    ok = complete(api, {"model": "greet", "variables": {"name": nested}})
    assert ok.status_code == 200, ok.text


def test_variables_nested_too_deeply_inside_a_message_are_a_400(api: ApiEnv) -> None:
    content = '{"name": ' + "[" * 5000 + "]" * 5000 + "}"
    response = complete(
        api, {"model": "greet", "messages": [{"role": "system", "content": content}]}
    )
    assert "nested more than 64 levels deep" in refused(response, 400, "messages")


# -- text a prompt file cannot hold ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"key": "odd", "system": "x\ud800"}, "lone surrogate (U+D800)"),
        ({"key": "odd", "system": "x\u0000y"}, "NUL character (U+0000)"),
        (
            {"key": "odd", "messages": [{"role": "user", "content": "ok\n\udfff"}]},
            "lone surrogate (U+DFFF)",
        ),
        ({"key": "odd", "content": "---\nmodel: default\n---\nline\nx\u0000\n"}, "NUL character"),
        (
            {"key": "odd", "content": "---\nmodel: default\n---\nx\ud83d\n"},
            "lone surrogate (U+D83D)",
        ),
        (
            {"key": "odd", "system": "x", "description": "d\ud800"},
            "'description' holds a lone surrogate",
        ),
        (
            {"key": "odd", "system": "x", "frontmatter": {"tags": ["\udc00"]}},
            "'tags' holds a lone surrogate",
        ),
    ],
)
def test_nul_and_lone_surrogates_are_400s_that_change_nothing(
    api: ApiEnv, body: dict[str, Any], needle: str
) -> None:
    before = repo_state(api.repo)
    assert needle in refused(send_raw(api, "POST", "/v1/ui/prompts", body), 400)
    update = {k: v for k, v in body.items() if k != "key"}
    assert needle in refused(send_raw(api, "PUT", "/v1/ui/prompts/greet", update), 400)
    assert repo_state(api.repo) == before


def test_lone_surrogates_in_an_eval_case_are_a_400_that_changes_nothing(api: ApiEnv) -> None:
    before = repo_state(api.repo)
    for body in (
        {"prompt_key": "greet", "name": "e\ud800"},
        {"prompt_key": "greet", "name": "ok", "vars": {"name": "x\ud800"}},
    ):
        assert "holds a lone surrogate" in refused(
            send_raw(api, "POST", "/v1/ui/prompt-evals", body), 400
        )
    assert repo_state(api.repo) == before


# -- portable keys --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["CON", "aux", "com1", "LPT9.v2", "team/nul", "dir./x", "x."])
def test_unportable_keys_are_refused(api: ApiEnv, key: str) -> None:
    before = repo_state(api.repo)
    response = api.post("/v1/ui/prompts", json={"key": key, "system": "hi"})
    refused(response, 400, "key")
    assert response.json()["error"]["code"] == "invalid_key"
    assert repo_state(api.repo) == before


def test_a_key_differing_only_in_case_from_an_existing_one_is_a_409(api: ApiEnv) -> None:
    assert api.post("/v1/ui/prompts", json={"key": "team/a", "system": "hi"}).status_code == 201
    before = repo_state(api.repo)
    for key, other in (
        ("Greet", "greet"),
        ("GREET", "greet"),
        ("Team/b", "team/a"),
        ("team/A", "team/a"),
    ):
        response = api.post("/v1/ui/prompts", json={"key": key, "system": "hi"})
        assert f"differs only in case from the existing prompt {other!r}" in refused(
            response, 409, "key"
        )
        assert response.json()["error"]["code"] == "case_conflict"
    assert repo_state(api.repo) == before
    assert api.post("/v1/ui/prompts", json={"key": "team/b", "system": "hi"}).status_code == 201


def test_creates_differing_only_in_case_race_and_exactly_one_wins(api: ApiEnv) -> None:
    """Two workspaces (as two servers would) create `RaceN` and `raceN` at once: the check
    runs under the store's lock, so one create wins and the other is a 409, every round."""
    from llmkit.authoring import save_prompt
    from llmkit.errors import Conflict
    from llmkit.promptfile import parse
    from llmkit.workspace import Workspace

    spaces = [Workspace.open(str(api.repo)), Workspace.open(str(api.repo))]
    try:
        for round_ in range(6):
            keys = [f"Race{round_}", f"race{round_}"]
            outcomes: list[str] = []
            start = threading.Barrier(2)

            def create(
                ws: Workspace,
                key: str,
                start: threading.Barrier = start,
                outcomes: list[str] = outcomes,
            ) -> None:
                start.wait(timeout=10)
                try:
                    save_prompt(ws, key, parse("hi\n"), create=True)
                    outcomes.append("created")
                except Conflict as exc:
                    outcomes.append(exc.code or "conflict")

            threads = [
                threading.Thread(target=create, args=(ws, key)) for ws, key in zip(spaces, keys)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert sorted(outcomes) == ["case_conflict", "created"], outcomes
            on_disk = sorted(p.stem for p in (api.repo / "prompts").glob(f"[Rr]ace{round_}.md"))
            assert len(on_disk) == 1, on_disk
    finally:
        for ws in spaces:
            ws.close()


# -- a real server, while a render burns its budget -----------------------------------------


def test_health_and_other_completions_are_served_while_a_render_burns_its_budget(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    init_repo(
        repo,
        {
            "llmkit.yaml": ECHO_YAML + "limits:\n  render_cpu_ms: 2000\n",
            "prompts/greet.md": prompt("Hello {{ name }}."),
            "prompts/pairs.md": prompt(
                "{% for a in xs %}{% for b in xs %}{% endfor %}{% endfor %}"
            ),
        },
    )
    server = start_server(repo, tmp_path, server_env())
    try:
        headers = server.headers()
        hostile: dict[str, httpx.Response] = {}
        started = threading.Event()

        def burn() -> None:
            body = {"model": "pairs", "variables": {"xs": list(range(20_000))}}
            started.set()
            hostile["response"] = httpx.post(
                f"{server.v1}/chat/completions", json=body, headers=headers, timeout=120
            )

        burner = threading.Thread(target=burn)
        burner.start()
        started.wait(10)
        # Let the request reach the server and its render start; bounded, and not asserted on.
        burner.join(0.5)
        health = httpx.get(f"{server.url}/healthz", timeout=30)
        answer = httpx.post(
            f"{server.v1}/chat/completions",
            json={"model": "greet", "variables": {"name": "Ada"}},
            headers=headers,
            timeout=30,
        )
        still_rendering = burner.is_alive()
        burner.join(120)
        assert not burner.is_alive()
        assert health.status_code == 200
        assert answer.status_code == 200, answer.text
        assert "Hello Ada." in json.dumps(answer.json())
        # Both were answered while the hostile render was still under way.
        assert still_rendering
        response = hostile["response"]
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == "limits.render_cpu_ms"
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
    finally:
        server.terminate()
