"""`complete` and `stream`: resolve each model to its transport, retry transient failures
with backoff, then move on to the fallback models. The same policy holds on every transport.

- Retried: 429, 5xx, lost connections, timeouts; never 400/401/404 or malformed answers.
- An upstream that cannot be reached at all (`UpstreamUnreachable`: refused, unknown host, no
  connection within `base.CONNECT_TIMEOUT_S`) is not retried: it fails at once, naming the URL
  tried. Its fallback models, which may sit elsewhere, are tried.
- A full upstream pool (`UpstreamPoolFull`, after the pool's own short wait) is not retried on
  the same model: the places are held by calls that may run for minutes. A fallback model,
  which may sit on another upstream, is tried.
- Waits: exponential from `call.backoff_base` (doubling, capped at 8 s, jittered), or the
  server's retry-after / retry-after-ms (honoured up to 30 s; a longer one than the time left
  fails at once with the RateLimited error).
- Budget: non-stream, `call.timeout` covers all attempts on one model (each fallback model
  gets its own); stream, `call.timeout` bounds connecting and each wait between chunks, and
  retries and fallbacks happen only before the first chunk is handed out.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

from llmkit.errors import (
    LlmkitError,
    UpstreamError,
    UpstreamPoolFull,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from llmkit.providers.base import CONNECTION_CODE, Fallback, ProviderCall, is_transient
from llmkit.providers.registry import TRANSPORTS
from llmkit.providers.routing import provider_of, resolve_target
from llmkit.providers.transport import Chunks, Target

log = logging.getLogger(__name__)

BACKOFF_CAP_S = 8.0
RETRY_AFTER_CAP_S = 30.0
# Not retried on the same model, but a fallback (maybe on another upstream) is tried.
MOVE_ON = (UpstreamPoolFull, UpstreamUnreachable)

T = TypeVar("T")


def _targets(call: ProviderCall) -> list[tuple[str, Callable[[], Target]]]:
    """(model, how to resolve it) for the primary and each fallback, resolved only when tried
    (a fallback's missing key matters only if it is reached). A plain-string fallback of the
    primary's provider shares the call's api_base and key; a Fallback brings its own."""
    primary_provider = provider_of(call.model)
    targets: list[tuple[str, Callable[[], Target]]] = [
        (call.model, partial(resolve_target, call, call.model, inherit=True))
    ]
    for fallback in call.fallbacks:
        if isinstance(fallback, Fallback):
            own = replace(
                call,
                api_base=fallback.api_base,
                api_key=None,
                api_key_env=fallback.api_key_env,
                keyless=fallback.keyless,
            )
            targets.append(
                (fallback.model, partial(resolve_target, own, fallback.model, inherit=True))
            )
        else:
            inherit = provider_of(fallback) == primary_provider
            targets.append((fallback, partial(resolve_target, call, fallback, inherit=inherit)))
    return targets


def retry_after_seconds(headers: dict[str, str]) -> float | None:
    """The wait a server asked for, from retry-after-ms or retry-after (seconds or HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lowered:
        try:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _retry_delay(error: LlmkitError, attempt: int, base: float, time_left: float) -> float | None:
    """Seconds to wait before the next attempt, or None when there is no time for one."""
    hinted = retry_after_seconds(error.headers)
    if hinted is not None:
        return min(hinted, RETRY_AFTER_CAP_S) if hinted < time_left else None
    delay = min(BACKOFF_CAP_S, base * 2**attempt) * random.uniform(0.5, 1.0)
    return delay if delay < time_left else None


async def _attempt_complete(target: Target, call: ProviderCall, remaining: float) -> dict[str, Any]:
    try:
        async with asyncio.timeout(remaining):
            return await target.transport.complete(target, call, remaining)
    except TimeoutError:
        raise UpstreamTimeout(
            f"{target.provider} ({target.model}) did not answer within {call.timeout:g} s"
        ) from None


async def _attempt_stream(
    target: Target, call: ProviderCall, remaining: float
) -> tuple[Chunks, dict[str, Any]]:
    """A started stream and its first chunk: failures up to that chunk can still be retried."""
    chunks = target.transport.stream(target, call, call.timeout)
    try:
        return chunks, await anext(chunks)
    except StopAsyncIteration:
        await chunks.aclose()
        raise UpstreamError(
            f"{target.provider} ({target.model}) sent an empty stream", code=CONNECTION_CODE
        ) from None
    except BaseException:
        await chunks.aclose()
        raise


Attempt = Callable[[Target, ProviderCall, float], Awaitable[T]]


async def _with_retries(attempt: Attempt[T], target: Target, call: ProviderCall) -> T:
    """`attempt` on one model, retried on transient errors within the call's time budget."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + call.timeout
    retries = 0
    while True:
        try:
            return await attempt(target, call, deadline - loop.time())
        except LlmkitError as error:
            if not is_transient(error) or retries >= call.max_retries:
                raise
            delay = _retry_delay(error, retries, call.backoff_base, deadline - loop.time())
            if delay is None:
                raise
            log.info("retrying %s in %.2f s after: %s", target.model, delay, error.message)
        await asyncio.sleep(delay)
        retries += 1


async def _first_answering(call: ProviderCall, attempt: Attempt[T]) -> T:
    """`attempt` on the primary model, then on each fallback while failures are transient."""
    *earlier, (_, last) = _targets(call)
    for model, target in earlier:
        try:
            return await _with_retries(attempt, target(), call)
        except LlmkitError as error:
            if not (is_transient(error) or isinstance(error, MOVE_ON)):
                raise
            log.warning("%s failed (%s); trying fallback", model, error.message)
    return await _with_retries(attempt, last(), call)


async def complete(call: ProviderCall) -> dict[str, Any]:
    """One `chat.completion` dict from the first model (primary, then fallbacks) that answers."""
    return await _first_answering(call, _attempt_complete)


async def stream(call: ProviderCall) -> AsyncGenerator[dict[str, Any], None]:
    """`chat.completion.chunk` dicts in order, usage on the last one when the provider gives it.
    Closing the iterator early closes the upstream connection."""
    chunks, first = await _first_answering(call, _attempt_stream)
    try:
        yield first
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()


async def aclose() -> None:
    """Close the pooled HTTP clients of the running event loop (server shutdown)."""
    await TRANSPORTS.aclose()
