"""Prompt routes over a real git repository: every write is one commit, reads follow git."""

from __future__ import annotations

import re
from typing import Any

import pytest

from llmkit.promptfile import parse, serialize
from tests.api_fixtures import (
    HELLO_MD,
    TRIAGE_MD,
    ApiEnv,
    MakeApi,
    app_routes,
    repo_state,
    running_api,
)
from tests.helpers import git, git_bytes

LLMKIT_FIELDS = {
    "id",
    "key",
    "system",
    "user",
    "model",
    "max_tokens",
    "temperature",
    "json_mode",
    "prompt_type",
    "is_chat",
    "version_id",
    "version_number",
    "system_version_diff",
    "user_version_diff",
    "updated_at",
    "sha",
    "path",
    "draft",
}

STRUCTURED = {
    "key": "team/writer",
    "system": "You write {{ style }} prose.",
    "user": "Topic: {{ topic }}",
    "model": "openai/gpt-4o-mini",
    "temperature": 0.3,
    "max_tokens": 400,
    "json_mode": False,
    "is_chat": True,
    "description": "Writes things.",
}

# The same prompt as STRUCTURED, written the way a person might: keys out of canonical order,
# CRLF line ends, extra blank lines around sections.
RAW_MARKDOWN = (
    "---\r\nmax_tokens: 400\r\nchat: true\r\ntemperature: 0.3\r\njson_mode: false\r\n"
    "description: Writes things.\r\nmodel: openai/gpt-4o-mini\r\n---\r\n\r\n"
    "<!-- role:system -->\r\n\r\nYou write {{ style }} prose.\r\n\r\n\r\n"
    "<!--role:user-->\r\nTopic: {{ topic }}\r\n\r\n"
)


def file_history(api: ApiEnv, path: str) -> list[str]:
    """Shas of the commits that touched `path`, oldest first."""
    return git(api.repo, "log", "--reverse", "--format=%H", "--", path).split()


def test_list_uses_llmkit_field_names_and_git_versions(api: ApiEnv) -> None:
    response = api.get("/v1/ui/prompts")
    assert response.status_code == 200
    by_key = {p["key"]: p for p in response.json()}
    assert set(by_key) == {"hello", "support/triage"}
    seed = api.head()
    for key, text in (("hello", HELLO_MD), ("support/triage", TRIAGE_MD)):
        prompt = by_key[key]
        assert LLMKIT_FIELDS - {"system_version_diff", "user_version_diff"} <= set(prompt)
        assert isinstance(prompt["id"], int)
        assert prompt["path"] == f"prompts/{key}.md"
        assert prompt["sha"] == seed
        assert prompt["version_id"] == api.ws.index.version(key).id
        assert isinstance(prompt["version_id"], int)
        assert prompt["version_number"] == 1
        assert prompt["draft"] is False
        parsed = parse(text)
        assert (prompt["system"], prompt["user"], prompt["model"]) == (
            parsed.system,
            parsed.user,
            "default",
        )
        assert prompt["prompt_type"] == "dynamic_both"
        assert prompt["updated_at"].endswith("Z")
    assert by_key["hello"]["temperature"] == 0.7
    assert by_key["support/triage"]["max_tokens"] == 200


def test_create_from_fields_and_from_markdown_write_the_same_canonical_file(api: ApiEnv) -> None:
    from_fields = api.post("/v1/ui/prompts", json=STRUCTURED)
    assert from_fields.status_code == 201, from_fields.text
    from_markdown = api.post(
        "/v1/ui/prompts", json={"key": "team/writer-md", "content": RAW_MARKDOWN}
    )
    assert from_markdown.status_code == 201, from_markdown.text

    on_disk = (api.repo / "prompts/team/writer.md").read_bytes()
    assert (api.repo / "prompts/team/writer-md.md").read_bytes() == on_disk
    assert git_bytes(api.repo, "show", "HEAD:prompts/team/writer.md") == on_disk
    assert git_bytes(api.repo, "show", "HEAD:prompts/team/writer-md.md") == on_disk
    assert serialize(parse(on_disk.decode())) == on_disk.decode()
    assert b"\r" not in on_disk

    body = from_fields.json()
    assert LLMKIT_FIELDS - {"system_version_diff", "user_version_diff"} <= set(body)
    for name in ("system", "user", "model", "temperature", "max_tokens", "json_mode", "is_chat"):
        assert body[name] == STRUCTURED[name], name
        assert from_markdown.json()[name] == STRUCTURED[name], name
    assert body["prompt_type"] == "dynamic_both"
    assert body["version_number"] == 1
    assert body["sha"] == file_history(api, "prompts/team/writer.md")[-1]
    assert from_markdown.json()["sha"] == api.head()
    assert git(api.repo, "status", "--porcelain") == ""


def test_get_by_integer_id_and_by_key_with_a_slash(api: ApiEnv) -> None:
    by_key = api.get("/v1/ui/prompts/support/triage")
    assert by_key.status_code == 200
    prompt_id = by_key.json()["id"]
    by_id = api.get(f"/v1/ui/prompts/{prompt_id}")
    encoded = api.get("/v1/ui/prompts/support%2Ftriage")
    assert by_id.status_code == encoded.status_code == 200
    assert by_id.json() == by_key.json() == encoded.json()
    assert by_key.json()["key"] == "support/triage"
    missing = api.get("/v1/ui/prompts/support/nothing")
    assert missing.status_code == 404
    assert api.get("/v1/ui/prompts/9999").status_code == 404


def test_update_changes_only_the_fields_given(api: ApiEnv) -> None:
    before = api.get("/v1/ui/prompts/hello").json()
    response = api.put("/v1/ui/prompts/hello", json={"temperature": 0.1})
    assert response.status_code == 200, response.text
    after = response.json()
    assert after["temperature"] == 0.1
    for name in (
        "system",
        "user",
        "model",
        "description",
        "max_tokens",
        "json_mode",
        "is_chat",
        "id",
    ):
        assert after[name] == before[name], name
    assert after["version_number"] == 2
    assert after["sha"] == api.head() != before["sha"]
    assert after["system_version_diff"] == after["user_version_diff"] == ""

    response = api.put(f"/v1/ui/prompts/{before['id']}", json={"user": "Question: {{ question }}"})
    assert response.status_code == 200, response.text
    after = response.json()
    assert after["user"] == "Question: {{ question }}"
    assert after["system"] == before["system"] and after["temperature"] == 0.1
    assert "-{{ question }}" in after["user_version_diff"]
    assert "+Question: {{ question }}" in after["user_version_diff"]
    assert after["system_version_diff"] == ""
    on_disk = (api.repo / "prompts/hello.md").read_text()
    assert git(api.repo, "show", "HEAD:prompts/hello.md") + "\n" == on_disk
    assert "temperature: 0.1" in on_disk and "description: Greets people." in on_disk


def test_update_with_frontmatter_removes_a_field_and_rejects_a_rename(api: ApiEnv) -> None:
    response = api.put(
        "/v1/ui/prompts/hello", json={"frontmatter": {"temperature": None, "seed": 7}}
    )
    assert response.status_code == 200, response.text
    assert "temperature" not in response.json()["frontmatter"]
    assert response.json()["temperature"] == 1.0  # what the call runs with: the default
    assert response.json()["frontmatter"]["seed"] == 7
    head = api.head()
    rename = api.put("/v1/ui/prompts/hello", json={"key": "other", "system": "x"})
    assert rename.status_code == 400
    unknown = api.put("/v1/ui/prompts/hello", json={"frontmatter": {"colour": "red"}})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "colour"
    assert api.head() == head


def test_versions_list_every_commit_with_author_date_message_and_diff(api: ApiEnv) -> None:
    api.put("/v1/ui/prompts/hello", json={"system": "Version two."})
    api.put("/v1/ui/prompts/hello", json={"system": "Version three.", "message": "Third take"})
    response = api.get("/v1/ui/prompts/hello/versions")
    assert response.status_code == 200
    versions = response.json()
    shas = file_history(api, "prompts/hello.md")
    assert [v["number"] for v in versions] == [1, 2, 3]
    assert [v["version_number"] for v in versions] == [1, 2, 3]
    assert [v["sha"] for v in versions] == shas
    for v, sha in zip(versions, shas):
        assert v["author"] == git(api.repo, "log", "-1", "--format=%an", sha)
        assert v["date"].endswith("Z") and v["date"][:4].isdigit()
        assert v["message"] == git(api.repo, "log", "-1", "--format=%B", sha).strip()
        assert v["draft"] is False
    assert versions[2]["message"] == "Third take"
    assert versions[0]["diff"].startswith("--- ") and "+{{ question }}" in versions[0]["diff"]
    assert "-Version two." in versions[2]["diff"] and "+Version three." in versions[2]["diff"]
    prompt_id = api.get("/v1/ui/prompts/hello").json()["id"]
    by_id = api.get(f"/v1/ui/prompts/{prompt_id}/versions")
    assert [v["sha"] for v in by_id.json()] == shas


def test_get_one_version_by_number_sha_prefix_branch_and_tag(api: ApiEnv) -> None:
    first = api.head()
    api.put("/v1/ui/prompts/hello", json={"system": "Second."})
    git(api.repo, "tag", "v1", first)
    git(api.repo, "branch", "production", first)
    expected = git(api.repo, "show", f"{first}:prompts/hello.md") + "\n"
    # A prefix of digits only would read as a version number; take one long enough to hold a letter.
    prefix = next(first[:n] for n in range(7, 41) if not first[:n].isdigit())
    for spec in ("1", prefix, first, "production", "v1"):
        response = api.get(f"/v1/ui/prompts/hello/versions/{spec}")
        assert response.status_code == 200, (spec, response.text)
        body = response.json()
        assert body["content"] == expected, spec
        assert body["sha"] == first and body["number"] == 1, spec
        assert body["key"] == "hello" and body["message"] == "Initial commit"
    latest = api.get("/v1/ui/prompts/hello/versions/main").json()
    assert latest["number"] == 2 and latest["system"] == "Second."
    for spec in ("7", "nosuchref", "0000000"):
        assert api.get(f"/v1/ui/prompts/hello/versions/{spec}").status_code == 404, spec


def test_set_version_restores_as_one_new_commit_and_keeps_history_linear(api: ApiEnv) -> None:
    api.put("/v1/ui/prompts/hello", json={"system": "Second."})
    api.put("/v1/ui/prompts/hello", json={"system": "Third."})
    count, head = api.commit_count(), api.head()
    response = api.put("/v1/ui/prompts/hello/set-version/1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert api.commit_count() == count + 1
    assert git(api.repo, "rev-parse", "HEAD^") == head
    assert git(api.repo, "rev-list", "--merges", "HEAD") == ""
    assert body["version_number"] == 4 and body["sha"] == api.head()
    assert body["system"] == parse(HELLO_MD).system
    assert (api.repo / "prompts/hello.md").read_text() == HELLO_MD
    assert git(api.repo, "show", "HEAD:prompts/hello.md") + "\n" == HELLO_MD
    assert "-Third." in body["system_version_diff"]
    assert git(api.repo, "status", "--porcelain") == ""

    # Setting the version that is already served changes nothing and is not an error.
    again = api.put("/v1/ui/prompts/hello/set-version/4")
    assert again.status_code == 200, again.text
    assert again.json()["version_number"] == 4
    assert api.commit_count() == count + 1
    assert api.put("/v1/ui/prompts/hello/set-version/9").status_code == 404


def test_repeated_put_is_idempotent(api: ApiEnv) -> None:
    first = api.put("/v1/ui/prompts/hello", json={"system": "Same."})
    count = api.commit_count()
    second = api.put("/v1/ui/prompts/hello", json={"system": "Same."})
    assert first.status_code == second.status_code == 200
    assert second.json()["sha"] == first.json()["sha"]
    assert api.commit_count() == count


def test_diff_between_versions(api: ApiEnv) -> None:
    api.put("/v1/ui/prompts/hello", json={"system": "Second."})
    response = api.get("/v1/ui/prompts/hello/diff", params={"from": "1", "to": "2"})
    assert response.status_code == 200
    diff = response.json()["diff"]
    assert "-You are a helpful assistant with a {{ personality }} personality." in diff
    assert "+Second." in diff
    served = api.get("/v1/ui/prompts/hello/diff", params={"from": "1"})
    assert served.json()["diff"] == diff
    assert (
        api.get("/v1/ui/prompts/hello/diff", params={"from": "2", "to": "2"}).json()["diff"] == ""
    )
    missing = api.get("/v1/ui/prompts/hello/diff")
    assert (missing.status_code, missing.json()["error"]["param"]) == (400, "from")
    assert api.get("/v1/ui/prompts/hello/diff", params={"from": "nope"}).status_code == 404


def test_delete_commits_the_removal_and_history_stays_readable(api: ApiEnv) -> None:
    prompt_id = api.get("/v1/ui/prompts/hello").json()["id"]
    count = api.commit_count()
    response = api.delete("/v1/ui/prompts/hello")
    assert response.status_code == 200, response.text
    assert response.json()["deleted"] is True and response.json()["sha"] == api.head()
    assert api.commit_count() == count + 1
    assert not (api.repo / "prompts/hello.md").exists()
    assert (
        git(api.repo, "ls-tree", "-r", "--name-only", "HEAD", "prompts/")
        == "prompts/support/triage.md"
    )
    assert git(api.repo, "status", "--porcelain") == ""

    for ident in ("hello", str(prompt_id)):
        gone = api.get(f"/v1/ui/prompts/{ident}")
        assert gone.status_code == 404, gone.text
        assert "deleted" in gone.json()["error"]["message"]
    assert "hello" not in [p["key"] for p in api.get("/v1/ui/prompts").json()]
    assert "hello" not in [m["id"] for m in api.get("/v1/models", headers=api.run).json()["data"]]
    assert api.put("/v1/ui/prompts/hello", json={"system": "x"}).status_code == 404
    assert api.delete("/v1/ui/prompts/hello").status_code == 404

    versions = api.get("/v1/ui/prompts/hello/versions")
    assert versions.status_code == 200 and [v["number"] for v in versions.json()] == [1]
    assert api.get("/v1/ui/prompts/hello/versions/1").json()["content"] == HELLO_MD

    restored = api.put("/v1/ui/prompts/hello/set-version/1")
    assert restored.status_code == 200, restored.text
    assert restored.json()["id"] == prompt_id and restored.json()["version_number"] == 2
    assert (api.repo / "prompts/hello.md").read_text() == HELLO_MD


def test_commit_message_and_author_of_each_write_reach_git_log(api: ApiEnv) -> None:
    who = {"author_name": "Ada Lovelace", "author_email": "ada@example.com"}

    def last_commit() -> tuple[str, str, str]:
        name, email, message = git(api.repo, "log", "-1", "--format=%an%x00%ae%x00%B").split("\x00")
        return name, email, message.strip()

    created = api.post(
        "/v1/ui/prompts",
        json={
            "key": "notes",
            "system": "Take notes.",
            "message": "Add notes\n\nFor meetings.",
            **who,
        },
    )
    assert created.status_code == 201
    assert last_commit() == ("Ada Lovelace", "ada@example.com", "Add notes\n\nFor meetings.")
    api.put(
        "/v1/ui/prompts/notes", json={"system": "Take short notes.", "message": "Shorter", **who}
    )
    assert last_commit() == ("Ada Lovelace", "ada@example.com", "Shorter")
    api.put("/v1/ui/prompts/notes/set-version/1", json={"message": "Back to long notes", **who})
    assert last_commit() == ("Ada Lovelace", "ada@example.com", "Back to long notes")
    api.delete("/v1/ui/prompts/notes", json={"message": "No more notes", **who})
    assert last_commit() == ("Ada Lovelace", "ada@example.com", "No more notes")

    # Without them, a default message names the prompt and the repository's identity is used.
    api.put("/v1/ui/prompts/hello", json={"system": "Plain."})
    name, email, message = last_commit()
    assert "hello" in message and name == "Test Author" and email == "author@example.com"
    versions = api.get("/v1/ui/prompts/notes/versions").json()
    assert [v["message"] for v in versions] == [
        "Add notes\n\nFor meetings.",
        "Shorter",
        "Back to long notes",
    ]
    assert {v["author"] for v in versions} == {"Ada Lovelace"}


@pytest.mark.parametrize("how", ["if-match", "weak-etag", "base_version"])
def test_a_write_from_a_stale_base_is_refused_with_409(api: ApiEnv, how: str) -> None:
    base = api.get("/v1/ui/prompts/hello").json()["sha"]
    assert (
        api.put("/v1/ui/prompts/hello", json={"system": "Someone else's edit."}).status_code == 200
    )
    state = repo_state(api.repo)

    def stale(body: dict) -> dict:
        if how == "base_version":
            return {"json": {**body, "base_version": base}}
        tag = f'W/"{base}"' if how == "weak-etag" else base
        return {"json": body, "headers": {**api.admin, "If-Match": tag}}

    for method, url, body in (
        ("PUT", "/v1/ui/prompts/hello", {"system": "My edit."}),
        ("PUT", "/v1/ui/prompts/hello/set-version/1", {}),
        ("DELETE", "/v1/ui/prompts/hello", {}),
    ):
        response = api.request(method, url, **stale(body))
        assert response.status_code == 409, (method, url, response.text)
        assert response.json()["error"]["type"] == "conflict_error"
    assert repo_state(api.repo) == state

    current = api.head()
    fresh = api.put(
        "/v1/ui/prompts/hello",
        json={"system": "My edit."},
        headers={**api.admin, "If-Match": current[:10]},
    )
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["system"] == "My edit."


def test_a_prompt_with_uncommitted_edits_is_refused_and_the_edit_kept(api: ApiEnv) -> None:
    path = api.repo / "prompts/hello.md"
    edited = HELLO_MD.replace("helpful", "half-edited")
    path.write_text(edited)
    head = api.head()
    for method, url, body in (
        ("PUT", "/v1/ui/prompts/hello", {"system": "API edit."}),
        ("PUT", "/v1/ui/prompts/hello", {"content": "<!-- role:system -->\nAPI edit.\n"}),
        ("PUT", "/v1/ui/prompts/hello/set-version/1", None),
        ("DELETE", "/v1/ui/prompts/hello", None),
    ):
        response = api.request(method, url, json=body)
        assert response.status_code == 409, (method, url, response.text)
        assert path.read_text() == edited
    assert api.head() == head

    # What the working tree holds is served, as a draft on top of the committed versions.
    api.ws.index.sync()
    draft = api.get("/v1/ui/prompts/hello").json()
    assert (draft["draft"], draft["sha"], draft["version_number"]) == (True, None, 2)
    assert "half-edited" in draft["system"]
    versions = api.get("/v1/ui/prompts/hello/versions").json()
    assert [(v["number"], v["draft"]) for v in versions] == [(1, False), (2, True)]
    assert "+You are a half-edited assistant" in versions[-1]["diff"]
    assert api.put("/v1/ui/prompts/hello", json={"system": "API edit."}).status_code == 409

    # Once the index has seen a half-written file, the answer is still 409, not a parse error.
    path.write_text("---\nmodel: [\n---\nhalf")
    api.ws.index.sync()
    response = api.put("/v1/ui/prompts/hello", json={"temperature": 0.2})
    assert response.status_code == 409, response.text
    assert path.read_text() == "---\nmodel: [\n---\nhalf"
    assert api.head() == head


def test_an_api_commit_holds_only_its_own_file_and_leaves_staged_work_alone(api: ApiEnv) -> None:
    (api.repo / "prompts/hello.md").write_text(HELLO_MD.replace("helpful", "staged"))
    (api.repo / "notes.txt").write_text("work in progress\n")
    git(api.repo, "add", "prompts/hello.md", "notes.txt")
    staged_hello = git(api.repo, "show", ":prompts/hello.md")

    response = api.put("/v1/ui/prompts/support/triage", json={"system": "Sort it."})
    assert response.status_code == 200, response.text
    assert git(api.repo, "show", "--name-only", "--format=", "HEAD") == "prompts/support/triage.md"
    assert git(api.repo, "diff", "--cached", "--name-only").split() == [
        "notes.txt",
        "prompts/hello.md",
    ]
    assert git(api.repo, "show", ":prompts/hello.md") == staged_hello
    assert "work in progress" in (api.repo / "notes.txt").read_text()

    created = api.post("/v1/ui/prompts", json={"key": "fresh", "system": "New."})
    assert created.status_code == 201
    assert git(api.repo, "show", "--name-only", "--format=", "HEAD") == "prompts/fresh.md"
    assert git(api.repo, "diff", "--cached", "--name-only").split() == [
        "notes.txt",
        "prompts/hello.md",
    ]

    # The staged prompt itself is not the API's to write.
    refused = api.put("/v1/ui/prompts/hello", json={"system": "API."})
    assert refused.status_code == 409
    assert git(api.repo, "show", ":prompts/hello.md") == staged_hello


def test_create_refuses_an_existing_key_and_a_missing_one(api: ApiEnv) -> None:
    head = api.head()
    exists = api.post("/v1/ui/prompts", json={"key": "hello", "system": "Again."})
    assert exists.status_code == 409
    assert api.post("/v1/ui/prompts", json={"system": "No key."}).status_code == 400
    assert api.post("/v1/ui/prompts", json={"key": "empty"}).status_code == 400
    both = api.post("/v1/ui/prompts", json={"key": "both", "content": "hi", "system": "hi"})
    assert both.status_code == 400
    broken = api.post("/v1/ui/prompts", json={"key": "broken", "system": "{{ unclosed"})
    assert broken.status_code == 400 and broken.json()["error"]["param"] == "template"
    marker = api.post(
        "/v1/ui/prompts", json={"key": "inject", "system": "a\n<!-- role:user -->\nb"}
    )
    assert marker.status_code == 400
    assert api.head() == head and (api.repo / "prompts/hello.md").read_text() == HELLO_MD


@pytest.mark.parametrize(
    "key", ["team/diff", "team/versions", "team/versions/v2", "team/set-version/3"]
)
def test_create_refuses_a_key_the_routes_would_read_as_a_sub_route(api: ApiEnv, key: str) -> None:
    state = repo_state(api.repo)
    response = api.post("/v1/ui/prompts", json={"key": key, "system": "x"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "key"
    assert repo_state(api.repo) == state


def test_create_refuses_a_key_ending_in_any_installed_sub_route(api: ApiEnv) -> None:
    """Route modules add words after a prompt id (`/stats`, `/performance`, ...); a key ending
    in one of them could never be read back by key, so it cannot be created."""
    words = set()
    for route in app_routes(api):
        found = re.fullmatch(
            r"/v1/ui/prompts/\{prompt_id(?::path)?\}/([\w-]+)", getattr(route, "path", "") or ""
        )
        if found:
            words.add(found.group(1))
    assert {"versions", "diff"} <= words
    head = api.head()
    for word in sorted(words):
        response = api.post("/v1/ui/prompts", json={"key": f"team/{word}", "system": "x"})
        assert response.status_code == 400, (word, response.text)
    assert api.head() == head
    assert api.post("/v1/ui/prompts", json={"key": "versions", "system": "x"}).status_code == 201
    assert api.get("/v1/ui/prompts/versions").json()["key"] == "versions"


def test_a_repository_without_commits_accepts_its_first_prompt(make_api: MakeApi) -> None:
    env = make_api(files={})
    assert env.get("/v1/ui/prompts").json() == []
    response = env.post("/v1/ui/prompts", json={"key": "first", "user": "Hello {{ name }}"})
    assert response.status_code == 201, response.text
    assert response.json()["prompt_type"] == "dynamic_both"
    assert env.commit_count() == 1
    assert git(env.repo, "show", "--name-only", "--format=", "HEAD") == "prompts/first.md"
    assert [p["key"] for p in env.get("/v1/ui/prompts").json()] == ["first"]


# -- LLMKit's model ids, numbers where the UI needs them, version diffs ---------------------------

MODELS_YAML = (
    "models:\n  default:\n    model: echo\n"
    "  fast:\n    model: openai/gpt-4o-mini\n    temperature: 0.2\n    max_tokens: 99\n"
)


def model_ids(api: ApiEnv) -> dict[str, int]:
    response = api.get("/v1/ui/models")
    assert response.status_code == 200, response.text
    return {m["name"]: m["id"] for m in response.json()}


def test_prompts_carry_the_model_id_and_provider_of_the_models_list(make_api: MakeApi) -> None:
    api = make_api(
        {
            "llmkit.yaml": MODELS_YAML,
            "prompts/hello.md": HELLO_MD,
            "prompts/bare.md": "---\nmodel: anthropic/claude-3-5-haiku-latest\n---\nHi.\n",
            "prompts/plain.md": "Hi.\n",
        }
    )
    ids = model_ids(api)
    assert set(ids) == {"default", "fast", "anthropic/claude-3-5-haiku-latest"}
    by_key = {p["key"]: p for p in api.get("/v1/ui/prompts").json()}
    assert (by_key["hello"]["model_id"], by_key["hello"]["provider"]) == (ids["default"], "echo")
    bare = by_key["bare"]
    assert (bare["model_id"], bare["provider"]) == (
        ids["anthropic/claude-3-5-haiku-latest"],
        "anthropic",
    )
    # a file without `model:` runs on `default`, and says so
    assert by_key["plain"]["model"] == "default"
    assert by_key["plain"]["model_id"] == ids["default"]
    # numbers where the file leaves them to the model: the documented defaults
    assert (by_key["plain"]["temperature"], by_key["plain"]["max_tokens"]) == (1.0, 4096)
    assert by_key["plain"]["frontmatter"] == {}
    assert (by_key["hello"]["temperature"], by_key["hello"]["max_tokens"]) == (0.7, 4096)
    # ids depend on names alone: another app over the same repository gives the same ones
    with running_api(api.repo) as again:
        assert model_ids(again) == ids


def test_a_write_by_model_id_writes_the_models_name_and_an_unknown_id_is_refused(
    make_api: MakeApi,
) -> None:
    api = make_api({"llmkit.yaml": MODELS_YAML, "prompts/hello.md": HELLO_MD})
    ids = model_ids(api)
    body = {"key": "picked", "user": "Hi {{ name }}", "model_id": ids["fast"]}
    created = api.post("/v1/ui/prompts", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["model"] == "fast" and created.json()["model_id"] == ids["fast"]
    assert parse((api.repo / "prompts/picked.md").read_text()).meta["model"] == "fast"
    # the alias's own settings are what a file that leaves them shows
    assert (created.json()["temperature"], created.json()["max_tokens"]) == (0.2, 99)
    # null: no model picked, none written
    none = api.post("/v1/ui/prompts", json={"key": "unpicked", "user": "Hi", "model_id": None})
    assert none.status_code == 201, none.text
    assert "model" not in parse((api.repo / "prompts/unpicked.md").read_text()).meta
    before = repo_state(api.repo)
    unknown = api.put("/v1/ui/prompts/picked", json={"model_id": 12345})
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["error"]["param"] == "model_id"
    assert "model_id 12345 names no model" in unknown.json()["error"]["message"]
    both = api.put("/v1/ui/prompts/picked", json={"model_id": ids["fast"], "model": "default"})
    assert both.status_code == 422 and "disagree" in both.json()["error"]["message"]
    assert repo_state(api.repo) == before
    moved = api.put("/v1/ui/prompts/picked", json={"model_id": ids["default"]})
    assert moved.status_code == 200 and moved.json()["model"] == "default"


def test_the_ui_sending_back_the_numbers_it_was_shown_leaves_the_file_alone(
    make_api: MakeApi,
) -> None:
    api = make_api({"llmkit.yaml": MODELS_YAML, "prompts/plain.md": "Hi {{ name }}.\n"})
    shown = api.get("/v1/ui/prompts/plain").json()
    form = {k: shown[k] for k in ("model_id", "max_tokens", "temperature", "json_mode", "is_chat")}
    updated = api.put("/v1/ui/prompts/plain", json={**form, "user": "Hello {{ name }}."})
    assert updated.status_code == 200, updated.text
    meta = parse((api.repo / "prompts/plain.md").read_text()).meta
    assert not {"model", "max_tokens", "temperature"} & set(meta)
    # a number the user changed is written
    changed = api.put("/v1/ui/prompts/plain", json={**form, "temperature": 0.5})
    assert changed.json()["temperature"] == 0.5
    assert parse((api.repo / "prompts/plain.md").read_text()).meta["temperature"] == 0.5


def test_the_list_carries_version_diffs_and_a_first_version_has_none(api: ApiEnv) -> None:
    first = {p["key"]: p for p in api.get("/v1/ui/prompts").json()}["hello"]
    assert (first["system_version_diff"], first["user_version_diff"]) == (None, None)
    api.put("/v1/ui/prompts/hello", json={"user": "{{ question }} now"})
    listed = {p["key"]: p for p in api.get("/v1/ui/prompts").json()}["hello"]
    assert listed["system_version_diff"] == ""
    # section texts end without a newline: the old and new lines stay apart
    assert listed["user_version_diff"].endswith(
        "-{{ question }}\n\\ No newline at end of file\n"
        "+{{ question }} now\n\\ No newline at end of file\n"
    )
    assert (
        api.get("/v1/ui/prompts/hello").json()["user_version_diff"] == listed["user_version_diff"]
    )


# -- listing: pages and prefixes -----------------------------------------------------------

LISTED = ("a", "b/x", "b/y", "b/z", "bb", "c", "d/e/f")


def listed_api(make_api: MakeApi) -> ApiEnv:
    return make_api(files={f"prompts/{key}.md": HELLO_MD for key in LISTED})


def keys(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["key"] for item in response.json()]


def test_the_prompt_list_pages_by_number_and_cursor_and_filters_by_prefix(
    make_api: MakeApi,
) -> None:
    api = listed_api(make_api)
    everything = keys(api.get("/v1/ui/prompts"))
    assert sorted(everything) == sorted(LISTED)
    first = api.get("/v1/ui/prompts", params={"page": 1, "limit": 3})
    assert keys(first) == everything[:3]
    assert first.headers["x-total-count"] == "7"
    assert keys(api.get("/v1/ui/prompts", params={"page": 3, "limit": 3})) == everything[6:]
    walked: list[str] = []
    response = first
    for _ in range(10):
        walked += keys(response)
        if "x-next-cursor" not in response.headers:
            break
        link = response.headers["link"]
        response = api.get(link[link.index("<") + 1 : link.index(">")])
    assert walked == everything
    by_prefix = api.get("/v1/ui/prompts", params={"prefix": "b/"})
    assert sorted(keys(by_prefix)) == ["b/x", "b/y", "b/z"]
    assert by_prefix.headers["x-total-count"] == "3"
    assert keys(api.get("/v1/ui/prompts", params={"prefix": "b"})) == [
        k for k in everything if k.startswith("b")
    ]
    assert keys(api.get("/v1/ui/prompts", params={"prefix": "nothing/"})) == []


def test_the_unpaged_prompt_list_is_capped_and_says_there_is_more(
    make_api: MakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmkit.api.routes import prompts as prompt_routes

    api = listed_api(make_api)
    everything = keys(api.get("/v1/ui/prompts", params={"limit": 100}))
    monkeypatch.setattr(prompt_routes, "DEFAULT_LIST_LIMIT", 4)
    capped = api.get("/v1/ui/prompts")
    assert keys(capped) == everything[:4]
    assert capped.headers["x-total-count"] == "7"
    link = capped.headers["link"]
    rest = api.get(link[link.index("<") + 1 : link.index(">")])
    assert keys(rest) == everything[4:]
    assert "link" not in rest.headers


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"cursor": "bm9wZQ"}, "cursor"),
        ({"cursor": "%%%"}, "cursor"),
        ({"page": 1, "cursor": "cHJvbXB0OjE"}, "cursor"),
        ({"page": 0}, "page"),
        ({"limit": 0}, "limit"),
        ({"limit": 10**6}, "limit"),
        ({"prefix": "a\x01"}, "prefix"),
    ],
)
def test_bad_prompt_list_parameters_are_400s_naming_them(
    api: ApiEnv, params: dict[str, Any], param: str
) -> None:
    response = api.get("/v1/ui/prompts", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
