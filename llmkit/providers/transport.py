"""The transport contract: what one way of reaching models declares and does.

A transport is one module holding one object that satisfies `Transport`, registered in
`registry.py`. It declares the providers it knows (the variable holding each one's key, its
default base URL, the bare model names that mean it) and says, for each call, whether it serves
a provider; `routing` turns a model string into a `Target` on the first transport that does,
and `dispatch` applies the same retry and fallback policy whichever transport answers.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmkit.providers.base import ProviderCall

Chunks = AsyncGenerator[dict[str, Any], None]


@dataclass(frozen=True)
class Provider:
    """A provider as a transport knows it.

    `key_env`: the variable holding its API key (None: it needs none). `base_url`: where it
    answers when the call gives no api_base (None: only with an api_base), overridden by the
    first of `base_url_envs` that is set. `bare_names` and `bare_prefixes`: model names written
    without a "provider/" prefix that mean this provider ("echo"; "gpt-", "claude-")."""

    name: str
    key_env: str | None = None
    base_url: str | None = None
    base_url_envs: tuple[str, ...] = ()
    bare_names: tuple[str, ...] = ()
    bare_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """A model string resolved to the transport that serves it and the credentials it uses.
    `upstream_model` is the name without its provider prefix."""

    model: str
    provider: str
    transport: Transport = field(repr=False)
    upstream_model: str
    base_url: str | None
    api_base: str | None
    api_key: str | None
    key_env: str | None

    @property
    def route(self) -> str:
        """The name of the transport that serves the model."""
        return self.transport.name


class Transport(Protocol):
    """One way of reaching models.

    `name` is what `ProviderCall.via` forces and `Target.route` reports. A `local` transport
    runs in-process: its providers need no key and no base URL, and it gets the whole model
    string (`echo`). `complete` and `stream` get the time left in seconds: `complete` answers one
    `chat.completion` dict, `stream` yields `chat.completion.chunk` dicts (usage on the last)
    and closes its upstream connection when closed early. Failures are `LlmkitError`s
    (`base.error_for_status` maps HTTP statuses), so the dispatcher can tell which to retry.
    """

    name: str
    local: bool
    providers: tuple[Provider, ...]

    def serves(self, provider: str, api_base: str | None, *, forced: bool = False) -> bool:
        """Whether this transport takes calls to `provider` (at `api_base`, when given).
        `forced`: the call names this transport in `via`; serve what it can at all, and raise
        BadRequest saying what is missing when it cannot."""
        ...

    def base_url(self, provider: str, api_base: str | None) -> str | None:
        """The base URL calls to `provider` go to (None when the transport needs none)."""
        ...

    def complete(
        self, target: Target, call: ProviderCall, timeout: float
    ) -> Awaitable[dict[str, Any]]: ...

    def stream(self, target: Target, call: ProviderCall, timeout: float) -> Chunks: ...

    async def aclose(self) -> None:
        """Close what the transport pools for the running event loop (server shutdown)."""
        ...
