"""The transport registry: a transport added in one module and one registration gets routing,
key checks and the dispatcher's retry and fallback policy, like echo, wire and litellm."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest

from llmkit import providers
from llmkit.errors import BadRequest, LlmkitError, ProviderNotConfigured, UpstreamError
from llmkit.providers import ProviderCall, key_env_of, key_is_set, provider_of
from llmkit.providers.echo import chunks_of
from llmkit.providers.registry import TRANSPORTS, Transports
from llmkit.providers.routing import resolve_target
from llmkit.providers.transport import Provider, Target, Transport

KEY_ENV = "SCRIPTED_API_KEY"


class ScriptedTransport:
    """A transport answering from a script: each attempt takes the next step, an error to
    raise or a text to answer."""

    name = "scripted"
    local = False
    providers: tuple[Provider, ...] = (
        Provider("scripted", KEY_ENV, "https://scripted.invalid/v1", bare_prefixes=("scripted-",)),
    )

    def __init__(self) -> None:
        self.script: list[LlmkitError | str] = []
        self.attempts: list[Target] = []
        self.closed = 0

    def serves(self, provider: str, api_base: str | None, *, forced: bool = False) -> bool:
        return provider == "scripted"

    def base_url(self, provider: str, api_base: str | None) -> str | None:
        return api_base or self.providers[0].base_url

    def _next(self, target: Target) -> dict[str, Any]:
        self.attempts.append(target)
        step = self.script.pop(0)
        if isinstance(step, LlmkitError):
            raise step
        return {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "created": 0,
            "model": target.upstream_model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": step},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    async def complete(self, target: Target, call: ProviderCall, timeout: float) -> dict[str, Any]:
        return self._next(target)

    async def stream(
        self, target: Target, call: ProviderCall, timeout: float
    ) -> AsyncGenerator[dict[str, Any], None]:
        for chunk in chunks_of(self._next(target)):
            yield chunk

    async def aclose(self) -> None:
        self.closed += 1


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedTransport]:
    transport = ScriptedTransport()
    TRANSPORTS.register(transport, before="litellm")
    monkeypatch.setenv(KEY_ENV, "sk-scripted")
    try:
        yield transport
    finally:
        TRANSPORTS.unregister(transport.name)


def call(model: str = "scripted/model-1", **options: Any) -> ProviderCall:
    options.setdefault("backoff_base", 0.001)
    return ProviderCall(model, [{"role": "user", "content": "hi"}], {}, **options)


def test_echo_wire_and_litellm_are_registered_in_order() -> None:
    assert [t.name for t in TRANSPORTS] == ["echo", "wire", "litellm"]
    transports: list[Transport] = list(TRANSPORTS)
    assert all(t.local == (t.name == "echo") for t in transports)


def test_a_registered_transport_is_routed_to_with_its_key(scripted: ScriptedTransport) -> None:
    assert [t.name for t in TRANSPORTS] == ["echo", "wire", "scripted", "litellm"]
    assert provider_of("scripted-large") == "scripted"
    assert key_env_of("scripted/anything") == KEY_ENV
    target = resolve_target(call(), "scripted/model-1", inherit=True)
    assert (target.route, target.upstream_model, target.base_url, target.api_key) == (
        "scripted",
        "model-1",
        "https://scripted.invalid/v1",
        "sk-scripted",
    )
    assert target.transport is scripted


@pytest.mark.asyncio
async def test_a_registered_transport_gets_the_retry_policy(scripted: ScriptedTransport) -> None:
    scripted.script = [UpstreamError("scripted (model-1) failed (HTTP 503): busy"), "hello"]
    answer = await providers.complete(call(max_retries=1))
    assert answer["choices"][0]["message"]["content"] == "hello"
    assert len(scripted.attempts) == 2
    scripted.script = [BadRequest("scripted rejected the request (HTTP 400): bad"), "unused"]
    with pytest.raises(BadRequest):
        await providers.complete(call(max_retries=3))
    assert len(scripted.attempts) == 3, "a 400 was retried"


@pytest.mark.asyncio
async def test_a_registered_transport_streams_and_falls_back(scripted: ScriptedTransport) -> None:
    scripted.script = [UpstreamError("scripted (model-1) failed (HTTP 502): down")]
    chunks = [c async for c in providers.stream(call(max_retries=0, fallbacks=["echo"]))]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "user: hi"
    scripted.script = ["streamed"]
    chunks = [c async for c in providers.stream(call())]
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == "streamed"
    )
    await providers.aclose()
    assert scripted.closed == 1


@pytest.mark.asyncio
async def test_a_missing_key_of_a_registered_provider_is_named(
    scripted: ScriptedTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    assert not key_is_set("scripted/model-1")
    with pytest.raises(ProviderNotConfigured, match=f"No API key for scripted: set {KEY_ENV}"):
        await providers.complete(call())
    assert scripted.attempts == []


def test_unregistering_restores_the_tables(scripted: ScriptedTransport) -> None:
    TRANSPORTS.unregister("scripted")
    assert provider_of("scripted-large") == "unknown"
    assert key_env_of("scripted/x") is None
    assert resolve_target(call(api_key="k"), "scripted/x", inherit=True).route == "litellm"


def test_a_clashing_registration_is_refused_and_changes_nothing() -> None:
    registry = Transports()
    registry.register(ScriptedTransport())
    with pytest.raises(ValueError, match="already registered"):
        registry.register(ScriptedTransport())
    other = ScriptedTransport()
    other.name = "other"
    other.providers = (Provider("scripted", "ANOTHER_KEY"),)
    with pytest.raises(ValueError, match="gives provider 'scripted' the key variable ANOTHER_KEY"):
        registry.register(other)
    with pytest.raises(ValueError, match="no transport named 'nope'"):
        registry.register(other, before="nope")
    assert [t.name for t in registry] == ["scripted"]
    assert registry.key_envs == {"scripted": KEY_ENV}


def test_via_must_name_a_transport_that_can_serve_the_model() -> None:
    with pytest.raises(BadRequest, match="Unknown transport via='nope'; known transports: echo"):
        resolve_target(
            call("openai/gpt-4o", api_key="k", via="nope"), "openai/gpt-4o", inherit=True
        )
    with pytest.raises(BadRequest, match="serves only the echo model"):
        resolve_target(
            call("openai/gpt-4o", api_key="k", via="echo"), "openai/gpt-4o", inherit=True
        )
    with pytest.raises(BadRequest, match="has no OpenAI-compatible base URL"):
        resolve_target(
            call("anthropic/claude-3", api_key="k", via="wire"), "anthropic/claude-3", inherit=True
        )
    # echo is the echo model whatever `via` says
    assert resolve_target(call("echo", via="litellm"), "echo", inherit=True).route == "echo"
