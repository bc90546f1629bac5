"""OpenAI's chat wire format over pooled aiohttp sessions: the direct path for OpenAI and
OpenAI-compatible servers, about a tenth of litellm's CPU per call.

Each call holds a place in the upstream's pool (`pool.acquire`) while it runs, streams until
they end. A stream closed early (the client left) closes its connection rather than reading the
rest of the answer, and no more than one event and one read of upstream data is held at a time.

aiohttp rather than httpx here: httpcore's pool scans every connection on each request, which
grows with concurrency and cost more CPU than the rest of the gateway together at 32 requests
in flight. One keep-alive session per (event loop, base URL): connections belong to the loop
that opened them, so each loop (the server's, or one per test) gets its own pool. aiohttp is
imported by the first call, not with the module: a server whose calls never take this path
(echo, litellm) starts without it, a third of a second of CPU sooner."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import weakref
from collections.abc import AsyncGenerator, Awaitable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from llmkit.errors import (
    BadRequest,
    LlmkitError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from llmkit.providers.base import (
    CONNECT_TIMEOUT_S,
    CONNECTION_CODE,
    MALFORMED_CODE,
    ProviderCall,
    error_detail,
    error_for_status,
)
from llmkit.providers.pool import acquire
from llmkit.providers.transport import Chunks, Provider, Target

if TYPE_CHECKING:
    import aiohttp

KEEPALIVE_S = 30.0
# One SSE event, and a whole non-stream answer (held to be parsed); OpenAI's events are a few
# hundred bytes. Larger ones are refused rather than buffered without end.
MAX_EVENT_BYTES = 1024 * 1024
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# At most this much of a stream is taken from aiohttp's buffer at a time (readany() would join
# all it holds, a few hundred KB for a stream whose client is slow).
READ_BYTES = 32 * 1024
READ_BUFFER_BYTES = 16 * 1024
RESERVED_KEYS = frozenset({"model", "messages", "stream", "stream_options"})

# Bare model names litellm sends to OpenAI.
OPENAI_BARE_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt-", "ft:gpt-")
OLLAMA = "http://localhost:11434"
# Ollama serves its OpenAI-compatible API under /v1 of its base.
OLLAMA_PROVIDERS = ("ollama", "ollama_chat")

PROVIDERS = (
    # Reached without any configuration.
    Provider(
        "openai",
        "OPENAI_API_KEY",
        "https://api.openai.com/v1",
        ("OPENAI_BASE_URL", "OPENAI_API_BASE"),
        bare_prefixes=OPENAI_BARE_PREFIXES,
    ),
    Provider(
        "openrouter", "OPENROUTER_API_KEY", "https://openrouter.ai/api/v1", ("OPENROUTER_API_BASE",)
    ),
    Provider("deepseek", "DEEPSEEK_API_KEY", "https://api.deepseek.com/v1", ("DEEPSEEK_API_BASE",)),
    Provider("ollama", None, OLLAMA, ("OLLAMA_API_BASE",)),
    Provider("ollama_chat", None, OLLAMA, ("OLLAMA_API_BASE",)),
    # OpenAI-compatible servers, reached here when the call gives an api_base (else litellm).
    Provider("custom_openai", "OPENAI_API_KEY"),
    Provider("openai_like"),
    Provider("hosted_vllm"),
    Provider("lm_studio"),
    Provider("llamafile"),
    Provider("together_ai", "TOGETHERAI_API_KEY"),
    Provider("groq", "GROQ_API_KEY"),
    Provider("fireworks_ai", "FIREWORKS_API_KEY"),
    Provider("deepinfra", "DEEPINFRA_API_KEY"),
    Provider("xai", "XAI_API_KEY"),
    Provider("cerebras", "CEREBRAS_API_KEY"),
    Provider("perplexity", "PERPLEXITYAI_API_KEY"),
    Provider("nvidia_nim", "NVIDIA_NIM_API_KEY"),
)

_sessions: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, aiohttp.ClientSession]
] = weakref.WeakKeyDictionary()


def session_for(base_url: str) -> aiohttp.ClientSession:
    import aiohttp

    loop = asyncio.get_running_loop()
    per_loop = _sessions.get(loop)
    if per_loop is None:
        per_loop = _sessions[loop] = {}
    session = per_loop.get(base_url)
    if session is None or session.closed:
        # No limit of aiohttp's own: calls are counted by `pool`, whose wait has a deadline and
        # an error of its own; aiohttp would queue them unseen, bounded only by the call timeout.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S, ttl_dns_cache=300)
        # trust_env stays off: it reads ~/.netrc on every request (which also clashes with our
        # Authorization header); the proxy variables are read once instead, in _proxy_for.
        # A small read buffer: what a stream holds for a client that is slower than its upstream
        # is mostly this buffer (and one read from the socket on top of it).
        session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, read_bufsize=READ_BUFFER_BYTES
        )
        per_loop[base_url] = session
    return session


@functools.lru_cache(maxsize=256)
def _proxy_for(base_url: str) -> str | None:
    """The proxy from HTTP(S)_PROXY / ALL_PROXY for this base URL, unless NO_PROXY covers it."""
    parts = urlsplit(base_url)
    proxies = getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or (parts.hostname and proxy_bypass(parts.hostname)):
        return None
    return proxy


async def aclose() -> None:
    """Close the pooled sessions of the running loop."""
    per_loop = _sessions.pop(asyncio.get_running_loop(), {})
    for session in per_loop.values():
        await session.close()


def _payload(target: Target, call: ProviderCall, *, streaming: bool) -> bytes:
    payload: dict[str, Any] = {"model": target.upstream_model, "messages": call.messages}
    for key, value in call.params.items():
        if value is not None and key not in RESERVED_KEYS:
            payload[key] = value
    if streaming:
        payload["stream"] = True
        asked = call.params.get("stream_options") or {}
        payload["stream_options"] = {**asked, "include_usage": True}
    return json.dumps(payload).encode()


def _headers(target: Target, *, streaming: bool) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if streaming else "application/json",
    }
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    return headers


def _status_error(
    target: Target, status: int, text: str, headers: Mapping[str, str]
) -> LlmkitError:
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    return error_for_status(
        status,
        model=target.model,
        provider=target.provider,
        detail=error_detail(payload, text),
        key_env=target.key_env,
        headers=headers,
        url=_url(target),
    )


def _body_error(target: Target, payload: dict[str, Any]) -> LlmkitError:
    """An error delivered inside a 200 body or an SSE event (OpenRouter does this)."""
    error = payload.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 502
    return error_for_status(
        status,
        model=target.model,
        provider=target.provider,
        detail=error_detail(payload, str(error)),
        key_env=target.key_env,
    )


def _url(target: Target) -> str:
    return f"{target.base_url}/chat/completions"


def _transport_error(target: Target, exc: BaseException) -> LlmkitError:
    import aiohttp

    where = f"{target.provider} ({target.model}) at {target.base_url}"
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Refused, unknown host, TLS: os_error holds the reason without aiohttp's decoration.
        reason = str(exc.os_error) or reason
        return UpstreamUnreachable(
            f"Cannot connect to {target.provider} ({target.model}) at {_url(target)}: {reason};"
            " check api_base and that the server is up"
        )
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamUnreachable(
            f"Cannot connect to {target.provider} ({target.model}) at {_url(target)}: no"
            f" connection within {CONNECT_TIMEOUT_S:g} s; check api_base and that the"
            " server is up"
        )
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout(f"{where} timed out: {reason}")
    return UpstreamError(f"{where}: connection failed: {reason}", code=CONNECTION_CODE)


def _connect_timeout(timeout: float) -> float:
    return min(timeout, CONNECT_TIMEOUT_S)


def _where(target: Target) -> str:
    return f"{target.provider} ({target.model}) at {target.base_url}"


def _too_large(target: Target, what: str, limit: int) -> UpstreamError:
    return UpstreamError(
        f"{target.provider} ({target.model}) sent {what} larger than {limit} bytes",
        code=MALFORMED_CODE,
    )


async def _read_capped(target: Target, response: aiohttp.ClientResponse) -> bytes:
    if (response.content_length or 0) > MAX_ANSWER_BYTES:
        raise _too_large(target, "an answer", MAX_ANSWER_BYTES)
    parts: list[bytes] = []
    size = 0
    async for data in response.content.iter_any():
        size += len(data)
        if size > MAX_ANSWER_BYTES:
            raise _too_large(target, "an answer", MAX_ANSWER_BYTES)
        parts.append(data)
    return b"".join(parts)


def _malformed(target: Target, what: str) -> UpstreamError:
    return UpstreamError(
        f"{target.provider} ({target.model}) sent malformed JSON: {what[:200]!r}",
        code=MALFORMED_CODE,
    )


async def complete(target: Target, call: ProviderCall, timeout: float) -> dict[str, Any]:
    import aiohttp

    assert target.base_url is not None
    session = session_for(target.base_url)
    place = await acquire(target.base_url, _where(target))
    try:
        async with session.post(
            _url(target),
            data=_payload(target, call, streaming=False),
            headers=_headers(target, streaming=False),
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=_connect_timeout(timeout)),
            proxy=_proxy_for(target.base_url),
        ) as response:
            body = await _read_capped(target, response)
            status, headers = response.status, response.headers
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _transport_error(target, exc) from exc
    finally:
        place.release()
    text = body.decode("utf-8", "replace")
    if status >= 400:
        raise _status_error(target, status, text, headers)
    try:
        data = json.loads(body)
    except ValueError:
        raise _malformed(target, text) from None
    if not isinstance(data, dict):
        raise _malformed(target, text)
    if not isinstance(data.get("choices"), list):
        if "error" in data:
            raise _body_error(target, data)
        raise _malformed(target, text)
    return data


async def stream(
    target: Target, call: ProviderCall, timeout: float
) -> AsyncGenerator[dict[str, Any], None]:
    """Chunks as the server sends them. `timeout` bounds connecting and each wait for data."""
    import aiohttp

    assert target.base_url is not None
    session = session_for(target.base_url)
    place = await acquire(target.base_url, _where(target))
    done = False
    try:
        async with session.post(
            _url(target),
            data=_payload(target, call, streaming=True),
            headers=_headers(target, streaming=True),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=_connect_timeout(timeout), sock_read=timeout
            ),
            proxy=_proxy_for(target.base_url),
        ) as response:
            if response.status >= 400:
                text = (await _read_capped(target, response)).decode("utf-8", "replace")
                raise _status_error(target, response.status, text, response.headers)
            pending = b""
            ended = False
            try:
                # One read at a time, split into lines (several events a read, as a rule).
                while not ended:
                    data = await response.content.read(READ_BYTES)
                    if not data:  # the end; a last line without its newline counts too
                        ended, data = True, b"\n"
                    buffer = pending + data if pending else data
                    lines = buffer.split(b"\n")
                    pending = lines.pop()
                    too_long = len(buffer) > MAX_EVENT_BYTES  # then look at each line
                    if too_long and max(map(len, [pending, *lines])) > MAX_EVENT_BYTES:
                        raise _too_large(target, "a stream event", MAX_EVENT_BYTES)
                    for line in lines:
                        # Read on past [DONE] to the end of the body, so the connection returns
                        # to the pool.
                        if done or not line.startswith(b"data:"):
                            continue
                        event = line[5:].strip()
                        if event == b"[DONE]":
                            done = True
                            continue
                        yield _event(target, event)
            except BaseException:
                # Left early (the client went away, or a bad event): close the connection so
                # the upstream stops generating, instead of reading the rest of the answer.
                response.close()
                raise
    except (TimeoutError, aiohttp.ClientError) as exc:
        if done:
            return
        raise _transport_error(target, exc) from exc
    finally:
        place.release()
    if not done:
        raise UpstreamError(
            f"{target.provider} ({target.model}) closed the stream before it finished",
            code=CONNECTION_CODE,
        )


def _event(target: Target, data: bytes) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except UnicodeDecodeError:
        return _event(target, data.decode("utf-8", "replace").encode())
    except ValueError:
        raise _malformed(target, data.decode("utf-8", "replace")) from None
    if not isinstance(chunk, dict):
        raise _malformed(target, data.decode("utf-8", "replace"))
    if "error" in chunk and not chunk.get("choices"):
        raise _body_error(target, chunk)
    return chunk


class WireTransport:
    """OpenAI's wire format: the providers above, and any provider at an explicit api_base
    when a call forces `via="wire"`."""

    name = "wire"
    local = False
    providers: tuple[Provider, ...] = PROVIDERS

    def __init__(self) -> None:
        self._known = {provider.name: provider for provider in PROVIDERS}

    def serves(self, provider: str, api_base: str | None, *, forced: bool = False) -> bool:
        known = self._known.get(provider)
        if known is not None and (known.base_url or api_base):
            return True
        if forced and not api_base:
            raise BadRequest(
                f"Provider {provider} has no OpenAI-compatible base URL: "
                "give api_base, or drop via='wire'"
            )
        return forced

    def base_url(self, provider: str, api_base: str | None) -> str:
        if api_base:
            base = api_base
        else:
            known = self._known[provider]
            set_envs = (os.environ[e] for e in known.base_url_envs if os.environ.get(e))
            base = next(set_envs, known.base_url or "")
        base = base.rstrip("/")
        if provider in OLLAMA_PROVIDERS and not base.endswith("/v1"):
            base += "/v1"
        return base

    def complete(
        self, target: Target, call: ProviderCall, timeout: float
    ) -> Awaitable[dict[str, Any]]:
        return complete(target, call, timeout)

    def stream(self, target: Target, call: ProviderCall, timeout: float) -> Chunks:
        return stream(target, call, timeout)

    async def aclose(self) -> None:
        await aclose()


WIRE = WireTransport()
