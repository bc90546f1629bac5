"""The provider contract: what a call carries, what usage is, and how upstream failures become
llmkit errors. Every path (echo, OpenAI wire, litellm) speaks these types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmkit.errors import (
    BadRequest,
    LlmkitError,
    NotFound,
    RateLimited,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)

# The name of a registered transport ("echo", "wire", "litellm", ...): see registry.py.
Via = str

# UpstreamError codes; a malformed answer is not worth retrying, a lost connection is.
MALFORMED_CODE = "upstream_malformed_response"
CONNECTION_CODE = "upstream_connection_error"
RETRY_AFTER_HEADERS = ("retry-after", "retry-after-ms")
# How long an upstream may take to accept a connection, whatever the call's timeout: a server
# that is up accepts within milliseconds, and a wrong api_base must not hold a call for minutes.
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Fallback:
    """A fallback model with its own api_base and key variable (a model alias's settings);
    `keyless`: the alias sends no key (`api_key_env: null`)."""

    model: str
    api_base: str | None = None
    api_key_env: str | None = None
    keyless: bool = False


@dataclass
class ProviderCall:
    """One request to a model.

    `via` forces a transport by its name: "litellm" sends any model through litellm (tests use
    it to run the contract over litellm against the fake upstream), "wire" sends it over the
    pooled OpenAI wire client (needs a known base URL or `api_base`); None routes by model.
    `backoff_base` is the first retry wait in seconds (doubling per attempt, capped at 8 s).
    `keyless`: send no key at all, not even the provider's usual variable (an alias with
    `api_key_env: null`: a server of one's own at `api_base` that needs none).
    """

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    api_base: str | None = None
    api_key: str | None = None
    api_key_env: str | None = None
    timeout: float = 600.0
    max_retries: int = 2
    fallbacks: list[str | Fallback] = field(default_factory=list)
    via: Via | None = None
    backoff_base: float = 0.25
    keyless: bool = False


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0


# No call spends 2**53 tokens; a count past it (or below 0) is an upstream's garbage, and would
# overflow the float arithmetic of costs.
MAX_TOKENS_COUNTED = 2**53


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_TOKENS_COUNTED:
        return value
    return 0


def usage_of(response_or_last_chunk: dict[str, Any]) -> Usage:
    """Token counts of a completion or of the final stream chunk; 0 for whatever is absent."""
    usage = response_or_last_chunk.get("usage")
    if not isinstance(usage, dict):
        return Usage()
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return Usage(
        input_tokens=_int(usage.get("prompt_tokens", usage.get("input_tokens"))),
        output_tokens=_int(usage.get("completion_tokens", usage.get("output_tokens"))),
        reasoning_tokens=_int(reasoning),
    )


def retry_headers(headers: Any) -> dict[str, str]:
    """The retry-after headers worth passing on, from any mapping of response headers."""
    if headers is None:
        return {}
    found: dict[str, str] = {}
    for name in RETRY_AFTER_HEADERS:
        value = headers.get(name)
        if value is not None:
            found[name] = str(value)
    return found


def error_for_status(
    status: int,
    *,
    model: str,
    provider: str,
    detail: str,
    key_env: str | None,
    headers: Mapping[str, str] | None = None,
    url: str | None = None,
) -> LlmkitError:
    """The llmkit error for an upstream HTTP error status; `url`, the address that answered, is
    named for a 404, which most often means a wrong api_base rather than a wrong model."""
    where = f"{provider} ({model})"
    detail = detail.strip() or f"HTTP {status}"
    kept = retry_headers(headers or {})
    if status in (401, 403):
        env = f"; check {key_env}" if key_env else ""
        return Unauthorized(
            f"{provider} rejected the API key for model {model} (HTTP {status}){env}: {detail}"
        )
    if status == 404:
        at = f" (POST {url} answered 404; check the model name and api_base)" if url else ""
        return NotFound(
            f"Model {model} not found at {provider}{at}: {detail}", code="model_not_found"
        )
    if status == 408:
        return UpstreamTimeout(f"{where} timed out (HTTP 408): {detail}", headers=kept)
    if status == 429:
        return RateLimited(f"{where} is rate limiting requests: {detail}", headers=kept)
    if 400 <= status < 500:
        return BadRequest(f"{where} rejected the request (HTTP {status}): {detail}")
    return UpstreamError(f"{where} failed (HTTP {status}): {detail}", headers=kept)


def error_detail(payload: Any, fallback: str) -> str:
    """The message inside an OpenAI-style error body, else the raw text (shortened)."""
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if payload.get("message"):
            return str(payload["message"])
    return fallback[:500]


def is_transient(error: LlmkitError) -> bool:
    """Worth retrying, or moving on to a fallback model: 429, 5xx, lost connections, timeouts.
    An upstream that cannot be reached at all is not (see `UpstreamUnreachable`)."""
    if isinstance(error, (RateLimited, UpstreamTimeout)):
        return True
    if isinstance(error, UpstreamUnreachable):
        return False
    return isinstance(error, UpstreamError) and error.code != MALFORMED_CODE
