"""The eval HTTP API (LLMKit's routes) against the real app in-process, and once against a real
`llmkit serve`: cases as committed files, runs per prompt version, human scores, performance."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from llmkit.evals.spec import load_eval_text
from tests.eval_fixtures import (
    CHAT_MD,
    GREET_BOTH_MD,
    GREET_MD,
    LLMKIT_YAML,
    EvalApi,
    EvalRepo,
    error_shape,
    eval_api,
)
from tests.helpers import serving

V1_TEXT = "Always say hello."
V2_TEXT = "Say goodbye at the end."

HELLO_CASE = {
    "prompt_key": "greet",
    "name": "Says Hello!",
    "vars": {"personality": "cheerful"},
    "user_vars": {"question": "Who are you?"},
    "assert": [{"type": "contains", "value": V1_TEXT}],
}
GOODBYE_CASE = {
    "prompt_key": "greet",
    "name": "says goodbye",
    "vars": {"personality": "calm"},
    "user_vars": {"question": "Bye?"},
    "assert": [{"type": "contains", "value": V2_TEXT}],
}


@pytest.fixture
def repo(tmp_path: Path) -> EvalRepo:
    """greet has two versions whose outputs differ; chat has one and no eval cases."""
    repo = EvalRepo.create(
        tmp_path / "repo",
        {
            "llmkit.yaml": LLMKIT_YAML,
            "prompts/greet.md": GREET_MD,
            "prompts/chat.md": CHAT_MD,
        },
    )
    repo.write("prompts/greet.md", GREET_BOTH_MD.replace(V1_TEXT + " ", ""))
    repo.commit("greet v2: goodbye only")
    return repo


@pytest.fixture
def api(repo: EvalRepo) -> Iterator[EvalApi]:
    with eval_api(repo.root) as env:
        yield env


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def refused(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert error_shape(body), body
    return body["error"]


def create(api: EvalApi, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = ok(api.request("POST", "/v1/ui/prompt-evals", json=body), 201)
    return created


def git_clean(api: EvalApi) -> bool:
    return EvalRepo(api.root).git("status", "--porcelain", "--untracked-files=all") == ""


# -- cases ----------------------------------------------------------------------------------


def test_create_writes_a_case_file_as_a_commit(api: EvalApi) -> None:
    before = api.commits()
    case = create(api, HELLO_CASE)
    assert case["file"] == "evals/greet/says-hello.yaml"
    assert (case["prompt_key"], case["name"]) == ("greet", "Says Hello!")
    assert case["vars"] == {"personality": "cheerful"}
    assert isinstance(case["id"], int)
    assert api.commits() == ["Add eval case 'Says Hello!' for greet", *before]
    assert git_clean(api)
    committed = EvalRepo(api.root).git("show", "HEAD:evals/greet/says-hello.yaml")
    [parsed] = load_eval_text(committed, "evals/greet/says-hello.yaml").cases
    assert parsed.name == "Says Hello!" and parsed.user_vars == {"question": "Who are you?"}
    assert EvalRepo(api.root).git("show", "--name-only", "--format=", "HEAD") == (
        "evals/greet/says-hello.yaml"
    )
    assert ok(api.request("GET", f"/v1/ui/prompt-evals/{case['id']}")) == case


def test_create_accepts_llmkit_fields(api: EvalApi) -> None:
    prompt_id = ok(api.request("GET", "/v1/ui/prompts/greet"))["id"]
    with_vars = create(
        api,
        {
            "prompt_id": prompt_id,
            "name": "llmkit style",
            "system_prompt_input": '{"personality": "calm"}',
            "user_prompt_input": '{"question": "Hi?"}',
            "evaluation_type": "human",
        },
    )
    assert with_vars["prompt_key"] == "greet"
    assert with_vars["vars"] == {"personality": "calm"}
    assert with_vars["user_vars"] == {"question": "Hi?"}
    assert with_vars["system_prompt_input"] == '{"personality": "calm"}'

    plain = create(api, {"prompt_key": "chat", "name": "plain text", "user_prompt_input": "hello"})
    assert plain["messages"] == [{"role": "user", "content": "hello"}]
    assert plain["user_prompt_input"] == "hello"
    assert yaml.safe_load((api.root / plain["file"]).read_text("utf-8"))["input"] == "hello"


def test_create_refusals(api: EvalApi) -> None:
    create(api, HELLO_CASE)
    head = api.commits()
    assert (
        "already has an eval case"
        in refused(api.request("POST", "/v1/ui/prompt-evals", json=HELLO_CASE), 409)["message"]
    )
    bad_type = {**GOODBYE_CASE, "assert": [{"type": "containz", "value": "x"}]}
    error = refused(api.request("POST", "/v1/ui/prompt-evals", json=bad_type), 400)
    assert "containz" in error["message"]
    assert (
        "nope"
        in refused(
            api.request("POST", "/v1/ui/prompt-evals", json={**GOODBYE_CASE, "prompt_key": "nope"}),
            404,
        )["message"]
    )
    no_prompt = {k: v for k, v in GOODBYE_CASE.items() if k != "prompt_key"}
    refused(api.request("POST", "/v1/ui/prompt-evals", json=no_prompt), 400)
    refused(api.request("POST", "/v1/ui/prompt-evals", json={"prompt_key": "greet"}), 400)
    refused(api.request("POST", "/v1/ui/prompt-evals", content=b"[1, 2]"), 400)
    refused(api.request("POST", "/v1/ui/prompt-evals", content=b"{not json"), 400)
    bad_key = {**GOODBYE_CASE, "prompt_key": "../x"}
    refused(api.request("POST", "/v1/ui/prompt-evals", json=bad_key), 400)
    assert api.commits() == head and git_clean(api)


def test_get_put_delete_are_commits(api: EvalApi) -> None:
    case = create(api, HELLO_CASE)
    url = f"/v1/ui/prompt-evals/{case['id']}"
    updated = ok(api.request("PUT", url, json={"vars": {"personality": "grumpy"}}))
    assert updated["vars"] == {"personality": "grumpy"}
    assert updated["user_vars"] == case["user_vars"] and updated["assert"] == case["assert"]
    assert api.commits()[0] == "Update eval case 'Says Hello!' for greet"
    assert ok(api.request("GET", url))["vars"] == {"personality": "grumpy"}
    assert "grumpy" in (api.root / case["file"]).read_text("utf-8")

    renamed = ok(api.request("PUT", url, json={"name": "Says hello politely"}))
    assert renamed["name"] == "Says hello politely" and renamed["file"] == case["file"]
    # A case alone in its file keeps its id when renamed, as LLMKit's rows do: its UI renames
    # a case and then deletes it by the id it had.
    assert renamed["id"] == case["id"]
    assert ok(api.request("GET", url))["name"] == "Says hello politely"

    deleted = ok(api.request("DELETE", url))
    assert deleted == {"id": renamed["id"], "deleted": True}
    assert api.commits()[0] == "Delete eval case 'Says hello politely' for greet"
    assert not (api.root / case["file"]).exists() and git_clean(api)
    refused(api.request("GET", url), 404)
    refused(api.request("DELETE", url), 404)
    subjects = EvalRepo(api.root).git("log", "--format=%s", "--", case["file"]).splitlines()
    assert subjects == [
        "Delete eval case 'Says hello politely' for greet",
        "Update eval case 'Says hello politely' for greet",
        "Update eval case 'Says Hello!' for greet",
        "Add eval case 'Says Hello!' for greet",
    ]


def test_put_replaces_the_user_message(api: EvalApi) -> None:
    case = create(api, {"prompt_key": "chat", "name": "asks", "input": "first"})
    url = f"/v1/ui/prompt-evals/{case['id']}"
    assert ok(api.request("PUT", url, json={"input": "second"}))["messages"] == [
        {"role": "user", "content": "second"}
    ]
    assert ok(api.request("PUT", url, json={"user_prompt_input": "third"}))["messages"] == [
        {"role": "user", "content": "third"}
    ]
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert ok(api.request("PUT", url, json={"messages": messages}))["messages"] == messages


def test_put_accepts_llmkit_variable_fields(api: EvalApi) -> None:
    case = create(api, HELLO_CASE)
    url = f"/v1/ui/prompt-evals/{case['id']}"
    updated = ok(
        api.request(
            "PUT",
            url,
            json={
                "system_prompt_input": '{"personality": "stern"}',
                "user_prompt_input": '{"question": "Why?"}',
            },
        )
    )
    assert updated["vars"] == {"personality": "stern"}
    assert updated["user_vars"] == {"question": "Why?"}


def test_put_without_a_change_makes_no_commit(api: EvalApi) -> None:
    case = create(api, HELLO_CASE)
    head = api.commits()
    url = f"/v1/ui/prompt-evals/{case['id']}"
    assert ok(api.request("PUT", url, json={"vars": case["vars"]})) == case
    assert ok(api.request("PUT", url, json={})) == case
    assert api.commits() == head and git_clean(api)


def test_put_refusals(api: EvalApi) -> None:
    hello = create(api, HELLO_CASE)
    goodbye = create(api, GOODBYE_CASE)
    head = api.commits()
    url = f"/v1/ui/prompt-evals/{hello['id']}"
    refused(api.request("PUT", url, json={"name": "says goodbye"}), 409)
    refused(api.request("PUT", url, json={"threshold": 3}), 400)
    refused(api.request("PUT", url, json={"assert": [{"type": "regex", "value": "("}]}), 400)
    refused(api.request("PUT", url, content=b"nope"), 400)
    refused(api.request("PUT", "/v1/ui/prompt-evals/12345", json={"name": "x"}), 404)
    assert api.commits() == head
    assert ok(api.request("GET", f"/v1/ui/prompt-evals/{goodbye['id']}")) == goodbye


def test_cases_in_a_shared_file_are_read_only(api: EvalApi, repo: EvalRepo) -> None:
    many = "cases:\n- name: one\n  input: a\n- name: two\n  input: b\n"
    repo.write("evals/greet/many.yaml", many)
    repo.commit("two cases in one file")
    [one, two] = ok(api.request("GET", "/v1/ui/prompts/greet/prompt-evals"))
    assert {one["name"], two["name"]} == {"one", "two"}
    edit = api.request("PUT", f"/v1/ui/prompt-evals/{one['id']}", json={"input": "z"})
    assert "evals/greet/many.yaml" in refused(edit, 409)["message"]
    refused(api.request("DELETE", f"/v1/ui/prompt-evals/{two['id']}"), 409)


def test_list_cases_of_a_prompt(api: EvalApi) -> None:
    hello, goodbye = create(api, HELLO_CASE), create(api, GOODBYE_CASE)
    prompt_id = ok(api.request("GET", "/v1/ui/prompts/greet"))["id"]
    by_key = ok(api.request("GET", "/v1/ui/prompts/greet/prompt-evals"))
    assert sorted(c["id"] for c in by_key) == sorted([hello["id"], goodbye["id"]])
    assert ok(api.request("GET", f"/v1/ui/prompts/{prompt_id}/prompt-evals")) == by_key
    assert ok(api.request("GET", "/v1/ui/prompts/chat/prompt-evals")) == []
    refused(api.request("GET", "/v1/ui/prompts/nope/prompt-evals"), 404)
    refused(api.request("GET", "/v1/ui/prompts/99999/prompt-evals"), 404)


def test_llmkits_ui_writes_a_case_as_input_data_and_reads_it_back(api: EvalApi) -> None:
    prompt_id = ok(api.request("GET", "/v1/ui/prompts/greet"))["id"]
    # As LLMKit's UI sends it: the prompt's id, the template variables as an object.
    body = {"prompt_id": prompt_id, "name": "grumpy", "input_data": {"personality": "grumpy"}}
    case = create(api, body)
    assert case["vars"] == {"personality": "grumpy"}
    assert json.loads(case["input_data"]) == {"personality": "grumpy"}
    assert case["prompt_id"] == prompt_id
    assert case["created_at"] == case["updated_at"]
    assert datetime.fromisoformat(case["created_at"])
    url = f"/v1/ui/prompt-evals/{case['id']}"
    # A string holding the object (as LLMKit stores it) does as well; it replaces the variables.
    changed = ok(api.request("PUT", url, json={**body, "input_data": '{"personality": "sunny"}'}))
    assert changed["id"] == case["id"]
    assert changed["vars"] == {"personality": "sunny"} and changed["user_vars"] == {}
    assert changed["updated_at"] >= case["created_at"] == changed["created_at"]
    listed = ok(api.request("GET", f"/v1/ui/prompts/{prompt_id}/prompt-evals"))
    assert listed == [changed]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"name": "x", "input_data": [1, 2]}, "input_data", "input_data"),
        ({"name": "x", "input_data": "[1, 2]"}, None, "'input_data' must be a JSON object"),
        ({"name": "x", "input_data": "not json"}, None, "'input_data' must be a JSON object"),
        ({"name": "x", "repeat": "3"}, "repeat", "repeat"),
        ({"name": "x", "vars": ["a"]}, "vars", "vars"),
        ({"name": "x", "inputs": {}}, "inputs", "Unknown request field(s): inputs"),
        ({"name": 7}, "name", "name"),
    ],
)
def test_a_bad_case_body_is_a_400_naming_the_field(
    api: EvalApi, body: dict[str, Any], param: str | None, words: str
) -> None:
    error = refused(
        api.request("POST", "/v1/ui/prompt-evals", json={"prompt_key": "greet", **body}), 400
    )
    assert words in error["message"]
    if param is not None:
        assert error["param"] == param
    assert ok(api.request("GET", "/v1/ui/prompts/greet/prompt-evals")) == []


def test_results_name_their_case_as_llmkit_does(api: EvalApi) -> None:
    hello = create(api, HELLO_CASE)
    goodbye = create(api, GOODBYE_CASE)
    runs = ok(api.request("POST", run_url(api, "greet", 1)))["runs"]
    ids = {r["prompt_eval_name"]: r["prompt_eval_id"] for r in runs}
    assert ids == {hello["name"]: hello["id"], goodbye["name"]: goodbye["id"]}
    assert all(r["updated_at"] == r["created_at"] for r in runs)
    # A renamed case keeps its id, and so do the results recorded before the rename.
    ok(api.request("PUT", f"/v1/ui/prompt-evals/{hello['id']}", json={"name": "Hi"}))
    listed = ok(api.request("GET", run_url(api, "greet", 1)))
    assert {r["prompt_eval_id"] for r in listed} == {hello["id"], goodbye["id"]}
    result = listed[0]
    scored = ok(
        api.request(
            "PUT", f"/v1/ui/prompt-eval-runs/{result['id']}", json={"id": result["id"], "score": 5}
        )
    )
    assert scored["score"] == 5 and scored["updated_at"] >= scored["created_at"]
    assert scored["prompt_eval_id"] == result["prompt_eval_id"]


# -- runs, scores, performance --------------------------------------------------------------


def run_path(key: str, version: int | str) -> str:
    return f"/v1/ui/prompt-eval-runs/{key}/version/{version}"


def run_url(api: EvalApi, key: str, number: int) -> str:
    """The runs of version `number` of `key`, named by its integer id as LLMKit's UI names it."""
    found = ok(api.request("GET", f"/v1/ui/prompts/{key}/versions/{number}"))
    return run_path(key, found["version_id"])


def test_run_every_case_against_that_version(api: EvalApi, repo: EvalRepo) -> None:
    create(api, HELLO_CASE)
    create(api, GOODBYE_CASE)
    v1_sha = repo.git("log", "--format=%H", "--", "prompts/greet.md").splitlines()[-1]

    first = ok(api.request("POST", run_url(api, "greet", 1) + "?rounds=2"))
    assert (first["version_number"], first["sha"]) == (1, v1_sha)
    assert all(r["prompt_version_id"] == first["version_id"] for r in first["runs"])
    assert (first["total"], first["passed"]) == (4, 2)
    runs = first["runs"]
    assert sorted((r["case_name"], r["repeat_index"]) for r in runs) == [
        ("Says Hello!", 0),
        ("Says Hello!", 1),
        ("says goodbye", 0),
        ("says goodbye", 1),
    ]
    assert {r["run_id"] for r in runs} == {first["run_id"]}
    assert all(V1_TEXT in r["output"] and V2_TEXT not in r["output"] for r in runs)
    assert all(r["version_number"] == 1 and r["version_sha"] == v1_sha for r in runs)
    assert all(r["passed"] == (r["case_name"] == "Says Hello!") for r in runs)
    assert all(isinstance(r["id"], int) and r["score"] is None for r in runs)

    second = ok(api.request("POST", run_url(api, "greet", 2)))
    assert second["run_id"] != first["run_id"] and second["version_number"] == 2
    assert second["total"] == 2 and second["passed"] == 1
    assert all(V2_TEXT in r["output"] and V1_TEXT not in r["output"] for r in second["runs"])
    by_sha = ok(api.request("POST", run_path("greet", v1_sha)))
    assert by_sha["version_number"] == 1

    listed = ok(api.request("GET", run_url(api, "greet", 1)))
    assert {r["id"] for r in listed} >= {r["id"] for r in runs}
    assert all(r["version_number"] == 1 for r in listed) and len(listed) == 6
    assert {r["id"] for r in ok(api.request("GET", run_url(api, "greet", 2)))} == {
        r["id"] for r in second["runs"]
    }


def test_run_refusals_and_empty_sets(api: EvalApi) -> None:
    create(api, HELLO_CASE)
    refused(api.request("POST", run_path("greet", 999999)), 404)
    refused(api.request("POST", run_path("nope", 1)), 404)
    refused(api.request("POST", run_url(api, "chat", 1)), 404)  # a prompt without cases
    for rounds in ("0", "21", "x", "1.5"):
        refused(api.request("POST", run_url(api, "greet", 1) + f"?rounds={rounds}"), 400)
    assert ok(api.request("GET", run_url(api, "greet", 1))) == []
    assert ok(api.request("GET", run_url(api, "chat", 1))) == []
    refused(api.request("GET", run_path("greet", 999999)), 404)
    refused(api.request("GET", run_path("nope", 1)), 404)


def test_a_run_names_its_version_by_integer_id_as_llmkits_ui_does(
    api: EvalApi, repo: EvalRepo
) -> None:
    create(api, HELLO_CASE)
    v1 = ok(api.request("GET", "/v1/ui/prompts/greet/versions/1"))
    chat_v1 = ok(api.request("GET", "/v1/ui/prompts/chat/versions/1"))
    assert v1["version_id"] != 1 or chat_v1["version_id"] != 1
    # Digits are an id, never a version number; another prompt's id is not found.
    ran = ok(api.request("POST", run_path("greet", v1["version_id"])))
    assert (ran["version_number"], ran["version_id"]) == (1, v1["version_id"])
    error = refused(api.request("POST", run_path("greet", chat_v1["version_id"])), 404)
    assert error["param"] == "version_id"
    # The served version, a draft included (it has no id yet): `served`, or `null` as LLMKit's
    # UI sends a draft's null version_id.
    repo.write("prompts/greet.md", GREET_BOTH_MD + "\nA draft line.\n")
    api.app.state.ws.index.sync()  # as the watcher would
    for served in ("served", "null"):
        draft = ok(api.request("POST", run_path("greet", served)))
        assert draft["draft"] is True and draft["version_id"] is None
        assert all(r["prompt_version_id"] is None for r in draft["runs"])


def test_scores(api: EvalApi) -> None:
    create(api, HELLO_CASE)
    [result] = ok(api.request("POST", run_url(api, "greet", 1)))["runs"]
    url = f"/v1/ui/prompt-eval-runs/{result['id']}"
    assert ok(api.request("GET", url))["score"] is None
    scored = ok(api.request("PUT", url, json={"score": 4}))
    assert scored["score"] == 4 and scored["id"] == result["id"]
    assert ok(api.request("GET", url))["score"] == 4
    assert ok(api.request("PUT", url, json={"score": 1}))["score"] == 1
    for bad in (0, 6, 3.5, "x", "3", None, True, [4]):
        error = refused(api.request("PUT", url, json={"score": bad}), 400)
        assert error["param"] == "score"
    refused(api.request("PUT", url, json={}), 400)
    refused(api.request("PUT", url, content=b"{"), 400)
    assert ok(api.request("GET", url))["score"] == 1


def test_bad_result_and_case_ids(api: EvalApi) -> None:
    for url in ("/v1/ui/prompt-eval-runs/424242", "/v1/ui/prompt-evals/424242"):
        refused(api.request("GET", url), 404)
    refused(api.request("PUT", "/v1/ui/prompt-eval-runs/424242", json={"score": 3}), 404)
    huge = "9" * 30
    for method, url in (
        ("GET", f"/v1/ui/prompt-eval-runs/{huge}"),
        ("PUT", f"/v1/ui/prompt-eval-runs/{huge}"),
        ("GET", f"/v1/ui/prompt-evals/{huge}"),
        ("PUT", f"/v1/ui/prompt-evals/{huge}"),
        ("DELETE", f"/v1/ui/prompt-evals/{huge}"),
        ("GET", "/v1/ui/prompt-eval-runs/-1"),
    ):
        # A body each route takes: a bad one is refused (400) before the id is looked up.
        body = {"score": 3} if "eval-runs" in url else {"name": "x"}
        response = api.request(method, url, json=body)
        assert response.status_code == 404, (method, url, response.text)
        assert error_shape(response.json())
    for method, url in (
        ("GET", "/v1/ui/prompt-eval-runs/abc"),
        ("PUT", "/v1/ui/prompt-eval-runs/1.5"),
        ("GET", "/v1/ui/prompt-evals/abc"),
        ("PUT", "/v1/ui/prompt-evals/x"),
        ("DELETE", "/v1/ui/prompt-evals/1e3"),
    ):
        response = api.request(method, url, json={"score": 3})
        assert 400 <= response.status_code < 500, (method, url, response.text)
        assert error_shape(response.json()), response.text


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", f"/v1/ui/prompts/{'9' * 30}/performance"),
        ("GET", f"/v1/ui/prompts/{'9' * 30}/prompt-evals"),
        ("POST", f"/v1/ui/prompt-eval-runs/{'9' * 30}/version/1"),
        ("POST", f"/v1/ui/prompt-eval-runs/greet/version/{'9' * 30}"),
        ("GET", f"/v1/ui/prompt-eval-runs/greet/version/{'9' * 30}"),
    ],
)
def test_huge_prompt_ids_and_version_numbers_are_unknown(
    api: EvalApi, method: str, url: str
) -> None:
    create(api, HELLO_CASE)
    refused(api.request(method, url), 404)


def test_performance_per_version(api: EvalApi) -> None:
    create(api, HELLO_CASE)
    create(api, GOODBYE_CASE)
    before = ok(api.request("GET", "/v1/ui/prompts/greet/performance"))
    greet_versions = api.app.state.ws.index.versions("greet")
    assert [(v["version_number"], v["version_id"], v["run_count"]) for v in before] == [
        (1, greet_versions[0].id, 0),
        (2, greet_versions[1].id, 0),
    ]
    assert all(v["avg_score"] is None and v["version_date"].endswith("Z") for v in before)
    v1 = ok(api.request("POST", run_url(api, "greet", 1) + "?rounds=2"))
    ok(api.request("POST", run_url(api, "greet", 1)))
    ok(api.request("POST", run_url(api, "greet", 2)))
    scores = [5, 2]
    for result, score in zip(v1["runs"], scores):
        ok(api.request("PUT", f"/v1/ui/prompt-eval-runs/{result['id']}", json={"score": score}))

    performance = ok(api.request("GET", "/v1/ui/prompts/greet/performance"))
    assert [v["version_number"] for v in performance] == [1, 2]  # LLMKit's array, oldest first
    versions = {v["version_number"]: v for v in performance}
    assert versions[2]["version_id"] == greet_versions[1].id
    assert versions[2]["sha"] == greet_versions[1].sha
    assert versions[1]["run_count"] == 2 and versions[1]["result_count"] == 6
    assert versions[1]["pass_rate"] == pytest.approx(0.5)
    assert versions[1]["avg_score"] == pytest.approx(3.5) and versions[1]["scored_count"] == 2
    assert versions[2]["run_count"] == 1 and versions[2]["pass_rate"] == pytest.approx(0.5)
    assert versions[2]["avg_score"] is None and versions[2]["scored_count"] == 0
    prompt_id = ok(api.request("GET", "/v1/ui/prompts/greet"))["id"]
    assert ok(api.request("GET", f"/v1/ui/prompts/{prompt_id}/performance")) == performance

    chat = ok(api.request("GET", "/v1/ui/prompts/chat/performance"))
    assert [v["run_count"] for v in chat] == [0] * len(chat) and chat
    refused(api.request("GET", "/v1/ui/prompts/nope/performance"), 404)


def test_eval_routes_need_an_admin_key(api: EvalApi) -> None:
    _, run_key = api.app.state.ws.keys.create("runner", "run")
    for method, url in (
        ("GET", "/v1/ui/prompts/greet/prompt-evals"),
        ("POST", "/v1/ui/prompt-evals"),
        ("POST", run_url(api, "greet", 1)),
        ("GET", "/v1/ui/prompts/greet/performance"),
    ):
        refused(api.request(method, url, headers={}), 401)
        refused(api.request(method, url, headers={"Authorization": f"Bearer {run_key}"}), 403)


def test_records_survive_an_index_rebuild(api: EvalApi) -> None:
    create(api, HELLO_CASE)
    [result] = ok(api.request("POST", run_url(api, "greet", 1)))["runs"]
    ok(api.request("PUT", f"/v1/ui/prompt-eval-runs/{result['id']}", json={"score": 5}))
    before = ok(api.request("GET", "/v1/ui/prompts/greet/performance"))
    api.app.state.ws.index.rebuild()
    assert ok(api.request("GET", f"/v1/ui/prompt-eval-runs/{result['id']}"))["score"] == 5
    assert ok(api.request("GET", "/v1/ui/prompts/greet/performance")) == before


def test_against_a_real_server(repo: EvalRepo, tmp_path: Path) -> None:
    with serving(repo.root, tmp_path) as server:
        headers = {"Authorization": f"Bearer {server.admin_key}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            created = client.post("/v1/ui/prompt-evals", json=HELLO_CASE)
            assert created.status_code == 201, created.text
            assert repo.git("log", "-1", "--format=%s") == "Add eval case 'Says Hello!' for greet"
            v1 = client.get("/v1/ui/prompts/greet/versions/1").json()["version_id"]
            run = client.post(run_path("greet", v1) + "?rounds=2")
            assert run.status_code == 200, run.text
            body = run.json()
            assert body["total"] == 2 and body["passed"] == 2
            assert {r["run_id"] for r in body["runs"]} == {body["run_id"]}
            result_id = body["runs"][0]["id"]
            scored = client.put(f"/v1/ui/prompt-eval-runs/{result_id}", json={"score": 3})
            assert scored.status_code == 200 and scored.json()["score"] == 3
            bad = client.put(f"/v1/ui/prompt-eval-runs/{result_id}", json={"score": 6})
            assert bad.status_code == 400 and error_shape(bad.json())
            performance = client.get("/v1/ui/prompts/greet/performance").json()
            [version] = [v for v in performance if v["version_number"] == 1]
            figures = (version["version_number"], version["avg_score"], version["run_count"])
            assert figures == (1, 3, 1)
    rows = repo.query("SELECT case_name, human_score FROM eval_results")
    assert sorted(r["human_score"] or 0 for r in rows) == [0, 3]
