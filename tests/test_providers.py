"""The provider contract, run over every path: the offline echo model, the pooled OpenAI wire
client and litellm (both against the fake upstream on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from llmkit import providers
from llmkit.errors import (
    BadRequest,
    LlmkitError,
    NotFound,
    ProviderNotConfigured,
    RateLimited,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
)
from llmkit.providers import (
    ProviderCall,
    Usage,
    complete,
    cost_of,
    key_env_of,
    key_is_set,
    provider_of,
    stream,
    usage_of,
)
from llmkit.providers.routing import resolve_target
from tests.fake_upstream import FakeUpstream

FAKE_MODEL = "openai/fake-model"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@dataclass
class ModelPath:
    """One way to reach a model, with what its default answer should be."""

    name: str
    fake: FakeUpstream

    def call(
        self, messages: list[dict[str, Any]], params: dict[str, Any] | None = None, **options: Any
    ) -> ProviderCall:
        options.setdefault("backoff_base", 0.01)
        if self.name == "echo":
            return ProviderCall("echo", messages, params or {}, **options)
        options.setdefault("api_base", self.fake.url)
        options.setdefault("api_key", "sk-test")
        return ProviderCall(
            FAKE_MODEL,
            messages,
            params or {},
            via="litellm" if self.name == "litellm" else None,
            **options,
        )

    def expected_text(self, messages: list[dict[str, Any]]) -> str:
        if self.name == "echo":
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return "ok: " + [m for m in messages if m["role"] == "user"][-1]["content"]


@pytest.fixture(params=["echo", "wire", "litellm"])
def path(request: pytest.FixtureRequest, fake_upstream: FakeUpstream) -> ModelPath:
    return ModelPath(request.param, fake_upstream)


@pytest.fixture(params=["wire", "litellm"])
def upstream(request: pytest.FixtureRequest, fake_upstream: FakeUpstream) -> ModelPath:
    return ModelPath(request.param, fake_upstream)


@pytest_asyncio.fixture(autouse=True)
async def close_pools() -> Any:
    yield
    await providers.aclose()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


async def collect(call: ProviderCall) -> list[dict[str, Any]]:
    return [chunk async for chunk in stream(call)]


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def choice_chunks(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in chunks if c["choices"]]


def streamed_tool_calls(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    calls: dict[int, dict[str, Any]] = {}
    for chunk in choice_chunks(chunks):
        for part in chunk["choices"][0]["delta"].get("tool_calls") or []:
            call = calls.setdefault(part["index"], {"id": None, "name": "", "arguments": ""})
            call["id"] = part.get("id") or call["id"]
            function = part.get("function") or {}
            call["name"] += function.get("name") or ""
            call["arguments"] += function.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def wait_for(record: Any, seconds: float = 5.0) -> str:
    assert record.done.wait(seconds), f"the fake never finished {record.path}"
    return str(record.outcome)


async def settled(record: Any, seconds: float = 5.0) -> str:
    """wait_for without blocking the event loop, which may still have a close to run."""
    return await asyncio.to_thread(wait_for, record, seconds)


# --- the contract on every path ---------------------------------------------------------


@pytest.mark.asyncio
async def test_completion_has_openai_shape(path: ModelPath) -> None:
    messages = user("hello there")
    response = await complete(path.call(messages))
    assert response["object"] == "chat.completion"
    assert isinstance(response["id"], str) and isinstance(response["created"], int)
    [choice] = response["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == path.expected_text(messages)
    assert choice["finish_reason"] == "stop"
    usage = usage_of(response)
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert response["usage"]["total_tokens"] == usage.input_tokens + usage.output_tokens


@pytest.mark.asyncio
async def test_stream_role_first_finish_last_usage_at_end(path: ModelPath) -> None:
    messages = user("tell me a story about foxes")
    chunks = await collect(path.call(messages))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    with_choices = choice_chunks(chunks)
    assert with_choices[0]["choices"][0]["delta"]["role"] == "assistant"
    assert with_choices[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in with_choices[:-1])
    assert content_of(chunks) == path.expected_text(messages)
    assert len({c["id"] for c in chunks}) == 1
    usage = usage_of(chunks[-1])
    assert usage.input_tokens > 0 and usage.output_tokens > 0


@pytest.mark.asyncio
async def test_json_mode_answers_the_object(path: ModelPath) -> None:
    wanted = {"answer": 42, "ok": True, "tags": ["a", "b"]}
    call = path.call(user(json.dumps(wanted)), {"response_format": {"type": "json_object"}})
    response = await complete(call)
    assert json.loads(response["choices"][0]["message"]["content"]) == wanted


@pytest.mark.asyncio
async def test_tool_call_in_openai_shape(path: ModelPath) -> None:
    call = path.call(user('call:get_weather {"city": "Paris"}'), {"tools": TOOLS})
    response = await complete(call)
    choice = response["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [tool_call] = choice["message"]["tool_calls"]
    assert tool_call["type"] == "function" and tool_call["id"]
    assert tool_call["function"]["name"] == "get_weather"
    assert json.loads(tool_call["function"]["arguments"]) == {"city": "Paris"}


@pytest.mark.asyncio
async def test_tool_call_streamed(path: ModelPath) -> None:
    chunks = await collect(path.call(user('call:get_weather {"city": "Oslo"}'), {"tools": TOOLS}))
    [tool_call] = streamed_tool_calls(chunks)
    assert tool_call["id"] and tool_call["name"] == "get_weather"
    assert json.loads(tool_call["arguments"]) == {"city": "Oslo"}
    assert choice_chunks(chunks)[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert usage_of(chunks[-1]).input_tokens > 0


# --- what goes over the wire ------------------------------------------------------------


@pytest.mark.asyncio
async def test_request_carries_model_params_and_key(upstream: ModelPath) -> None:
    params = {"temperature": 0.2, "max_tokens": 5, "seed": 7, "stop": ["\n\n"]}
    await complete(upstream.call(user("hi"), params))
    [request] = upstream.fake.chat_requests
    assert request.body["model"] == "fake-model"
    assert request.body["messages"] == user("hi")
    assert {k: request.body[k] for k in params} == params
    assert request.headers["authorization"] == "Bearer sk-test"


@pytest.mark.asyncio
async def test_stream_always_asks_for_usage(upstream: ModelPath) -> None:
    await collect(upstream.call(user("hi"), {"stream_options": {"include_usage": False}}))
    [request] = upstream.fake.chat_requests
    assert request.body["stream"] is True
    assert request.body["stream_options"]["include_usage"] is True


@pytest.mark.asyncio
async def test_scripted_reply_with_reasoning_usage(upstream: ModelPath) -> None:
    upstream.fake.enqueue(
        "scripted",
        usage={
            "prompt_tokens": 11,
            "completion_tokens": 7,
            "total_tokens": 18,
            "completion_tokens_details": {"reasoning_tokens": 3},
        },
    )
    response = await complete(upstream.call(user("hi")))
    assert response["choices"][0]["message"]["content"] == "scripted"
    assert usage_of(response) == Usage(input_tokens=11, output_tokens=7, reasoning_tokens=3)


def test_absurd_token_counts_are_not_counted_and_cost_stays_a_number() -> None:
    huge = {"usage": {"prompt_tokens": 10**400, "completion_tokens": -5, "total_tokens": 2**60}}
    usage = usage_of(huge)
    assert usage == Usage(input_tokens=0, output_tokens=0, reasoning_tokens=0)
    assert cost_of("openai/gpt-4o-mini", usage) == 0.0


@pytest.mark.asyncio
async def test_wire_pool_reuses_one_connection(fake_upstream: FakeUpstream) -> None:
    path = ModelPath("wire", fake_upstream)
    await complete(path.call(user("one")))
    await collect(path.call(user("two")))
    await complete(path.call(user("three")))
    ports = {r.client_port for r in fake_upstream.chat_requests}
    assert len(fake_upstream.chat_requests) == 3 and len(ports) == 1


@pytest.mark.asyncio
async def test_concurrent_calls(upstream: ModelPath) -> None:
    calls = [upstream.call(user(f"question {i}")) for i in range(32)]
    responses = await asyncio.gather(*(complete(c) for c in calls))
    answers = sorted(r["choices"][0]["message"]["content"] for r in responses)
    assert answers == sorted(f"ok: question {i}" for i in range(32))
    assert len(upstream.fake.chat_requests) == 32


@pytest.mark.asyncio
async def test_bare_openai_name_uses_env_base_and_key(
    fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_upstream.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    await complete(ProviderCall("gpt-4o", user("hi"), {}))
    [request] = fake_upstream.chat_requests
    assert request.body["model"] == "gpt-4o"
    assert request.headers["authorization"] == "Bearer sk-from-env"


@pytest.mark.asyncio
async def test_ollama_needs_no_key_and_serves_under_v1(
    fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_API_BASE", fake_upstream.url.removesuffix("/v1"))
    response = await complete(ProviderCall("ollama/llama3", user("hi"), {}))
    assert response["choices"][0]["message"]["content"] == "ok: hi"
    [request] = fake_upstream.chat_requests
    assert request.path == "/v1/chat/completions"
    assert request.body["model"] == "llama3"
    assert "authorization" not in request.headers


@pytest.mark.asyncio
async def test_api_key_env_names_the_variable(
    fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEAM_VLLM_KEY", "sk-team")
    call = ProviderCall(
        "hosted_vllm/qwen", user("hi"), {}, api_base=fake_upstream.url, api_key_env="TEAM_VLLM_KEY"
    )
    await complete(call)
    [request] = fake_upstream.chat_requests
    assert request.body["model"] == "qwen"
    assert request.headers["authorization"] == "Bearer sk-team"


def test_routes_by_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setenv("DEEPSEEK_API_KEY", "k")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)

    def route(model: str, **options: Any) -> tuple[str, str | None, str]:
        target = resolve_target(ProviderCall(model, [], **options), model, inherit=True)
        return target.route, target.base_url, target.upstream_model

    assert route("echo/anything") == ("echo", None, "echo/anything")
    assert route("gpt-4o-mini") == ("wire", "https://api.openai.com/v1", "gpt-4o-mini")
    assert route("o3-mini") == ("wire", "https://api.openai.com/v1", "o3-mini")
    assert route("deepseek/deepseek-chat") == (
        "wire",
        "https://api.deepseek.com/v1",
        "deepseek-chat",
    )
    assert route("ollama_chat/llama3") == ("wire", "http://localhost:11434/v1", "llama3")
    local = "http://127.0.0.1:1234/v1"
    assert route("lm_studio/m", api_base=local) == ("wire", local, "m")
    assert route("lm_studio/m")[0] == "litellm"
    assert route("anthropic/claude-3-5-haiku-latest")[0] == "litellm"
    assert route("anthropic/claude-3-5-haiku-latest", api_base=local)[0] == "litellm"
    assert route("openai/gpt-4o", via="litellm")[0] == "litellm"


def test_provider_and_key_env() -> None:
    assert provider_of("echo") == "echo"
    assert provider_of("gpt-4o") == "openai"
    assert provider_of("chatgpt-4o-latest") == "openai"
    assert provider_of("openai/gpt-4o-mini") == "openai"
    assert provider_of("anthropic/claude-3-5-haiku-latest") == "anthropic"
    assert provider_of("openrouter/anthropic/claude-3.5-sonnet") == "openrouter"
    assert key_env_of("gpt-4o") == "OPENAI_API_KEY"
    assert key_env_of("anthropic/claude-3-5-haiku-latest") == "ANTHROPIC_API_KEY"
    assert key_env_of("openrouter/x/y") == "OPENROUTER_API_KEY"
    assert key_env_of("echo") is None and key_env_of("ollama/llama3") is None


def test_key_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OTHER_KEY", "x")
    assert key_is_set("echo") and key_is_set("ollama/llama3")
    assert not key_is_set("gpt-4o")
    assert key_is_set("gpt-4o", api_key_env="OTHER_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", "sk")
    assert key_is_set("openai/gpt-4o")


# --- errors -----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "model, env",
    [
        ("openai/gpt-4o-mini", "OPENAI_API_KEY"),
        ("gpt-4o", "OPENAI_API_KEY"),
        ("anthropic/claude-3-5-haiku-latest", "ANTHROPIC_API_KEY"),
        ("openrouter/meta/llama", "OPENROUTER_API_KEY"),
    ],
)
async def test_missing_key_names_the_variable(
    model: str, env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(env, raising=False)
    provider = provider_of(model)
    with pytest.raises(ProviderNotConfigured) as raised:
        await complete(ProviderCall(model, user("hi"), {}))
    assert raised.value.message.startswith(f"No API key for {provider}: set {env} ")
    assert (raised.value.status, raised.value.code) == (503, "provider_not_configured")
    assert raised.value.key_env == env
    with pytest.raises(ProviderNotConfigured, match=env):
        await collect(ProviderCall(model, user("hi"), {}))


@pytest.mark.asyncio
async def test_missing_key_from_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-default")
    monkeypatch.delenv("PROJECT_OPENAI_KEY", raising=False)
    with pytest.raises(
        ProviderNotConfigured, match="No API key for openai: set PROJECT_OPENAI_KEY"
    ):
        await complete(ProviderCall("gpt-4o", user("hi"), {}, api_key_env="PROJECT_OPENAI_KEY"))


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "status, error_class, words",
    [
        (400, BadRequest, ["rejected the request", "boom from upstream"]),
        (422, BadRequest, ["boom from upstream"]),
        (401, Unauthorized, ["openai rejected the API key", "OPENAI_API_KEY"]),
        (403, Unauthorized, ["openai rejected the API key", "OPENAI_API_KEY"]),
        (404, NotFound, ["not found", "openai/fake-model"]),
    ],
)
async def test_client_errors_map_and_are_not_retried(
    upstream: ModelPath, status: int, error_class: type[LlmkitError], words: list[str]
) -> None:
    if status == 422 and upstream.name == "litellm":
        pytest.skip("litellm (drop_params) answers a 422 by resending without the rejected params")
    upstream.fake.enqueue(status=status, error="boom from upstream")
    with pytest.raises(error_class) as raised:
        await complete(upstream.call(user("hi"), fallbacks=["echo"]))
    for word in words:
        assert word in raised.value.message
    assert raised.value.status == (400 if status == 422 else 401 if status == 403 else status)
    assert len(upstream.fake.chat_requests) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("headers", [{"retry-after": "0"}, {"retry-after-ms": "20"}])
async def test_429_honours_retry_after_then_succeeds(
    upstream: ModelPath, headers: dict[str, str]
) -> None:
    upstream.fake.enqueue(status=429, headers=headers)
    response = await complete(upstream.call(user("again")))
    assert response["choices"][0]["message"]["content"] == "ok: again"
    assert len(upstream.fake.chat_requests) == 2


@pytest.mark.asyncio
async def test_429_exhausted_carries_retry_after(upstream: ModelPath) -> None:
    for _ in range(2):
        upstream.fake.enqueue(status=429, headers={"retry-after": "0"}, error="slow down")
    with pytest.raises(RateLimited) as raised:
        await complete(upstream.call(user("hi"), max_retries=1))
    assert raised.value.status == 429
    assert raised.value.headers["retry-after"] == "0"
    assert "slow down" in raised.value.message
    assert len(upstream.fake.chat_requests) == 2


@pytest.mark.asyncio
async def test_retry_after_beyond_budget_fails_fast(upstream: ModelPath) -> None:
    upstream.fake.enqueue(status=429, headers={"retry-after": "100"})
    with pytest.raises(RateLimited) as raised:
        await complete(upstream.call(user("hi"), timeout=5.0, max_retries=3))
    assert raised.value.headers["retry-after"] == "100"
    assert len(upstream.fake.chat_requests) == 1


@pytest.mark.asyncio
async def test_500_retried_then_succeeds(upstream: ModelPath) -> None:
    upstream.fake.enqueue(status=500)
    upstream.fake.enqueue(status=503)
    response = await complete(upstream.call(user("hi"), max_retries=2))
    assert response["choices"][0]["message"]["content"] == "ok: hi"
    assert len(upstream.fake.chat_requests) == 3


@pytest.mark.asyncio
async def test_500_exhausted_is_502(upstream: ModelPath) -> None:
    for _ in range(3):
        upstream.fake.enqueue(status=500, error="upstream exploded")
    with pytest.raises(UpstreamError) as raised:
        await complete(upstream.call(user("hi"), max_retries=2))
    assert raised.value.status == 502
    assert "upstream exploded" in raised.value.message and "openai" in raised.value.message
    assert len(upstream.fake.chat_requests) == 3


@pytest.mark.asyncio
async def test_hang_times_out_as_504(upstream: ModelPath) -> None:
    upstream.fake.enqueue(fault="hang")
    with pytest.raises(UpstreamTimeout) as raised:
        await complete(upstream.call(user("hi"), timeout=0.3, max_retries=2))
    assert raised.value.status == 504
    assert "fake-model" in raised.value.message
    assert await settled(upstream.fake.chat_requests[0]) == "disconnected"


@pytest.mark.asyncio
async def test_hang_before_first_chunk_times_out(upstream: ModelPath) -> None:
    upstream.fake.enqueue(fault="hang")
    with pytest.raises(UpstreamTimeout):
        await collect(upstream.call(user("hi"), timeout=0.3, max_retries=0))
    assert await settled(upstream.fake.chat_requests[0]) == "disconnected"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fault", "max_retries"),
    [
        pytest.param("malformed", 2, id="malformed-json-is-not-retried"),
        pytest.param("drop", 0, id="dropped-connection-without-retries"),
    ],
)
async def test_an_upstream_fault_that_is_not_retried_is_502(
    upstream: ModelPath, fault: str, max_retries: int
) -> None:
    upstream.fake.enqueue(fault=fault)
    with pytest.raises(UpstreamError) as raised:
        await complete(upstream.call(user("hi"), max_retries=max_retries))
    assert raised.value.status == 502
    assert len(upstream.fake.chat_requests) == 1


@pytest.mark.asyncio
async def test_malformed_stream_is_upstream_error(upstream: ModelPath) -> None:
    upstream.fake.enqueue(fault="malformed")
    with pytest.raises(UpstreamError):
        await collect(upstream.call(user("hi"), max_retries=0))


@pytest.mark.asyncio
async def test_dropped_connection_is_retried(upstream: ModelPath) -> None:
    upstream.fake.enqueue(fault="drop")
    response = await complete(upstream.call(user("hi")))
    assert response["choices"][0]["message"]["content"] == "ok: hi"
    assert [await settled(r) for r in upstream.fake.chat_requests] == ["dropped", "answered"]


@pytest.mark.asyncio
async def test_drop_mid_stream_raises_from_iterator(upstream: ModelPath) -> None:
    upstream.fake.enqueue("a long enough answer to cut", fault="drop")
    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError):
        async for chunk in stream(upstream.call(user("hi"), max_retries=2, fallbacks=["echo"])):
            received.append(chunk)
    assert received and received[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len(upstream.fake.chat_requests) == 1


@pytest.mark.asyncio
async def test_stream_error_before_first_chunk_is_retried(upstream: ModelPath) -> None:
    upstream.fake.enqueue(status=502)
    chunks = await collect(upstream.call(user("hi")))
    assert content_of(chunks) == "ok: hi"
    assert len(upstream.fake.chat_requests) == 2


@pytest.mark.asyncio
async def test_stream_timeout_applies_between_chunks(upstream: ModelPath) -> None:
    upstream.fake.enqueue("one two three four five six", fault="slow", delay=0.25)
    chunks = await collect(upstream.call(user("hi"), timeout=1.0))
    assert content_of(chunks) == "one two three four five six"
    assert len(chunks) >= 5  # five gaps of 0.25 s: longer than the timeout in all


@pytest.mark.asyncio
async def test_stalled_stream_times_out_from_iterator(upstream: ModelPath) -> None:
    upstream.fake.enqueue("never finished", fault="slow", delay=3.0)
    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamTimeout):
        async for chunk in stream(upstream.call(user("hi"), timeout=0.3)):
            received.append(chunk)
    assert len(received) == 1
    assert await settled(upstream.fake.chat_requests[0]) == "disconnected"


# --- fallbacks --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fallback_answers_after_primary_fails(upstream: ModelPath) -> None:
    for _ in range(2):
        upstream.fake.enqueue(status=500)
    call = upstream.call(user("hi"), max_retries=1, fallbacks=["openai/backup-model"])
    response = await complete(call)
    assert response["choices"][0]["message"]["content"] == "ok: hi"
    models = [r.body["model"] for r in upstream.fake.chat_requests]
    assert models == ["fake-model", "fake-model", "backup-model"]


@pytest.mark.asyncio
async def test_fallback_to_echo_on_timeout(upstream: ModelPath) -> None:
    upstream.fake.enqueue(fault="hang")
    response = await complete(upstream.call(user("hi"), timeout=0.3, fallbacks=["echo"]))
    assert response["model"] == "echo"
    assert response["choices"][0]["message"]["content"] == "system: You are terse.\nuser: hi"


@pytest.mark.asyncio
async def test_stream_fallback_before_first_chunk(upstream: ModelPath) -> None:
    upstream.fake.enqueue(status=500)
    call = upstream.call(user("hi"), max_retries=0, fallbacks=["openai/backup-model"])
    chunks = await collect(call)
    assert content_of(chunks) == "ok: hi"
    assert [r.body["model"] for r in upstream.fake.chat_requests] == ["fake-model", "backup-model"]


# --- closing streams early --------------------------------------------------------------


@pytest.mark.asyncio
async def test_closing_stream_early_closes_upstream(upstream: ModelPath) -> None:
    upstream.fake.enqueue("a b c d e f", fault="slow", delay=0.2)
    chunks = stream(upstream.call(user("hi")))
    first = await anext(chunks)
    assert first["choices"][0]["delta"]["role"] == "assistant"
    await chunks.aclose()
    assert await settled(upstream.fake.chat_requests[0]) == "disconnected"


@pytest.mark.asyncio
async def test_cancelling_a_stream_consumer_closes_upstream(upstream: ModelPath) -> None:
    upstream.fake.enqueue("a b c d e f", fault="slow", delay=0.5)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in stream(upstream.call(user("hi"))):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await settled(upstream.fake.chat_requests[0]) == "disconnected"


# --- echo -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_echo_renders_parts_and_tool_turns() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look at"},
                {"type": "image_url", "image_url": {}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    response = await complete(ProviderCall("echo", messages, {"tools": TOOLS}))
    assert response["choices"][0]["message"]["content"] == (
        'user: look at [image_url]\nassistant: call:get_weather {"city":"Rome"}\ntool: sunny'
    )
    assert response["choices"][0]["finish_reason"] == "stop"


@pytest.mark.asyncio
async def test_echo_json_mode_without_an_object_wraps_messages() -> None:
    messages = [{"role": "user", "content": "not json"}]
    schema_format = {"type": "json_schema", "json_schema": {}}
    call = ProviderCall("echo/json", messages, {"response_format": schema_format})
    response = await complete(call)
    assert json.loads(response["choices"][0]["message"]["content"]) == {"messages": messages}


@pytest.mark.asyncio
async def test_echo_rejects_bad_tool_arguments() -> None:
    with pytest.raises(BadRequest, match="not JSON"):
        messages = [{"role": "user", "content": "call:f {oops"}]
        await complete(ProviderCall("echo", messages, {"tools": TOOLS}))


# --- usage and cost ---------------------------------------------------------------------


def test_usage_of_absent_fields_is_zero() -> None:
    assert usage_of({}) == Usage(0, 0, 0)
    assert usage_of({"usage": None}) == Usage(0, 0, 0)
    partial = {"usage": {"prompt_tokens": 3, "completion_tokens_details": None}}
    assert usage_of(partial) == Usage(3, 0, 0)


def test_cost_of_known_and_unknown_models() -> None:
    cost = cost_of("openai/gpt-4o-mini", Usage(input_tokens=1000, output_tokens=500))
    assert isinstance(cost, float) and cost > 0
    assert cost_of("gpt-4o-mini", Usage(1000, 500)) == cost
    assert cost_of("no-such-provider/no-such-model", Usage(1000, 500)) is None
    assert cost_of("echo", Usage(1000, 500)) == 0.0


# --- litellm stays out of the process ---------------------------------------------------


def test_echo_and_wire_paths_never_import_litellm_and_aiohttp_waits_for_a_wire_call(
    fake_upstream: FakeUpstream,
) -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys
        import llmkit.api.app  # what `llmkit serve` imports before it serves
        from llmkit import providers
        from llmkit.providers import ProviderCall, complete, cost_of, stream, Usage

        async def main():
            messages = [{{"role": "user", "content": "hi"}}]
            echo = await complete(ProviderCall("echo", messages, {{}}))
            aiohttp_before_wire = "aiohttp" in sys.modules
            wire_call = ProviderCall("openai/fake-model", messages, {{}},
                                     api_base={fake_upstream.url!r}, api_key="sk")
            wire = await complete(wire_call)
            chunks = [c async for c in stream(wire_call)]
            assert cost_of("openai/gpt-4o-mini", Usage(10, 10)) > 0
            await providers.aclose()
            print(echo["choices"][0]["message"]["content"],
                  wire["choices"][0]["message"]["content"],
                  len(chunks), "litellm" in sys.modules, aiohttp_before_wire)

        asyncio.run(main())
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[:4] == ["user:", "hi", "ok:", "hi"]
    assert int(words[4]) >= 3
    assert words[5] == "False", "litellm was imported"
    assert words[6] == "False", "aiohttp was imported before a call took the wire path"
    assert len(fake_upstream.chat_requests) == 2


# --- the fake upstream itself -----------------------------------------------------------


def test_fake_lists_models(fake_upstream: FakeUpstream) -> None:
    listing = httpx.get(fake_upstream.url + "/models", timeout=5).json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["fake-model"]


def test_fake_stops_while_a_request_hangs() -> None:
    fake = FakeUpstream().start()
    fake.enqueue(fault="hang")
    failures: list[Exception] = []

    def post() -> None:
        try:
            body = {"model": "m", "messages": []}
            httpx.post(fake.url + "/chat/completions", json=body, timeout=60)
        except httpx.HTTPError as exc:
            failures.append(exc)

    client = threading.Thread(target=post, daemon=True)
    client.start()
    deadline = time.monotonic() + 5
    while not fake.history and time.monotonic() < deadline:
        time.sleep(0.01)
    fake.stop()
    client.join(10)
    assert not client.is_alive(), "the hanging request outlived the server"
    assert failures and wait_for(fake.history[0]) == "hung"


@pytest.mark.asyncio
async def test_a_netrc_entry_for_the_upstream_host_does_not_break_the_wire_path(
    fake_upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text(netrc.read_text())
    (tmp_path / ".netrc").chmod(0o600)
    call = ProviderCall(
        "openai/fake-model", user("hi"), {}, api_base=fake_upstream.url, api_key="k", via="wire"
    )
    response = await complete(call)
    assert response["choices"][0]["message"]["content"] == "ok: hi"
    assert fake_upstream.chat_requests[0].headers["authorization"] == "Bearer k"
