"""How a provider's configuration shows: a key the server lacks is a 503 naming the variable
(not the 401 of a bad llmkit key), an alias with `api_key_env: null` sends no key, and a wrong
api_base fails at once naming the URL tried, against real servers on 127.0.0.1."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from llmkit import providers
from llmkit.errors import ConfigError, NotFound, UpstreamUnreachable
from llmkit.models import ModelRegistry
from tests.api_fixtures import ApiEnv, running_api
from tests.fake_upstream import FakeUpstream
from tests.helpers import free_port, init_repo

PROMPT = """---
model: {alias}
---
<!-- role:system -->
You answer briefly.
"""
HI = [{"role": "user", "content": "hi"}]


def repo_with(tmp_path: Path, config: str, alias: str) -> Path:
    files = {"prompts/ask.md": PROMPT.format(alias=alias), "llmkit.yaml": config}
    return init_repo(tmp_path / "repo", files).root


def ask(api: ApiEnv) -> httpx.Response:
    return api.post("/v1/chat/completions", json={"model": "ask", "messages": HI}, headers=api.run)


# -- a key the server lacks ----------------------------------------------------------------


def test_a_missing_provider_key_is_a_503_naming_the_variable(
    tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = upstreams
    monkeypatch.delenv("UNSET_PROVIDER_KEY", raising=False)
    config = (
        "models:\n"
        f"  remote: {{model: openai/model-a, api_base: '{a.url}',"
        " api_key_env: UNSET_PROVIDER_KEY}\n"
    )
    with running_api(repo_with(tmp_path, config, "remote")) as api:
        response = ask(api)
        logged = api.ws.runlog
        assert logged.flush()
        [row] = logged.list(prompt="ask")
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "provider_not_configured" and error["type"] == "server_error"
    assert "set UNSET_PROVIDER_KEY" in error["message"]
    assert "api_key_env: null" in error["message"]  # the way out for a server needing no key
    assert a.chat_requests == []
    assert (row["status"], row["http_status"]) == ("error", 503)


# -- an alias that needs no key ------------------------------------------------------------


def test_an_alias_with_api_key_env_null_sends_no_key(
    tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = upstreams
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = f"models:\n  local: {{model: openai/llama, api_base: '{a.url}', api_key_env: null}}\n"
    with running_api(repo_with(tmp_path, config, "local")) as api:
        response = ask(api)
        models = api.get("/v1/ui/models").json()
    assert response.status_code == 200, response.text
    [request] = a.chat_requests
    assert request.body["model"] == "llama"
    assert "authorization" not in request.headers
    [local] = [m for m in models if m["name"] == "local"]
    assert (local["key_env"], local["key_set"]) == (None, True)
    assert (local["provider_name"], local["provider_base_url"]) == ("openai", a.url)


def test_a_keyless_fallback_alias_sends_no_key_and_the_primary_keeps_its_own(
    tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = upstreams
    monkeypatch.setenv("KEY_A", "secret-a")
    config = (
        "models:\n"
        f"  primary: {{model: openai/model-a, api_base: '{a.url}', api_key_env: KEY_A,"
        " max_retries: 0, fallbacks: [local]}\n"
        f"  local: {{model: openai/model-b, api_base: '{b.url}', api_key_env: null}}\n"
    )
    a.enqueue(status=500, error="primary down")
    b.enqueue(content="from the local server")
    with running_api(repo_with(tmp_path, config, "primary")) as api:
        response = ask(api)
    assert response.status_code == 200, response.text
    [to_a] = a.chat_requests
    assert to_a.headers["authorization"] == "Bearer secret-a"
    [to_b] = b.chat_requests
    assert to_b.body["model"] == "model-b" and "authorization" not in to_b.headers


def test_api_key_env_null_without_an_api_base_is_a_configuration_error(tmp_path: Path) -> None:
    config = tmp_path / "llmkit.yaml"
    config.write_text("models:\n  nokey:\n    model: openai/gpt-4o-mini\n    api_key_env: null\n")
    with pytest.raises(ConfigError, match="alias 'nokey': api_key_env: null .* needs an api_base"):
        ModelRegistry(config).aliases()


# -- a wrong api_base ----------------------------------------------------------------------

# The wire transport (openai) and litellm (anthropic) each reach a server their own way.
MODELS = ["openai/some-model", "anthropic/claude-3-5-haiku"]


def call_to(model: str, api_base: str, monkeypatch: pytest.MonkeyPatch) -> providers.ProviderCall:
    monkeypatch.setenv("WRONG_BASE_KEY", "k")
    return providers.ProviderCall(
        model, HI, api_base=api_base, api_key_env="WRONG_BASE_KEY", max_retries=2
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("model", MODELS)
async def test_a_refused_connection_fails_at_once_naming_the_url(
    model: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    base = f"http://127.0.0.1:{free_port()}"
    caplog.set_level(logging.INFO, logger="llmkit.providers.dispatch")
    try:
        with pytest.raises(UpstreamUnreachable) as raised:
            await providers.complete(call_to(model, base, monkeypatch))
        with pytest.raises(UpstreamUnreachable):
            await anext(providers.stream(call_to(model, base, monkeypatch)))
    finally:
        await providers.aclose()
    error = raised.value
    assert (error.status, error.code) == (502, "upstream_unreachable")
    assert f"Cannot connect to {model.split('/')[0]} ({model}) at {base}/" in error.message
    assert "check api_base" in error.message
    # max_retries was 2: a refused connection is not retried.
    assert not [r for r in caplog.records if r.getMessage().startswith("retrying")]


@pytest.mark.asyncio
@pytest.mark.parametrize("model", MODELS)
async def test_a_404_names_the_url_that_answered_it(
    model: str, upstreams: tuple[FakeUpstream, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = upstreams
    base = a.url + "/wrong"  # the fake answers 404 for any path it does not serve
    try:
        with pytest.raises(NotFound) as raised:
            await providers.complete(call_to(model, base, monkeypatch))
    finally:
        await providers.aclose()
    assert raised.value.code == "model_not_found"
    [request] = a.history
    assert request.path.startswith("/v1/wrong/")
    url = f"{a.url.removesuffix('/v1')}{request.path}"
    assert f"POST {url} answered 404; check the model name and api_base" in raised.value.message


@pytest.mark.asyncio
async def test_an_unreachable_primary_moves_on_to_its_fallback(
    upstreams: tuple[FakeUpstream, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = upstreams
    monkeypatch.setenv("WRONG_BASE_KEY", "k")
    a.enqueue(content="from the fallback")
    call = providers.ProviderCall(
        "openai/model-x",
        HI,
        api_base=f"http://127.0.0.1:{free_port()}/v1",
        api_key_env="WRONG_BASE_KEY",
        fallbacks=[providers.Fallback("openai/model-y", a.url, "WRONG_BASE_KEY")],
    )
    try:
        response = await providers.complete(call)
    finally:
        await providers.aclose()
    assert response["choices"][0]["message"]["content"] == "from the fallback"
    assert [r.body["model"] for r in a.chat_requests] == ["model-y"]
