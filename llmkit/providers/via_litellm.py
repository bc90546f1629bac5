"""Every provider that does not speak OpenAI's wire format, through litellm.

litellm takes seconds and ~140 MiB to import, so it is imported on the first call that needs
it, never at module level. Its retries are off (the dispatcher retries every path the same
way) and its results are turned into plain dicts of OpenAI's shapes."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import ModuleType
from typing import Any

from llmkit.errors import LlmkitError, UpstreamError, UpstreamTimeout, UpstreamUnreachable
from llmkit.providers.base import (
    CONNECT_TIMEOUT_S,
    CONNECTION_CODE,
    MALFORMED_CODE,
    ProviderCall,
    error_for_status,
)
from llmkit.providers.pool import acquire
from llmkit.providers.transport import Chunks, Provider, Target

RESERVED_KEYS = frozenset({"model", "messages", "stream", "stream_options"})
# What litellm says when the upstream's answer held nothing to quote: "AnthropicException - ".
EMPTY_DETAIL = re.compile(r"\w*Exception -\s*\Z")
MESSAGE_KEYS = ("role", "content", "tool_calls", "refusal", "reasoning_content")

# litellm serves any provider it knows; these are the ones whose key variable llmkit names
# (for a missing key, and in /v1/ui/models) beside those the wire transport declares.
PROVIDERS = (
    Provider("anthropic", "ANTHROPIC_API_KEY", bare_prefixes=("claude-",)),
    Provider("gemini", "GEMINI_API_KEY"),
    Provider("mistral", "MISTRAL_API_KEY"),
    Provider("codestral", "CODESTRAL_API_KEY"),
    Provider("cohere", "COHERE_API_KEY"),
    Provider("cohere_chat", "COHERE_API_KEY"),
    Provider("azure", "AZURE_API_KEY"),
    Provider("azure_ai", "AZURE_AI_API_KEY"),
    Provider("huggingface", "HUGGINGFACE_API_KEY"),
    Provider("replicate", "REPLICATE_API_KEY"),
    Provider("ai21", "AI21_API_KEY"),
    Provider("voyage", "VOYAGE_API_KEY"),
    Provider("anyscale", "ANYSCALE_API_KEY"),
    Provider("cloudflare", "CLOUDFLARE_API_KEY"),
)

_import_lock = threading.Lock()
_litellm: ModuleType | None = None


def load_litellm() -> ModuleType:
    """Import and configure litellm once: no remote price fetch, no callbacks, no chatter."""
    global _litellm
    if _litellm is None:
        with _import_lock:
            if _litellm is None:
                os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                import litellm

                litellm.drop_params = True
                # httpx closes a connection when a stream is closed early or times out; the
                # aiohttp transport leaves it open, so the upstream keeps generating.
                litellm.disable_aiohttp_transport = True
                litellm.suppress_debug_info = True
                litellm.telemetry = False
                litellm.set_verbose = False
                litellm.callbacks = []
                litellm.success_callback = []
                litellm.failure_callback = []
                litellm.input_callback = []
                logging.getLogger("LiteLLM").setLevel(logging.ERROR)
                _litellm = litellm
    return _litellm


def _kwargs(target: Target, call: ProviderCall, timeout: float) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        key: value
        for key, value in call.params.items()
        if value is not None and key not in RESERVED_KEYS
    }
    import httpx  # litellm's own HTTP client, loaded with it

    kwargs.update(
        model=target.model,
        messages=call.messages,
        # The connect phase is bounded on its own: a wrong api_base fails in seconds at most.
        timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S)),
        num_retries=0,
        max_retries=0,
    )
    if target.api_base:
        kwargs["api_base"] = target.api_base
    if target.api_key:
        kwargs["api_key"] = target.api_key
    return kwargs


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it, outermost first (at most 10: litellm nests a few)."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def _caused_by_bad_json(exc: BaseException) -> bool:
    return any(isinstance(cause, json.JSONDecodeError) for cause in _chain(exc))


def _request_url(exc: BaseException) -> str | None:
    """The URL litellm sent the request to, from the httpx error under its own exception (whose
    `request` is a placeholder)."""
    import httpx

    for cause in _chain(exc):
        if isinstance(cause, httpx.HTTPError):
            try:
                return str(cause.request.url)
            except RuntimeError:  # an httpx error raised without a request
                continue
    return None


def _unreachable(target: Target, exc: BaseException) -> UpstreamUnreachable | None:
    """The error for a request that never reached the upstream (refused, unknown host, TLS, no
    connection within the connect timeout), else None. litellm reports these as a 500 or a
    connection error; the httpx error under it says which."""
    import httpx

    chain = _chain(exc)
    connect = next(
        (c for c in chain if isinstance(c, (httpx.ConnectError, httpx.ConnectTimeout))), None
    )
    if connect is None:
        return None
    if isinstance(connect, httpx.ConnectTimeout):
        reason = f"no connection within {CONNECT_TIMEOUT_S:g} s"
    else:
        reason = str(chain[-1]) or str(connect) or type(connect).__name__
    url = _request_url(exc) or target.api_base or f"{target.provider}'s default address"
    return UpstreamUnreachable(
        f"Cannot connect to {target.provider} ({target.model}) at {url}: {reason};"
        " check api_base and that the server is up"
    )


def _detail(exc: BaseException) -> str:
    message = str(getattr(exc, "message", None) or exc)
    # "litellm.BadRequestError: OpenAIException - boom" -> "OpenAIException - boom"
    if message.startswith("litellm.") and ": " in message:
        message = message.split(": ", 1)[1]
    if EMPTY_DETAIL.match(message):
        message += "(no details in the answer)"
    return message


def translate_error(target: Target, exc: Exception) -> LlmkitError:
    """litellm's exceptions (OpenAI SDK classes with `status_code`) as llmkit errors."""
    litellm = load_litellm()
    where = f"{target.provider} ({target.model})"
    if isinstance(exc, LlmkitError):
        return exc
    unreachable = _unreachable(target, exc)
    if unreachable is not None:
        return unreachable
    if isinstance(exc, litellm.Timeout):
        return UpstreamTimeout(f"{where} timed out: {_detail(exc)}")
    if isinstance(exc, litellm.APIConnectionError):
        return UpstreamError(f"{where}: connection failed: {_detail(exc)}", code=CONNECTION_CODE)
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        return UpstreamError(f"{where} failed: {type(exc).__name__}: {exc}", code=MALFORMED_CODE)
    if status >= 500 and _caused_by_bad_json(exc):
        return UpstreamError(f"{where} sent malformed JSON: {_detail(exc)}", code=MALFORMED_CODE)
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return error_for_status(
        status,
        model=target.model,
        provider=target.provider,
        detail=_detail(exc),
        key_env=target.key_env,
        headers=dict(headers) if headers is not None else None,
        url=_request_url(exc),
    )


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _usage(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    usage = {
        "prompt_tokens": raw.get("prompt_tokens") or 0,
        "completion_tokens": raw.get("completion_tokens") or 0,
        "total_tokens": raw.get("total_tokens") or 0,
    }
    for key in ("completion_tokens_details", "prompt_tokens_details"):
        if isinstance(raw.get(key), dict):
            usage[key] = _drop_none(raw[key])
    return usage


def _plain(
    raw: dict[str, Any],
    kind: str,
    part: str,
    clean: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """A completion or a chunk of one (`kind`, its `object`) as plain dicts: each choice's
    `part` (its message or delta) cleaned by `clean`, the ids and usage as litellm gave them."""
    choices = [
        {
            "index": choice.get("index", 0),
            part: clean(choice.get(part) or {}),
            "finish_reason": choice.get("finish_reason"),
        }
        for choice in raw.get("choices") or []
    ]
    out: dict[str, Any] = {
        "id": raw.get("id"),
        "object": kind,
        "created": raw.get("created"),
        "model": raw.get("model"),
        "choices": choices,
    }
    usage = _usage(raw.get("usage"))
    if usage is not None:
        out["usage"] = usage
    return out


def _clean_message(message: dict[str, Any]) -> dict[str, Any]:
    clean = {"role": message.get("role") or "assistant", "content": message.get("content")}
    for key in MESSAGE_KEYS[2:]:
        if message.get(key):
            clean[key] = _drop_none(message[key])
    return clean


def _clean_delta(delta: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_none(delta[k]) for k in MESSAGE_KEYS if delta.get(k) is not None}


def completion_dict(response: Any) -> dict[str, Any]:
    """A litellm ModelResponse as a plain `chat.completion` dict."""
    return _plain(response.model_dump(), "chat.completion", "message", _clean_message)


def chunk_dict(chunk: Any) -> dict[str, Any]:
    """A litellm stream chunk as a plain `chat.completion.chunk` dict."""
    return _plain(chunk.model_dump(), "chat.completion.chunk", "delta", _clean_delta)


def _upstream(target: Target) -> tuple[str, str]:
    """The pool key of a target (its base URL, else its provider) and its name in errors."""
    where = f"{target.provider} ({target.model})"
    return (target.api_base or target.provider), where


async def complete(target: Target, call: ProviderCall, timeout: float) -> dict[str, Any]:
    litellm = load_litellm()
    place = await acquire(*_upstream(target))
    try:
        response = await litellm.acompletion(**_kwargs(target, call, timeout))
    except Exception as exc:
        raise translate_error(target, exc) from exc
    finally:
        place.release()
    return completion_dict(response)


async def stream(
    target: Target, call: ProviderCall, timeout: float
) -> AsyncGenerator[dict[str, Any], None]:
    """Chunks as litellm yields them. Closing early closes litellm's stream, whose httpx
    response closes its connection (see load_litellm)."""
    litellm = load_litellm()
    kwargs = _kwargs(target, call, timeout)
    kwargs["stream"] = True
    kwargs["stream_options"] = {**(call.params.get("stream_options") or {}), "include_usage": True}
    place = await acquire(*_upstream(target))
    try:
        try:
            response = await litellm.acompletion(**kwargs)
        except Exception as exc:
            raise translate_error(target, exc) from exc
        try:
            while True:
                try:
                    chunk = await response.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise translate_error(target, exc) from exc
                yield chunk_dict(chunk)
        finally:
            await response.aclose()
    finally:
        place.release()


class LitellmTransport:
    """Every provider through litellm: asked last, it serves whatever no other transport
    claims. Importing this module does not import litellm; the first call does."""

    name = "litellm"
    local = False
    providers: tuple[Provider, ...] = PROVIDERS

    def serves(self, provider: str, api_base: str | None, *, forced: bool = False) -> bool:
        return True

    def base_url(self, provider: str, api_base: str | None) -> str | None:
        return None

    def complete(
        self, target: Target, call: ProviderCall, timeout: float
    ) -> Awaitable[dict[str, Any]]:
        return complete(target, call, timeout)

    def stream(self, target: Target, call: ProviderCall, timeout: float) -> Chunks:
        return stream(target, call, timeout)

    async def aclose(self) -> None:
        """Nothing to close: litellm's clients are its own."""


LITELLM = LitellmTransport()
