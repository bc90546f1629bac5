"""Request bodies as schemas: what the execution routes accept and refuse (400s naming the
field, as before), what the OpenAPI document and /docs say about them, which calls are prepared
on the event loop, and the warning a caller gets when its system message is not sent."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from llmkit.api.app import create_app
from llmkit.api.schemas import ChatCompletionRequest, PromptExecuteRequest
from llmkit.config import Settings
from llmkit.execute import OTHER_FIELDS, REQUEST_PARAMS, WARNING_HEADER, Execution, Executor
from llmkit.versions import Version
from tests.api_fixtures import ApiEnv
from tests.exec_fixtures import ExecApi

CHAT_ROUTES = [
    "/v1/chat/completions",
    "/v1/chat/completions/stream",
    "/v1/ui/prompts/execute",
    "/v1/ui/prompts/execute/stream",
    "/v1/ui/prompts/execute/chat",
    "/v1/ui/prompts/execute/chat/stream",
]
PERSONA = {"persona": "a pirate"}


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]  # type: ignore[no-any-return]


def post_raw(exec_api: ExecApi, path: str, content: bytes, admin: bool = False) -> Any:
    key = exec_api.env.admin_key if admin else exec_api.env.run_key
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    return exec_api.env.client.post(path, content=content, headers=headers)


# -- the body schema and the executor agree -----------------------------------------------------


def test_the_body_schema_names_exactly_the_fields_the_executor_reads() -> None:
    properties = TypeAdapter(ChatCompletionRequest).json_schema()["properties"]
    assert set(properties) == OTHER_FIELDS | set(REQUEST_PARAMS)
    assert set(TypeAdapter(PromptExecuteRequest).json_schema()["properties"]) == set(properties)


# -- bad bodies: 400s that name what is wrong, before anything is called -------------------------


BAD_BODIES = [
    (b'{"model": "static", "temprature": 0.1, "colour": 1}', "colour", ["colour", "temprature"]),
    (b'{"model": 5}', "model", ["model must be a prompt key"]),
    (b'{"messages": []}', "model", ["model must be a prompt key", "Field required"]),
    (b'{"model": "static", "temperature": "hot"}', "temperature", ["temperature", "'hot'"]),
    (b'{"model": "static", "messages": "hi"}', "messages", ["messages must be a list"]),
    (b'{"model": "static", "messages": [{"content": "no role"}]}', "messages", ["messages.0.role"]),
    (
        b'{"model": "both", "variables": ["persona"]}',
        "variables",
        ["variables must be a JSON object"],
    ),
    (b'{"model": "static", "response_format": "json"}', "response_format", ["with a type"]),
    (b'{"model": "static", "stream": "maybe"}', "stream", ["stream"]),
    (b"[1, 2]", None, ["must be a JSON object"]),
    (b'{"model": ', None, ["not valid JSON"]),
    (b'{"model": "static", "user": "a\\ud800", "tools": 1}', "tools", ["tools", "got 1"]),
]


@pytest.mark.parametrize("path", [*CHAT_ROUTES, "/v1/ui/prompts/execute/static"])
@pytest.mark.parametrize(("raw", "param", "words"), BAD_BODIES)
def test_a_bad_execution_body_is_a_400_naming_what_is_wrong(
    exec_api: ExecApi, path: str, raw: bytes, param: str | None, words: list[str]
) -> None:
    if path.endswith("/static") and param == "model":
        pytest.skip("the path names the prompt: model may be left out")
    response = post_raw(exec_api, path, raw, admin="/ui/" in path)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["type"], error["code"]) == ("invalid_request_error", "bad_request")
    assert error["param"] == param
    for word in words:
        assert word in error["message"], error
    assert exec_api.fake.chat_requests == []


def test_the_prompt_route_ignores_a_model_in_the_body(exec_api: ExecApi) -> None:
    response = post_raw(exec_api, "/v1/ui/prompts/execute/static", b'{"model": "chat"}', admin=True)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "static"


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\udfff\\ud800"])
def test_a_lone_surrogate_escape_is_read_as_json_loads_reads_it(
    exec_api: ExecApi, escape: str
) -> None:
    """JSON's grammar allows half a surrogate pair, which pydantic's parser refuses: such a call
    is still served (the run log stores it sanitized, see test_runlog_api)."""
    raw = f'{{"model": "static", "messages": [{{"role": "user", "content": "a{escape}b"}}]}}'
    response = post_raw(exec_api, "/v1/chat/completions", raw.encode())
    assert response.status_code == 200, response.text
    assert "invalid" not in response.text
    broken = f'{{"model": "static", "user": "a{escape}'
    refused = post_raw(exec_api, "/v1/chat/completions", broken.encode())
    assert refused.status_code == 400
    assert "not valid JSON" in error_of(refused)["message"]


def test_nul_in_a_body_string_is_read_as_text(exec_api: ExecApi) -> None:
    body = {"model": "static", "messages": [{"role": "user", "content": "a\u0000b"}]}
    response = exec_api.complete(body)
    assert response.status_code == 200, response.text
    [upstream] = exec_api.upstream_bodies()
    assert upstream["messages"][-1]["content"] == "a\u0000b"


def test_messages_pass_upstream_with_every_field_they_came_with(exec_api: ExecApi) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [
        {"role": "user", "content": "weather?", "name": "ada"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]
    response = exec_api.complete({"model": "chat", "variables": PERSONA, "messages": history})
    assert response.status_code == 200, response.text
    [upstream] = exec_api.upstream_bodies()
    assert upstream["messages"][3:] == history


# -- the OpenAPI document -------------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _body_ref(document: dict[str, Any], path: str) -> str:
    operation = document["paths"][path]["post"]
    return operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]  # type: ignore[no-any-return]


def test_openapi_describes_the_request_bodies_and_bearer_auth(api: ApiEnv) -> None:
    response = api.client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    schemas = document["components"]["schemas"]

    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "llmkit_...",
        "description": "An llmkit API key; /v1/ui/* routes need an admin-scoped one (a browser"
        " may instead sign in with POST /v1/ui/auth/login)",
    }
    for path in ("/v1/chat/completions", "/v1/chat/completions/stream"):
        assert _body_ref(document, path) == "#/components/schemas/ChatCompletionRequest"
        assert document["paths"][path]["post"]["security"] == [{"bearer": []}]
    assert document["paths"]["/v1/models"]["get"]["security"] == [{"bearer": []}]
    assert _body_ref(document, "/v1/ui/prompts/execute/{prompt_id}") == (
        "#/components/schemas/PromptExecuteRequest"
    )
    assert _body_ref(document, "/v1/ui/prompts") == "#/components/schemas/PromptWrite"
    assert "security" not in document["paths"]["/v1/"]["get"]  # the version needs no key

    chat = schemas["ChatCompletionRequest"]
    assert chat["required"] == ["model"] and chat["additionalProperties"] is False
    assert {"model", "messages", "variables", "stream", "temperature"} <= set(chat["properties"])
    assert "model" not in schemas["PromptExecuteRequest"].get("required", [])
    assert schemas["ChatMessage"]["required"] == ["role"]
    missing = {ref for ref in _refs(document) if ref.split("/")[-1] not in schemas}
    assert missing == set()


def test_docs_load_swagger_ui_from_llmkit_itself(api: ApiEnv) -> None:
    page = api.client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    urls += re.findall(r"""url:\s*['"]([^'"]+)['"]""", page.text)
    assert len(urls) >= 4, page.text
    assert [u for u in urls if not u.startswith("/") or u.startswith("//")] == []
    assert "/openapi.json" in urls
    kinds = {}
    for url in urls:
        asset = api.client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
        kinds[url.rsplit(".", 1)[-1]] = asset
    assert b"SwaggerUIBundle" in kinds["js"].content
    assert (
        kinds["js"]
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
    )
    assert kinds["css"].headers["content-type"].startswith("text/css")
    assert api.client.get("/redoc").status_code == 404  # ReDoc would load from a CDN
    assert api.client.get("/docs/assets/../../pyproject.toml").status_code == 404


# -- who prepares a call: the index says whether git is needed ------------------------------------


class RecordingExecutor(Executor):
    """The executor, noting the thread each call is prepared on."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.threads: list[str] = []

    def prepare(self, body: dict[str, Any], **options: Any) -> Execution:
        self.threads.append(threading.current_thread().name)
        return super().prepare(body, **options)


def test_calls_the_index_resolves_alone_are_prepared_inline(exec_api: ExecApi) -> None:
    ws = exec_api.env.ws
    executor = RecordingExecutor(ws, ws.models, ws.runlog)

    async def prepare_all(models: list[str]) -> list[Execution]:
        return [await executor.aprepare({"model": m}) for m in models]

    sha = exec_api.shas.v2
    try:
        models = ["pinned", "pinned@2", f"pinned@{sha[:7]}", "pinned@stable", "pinned@stable"]
        executions = asyncio.run(prepare_all(models))
    finally:
        executor.close()
    assert [e.version.number for e in executions] == [3, 2, 2, 2, 2]
    here = threading.current_thread().name
    # A branch is read with git the first time (on a thread), then known to the index.
    assert executor.threads[:3] == [here] * 3
    assert executor.threads[3].startswith("llmkit-prepare")
    assert executor.threads[4] == here


def test_version_without_git_answers_only_what_the_index_holds(exec_api: ExecApi) -> None:
    index = exec_api.env.ws.index
    served = index.version_without_git("pinned")
    assert isinstance(served, Version) and served.number == 3
    assert index.version_without_git("pinned", "1").number == 1  # type: ignore[union-attr]
    assert index.version_without_git("pinned", exec_api.shas.v1[:8]).number == 1  # type: ignore[union-attr]
    assert index.version_without_git("pinned", "no-such-branch-yet") is None
    assert index.version_without_git("pinned", "v1.0") in (None, index.version("pinned", "v1.0"))
    index.version("pinned", "v1.0")
    assert index.version_without_git("pinned", "v1.0") == index.version("pinned", "v1.0")


# -- a caller's system message that is not sent ---------------------------------------------------


def test_a_system_message_replaced_by_the_prompts_own_is_named_in_a_warning(
    exec_api: ExecApi,
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    body = {"model": "chat", "variables": PERSONA, "messages": messages}
    response = exec_api.complete(body)
    assert response.status_code == 200, response.text
    warning = response.headers[WARNING_HEADER]
    assert "system message was not sent" in warning and "'chat'" in warning
    assert "variables" in warning
    [upstream] = exec_api.upstream_bodies()
    assert upstream["messages"][0] == {"role": "system", "content": "You are a pirate."}
    assert "Be brief." not in json.dumps(upstream["messages"])

    streamed, _ = exec_api.stream_events({**body, "stream": True})
    assert streamed.status_code == 200
    assert streamed.headers[WARNING_HEADER] == warning


@pytest.mark.parametrize(
    ("body", "warned"),
    [
        (
            {"model": "chat", "messages": [{"role": "system", "content": json.dumps(PERSONA)}]},
            False,
        ),
        (
            {"model": "chat", "variables": PERSONA, "messages": [{"role": "user", "content": "x"}]},
            False,
        ),
        ({"model": "static", "messages": [{"role": "system", "content": "Be loud."}]}, True),
    ],
)
def test_the_warning_comes_only_when_a_system_message_is_dropped(
    exec_api: ExecApi, body: dict[str, Any], warned: bool
) -> None:
    response = exec_api.complete(body)
    assert response.status_code == 200, response.text
    assert (WARNING_HEADER in response.headers) is warned


# -- startup work runs in the app's lifespan ------------------------------------------------------


def test_the_run_log_writer_runs_for_the_lifespan_of_the_app(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from tests.api_fixtures import seeded_repo

    app = create_app(Settings.resolve(seeded_repo(tmp_path / "repo"), watch=False))
    assert not hasattr(app.state, "on_startup")
    assert app.state.ws.runlog.health()["alive"] is False
    with TestClient(app) as client:
        assert client.get("/healthz").json()["runlog"]["alive"] is True
