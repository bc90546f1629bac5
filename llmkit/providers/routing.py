"""Which provider a model string names, which key it needs, and which transport serves it.

The tables (key variables, bare model names, base URLs) are declared by the transports
themselves and merged by the registry; this module reads them."""

from __future__ import annotations

import os

from llmkit.errors import ProviderNotConfigured
from llmkit.providers.base import ProviderCall
from llmkit.providers.pricing import provider_in_price_table
from llmkit.providers.registry import TRANSPORTS
from llmkit.providers.transport import Target

__all__ = [
    "Target",
    "key_env_of",
    "key_is_set",
    "provider_of",
    "resolve_target",
    "split_model",
]


def split_model(model: str) -> tuple[str, str]:
    """(prefix, rest) of "prefix/rest"; ("", model) for a bare name."""
    prefix, sep, rest = model.partition("/")
    return (prefix, rest) if sep else ("", model)


def provider_of(model: str) -> str:
    """The provider a litellm model string names: "echo", "openai", "anthropic", ...

    A prefixed name is taken at its word; a bare name is matched against the names and
    prefixes the transports declare, then against litellm's price table; "unknown" when
    nothing claims it."""
    prefix, _ = split_model(model)
    if prefix:
        return prefix
    named = TRANSPORTS.bare_names.get(model)
    if named is not None:
        return named
    if model.startswith(TRANSPORTS.any_bare_prefix):
        for start, provider in TRANSPORTS.bare_prefixes:
            if model.startswith(start):
                return provider
    return provider_in_price_table(model) or "unknown"


def key_env_of(model: str) -> str | None:
    """The environment variable holding the provider's key; None when it needs none that we know."""
    return TRANSPORTS.key_envs.get(provider_of(model))


def key_is_set(model: str, api_key_env: str | None = None) -> bool:
    """Whether the key the model needs is present (always True for keyless providers)."""
    env = api_key_env or key_env_of(model)
    return env is None or bool(os.environ.get(env))


def missing_key(
    provider: str, key_env: str, model: str, api_base: str | None
) -> ProviderNotConfigured:
    """The error for a key the environment lacks: the variable to set, and for a server of
    one's own (an api_base) how to send no key at all."""
    keyless = (
        f"; if the server at {api_base} needs no key, give its alias `api_key_env: null`"
        " in llmkit.yaml"
        if api_base
        else ""
    )
    return ProviderNotConfigured(
        f"No API key for {provider}: set {key_env} in the environment llmkit runs in"
        f" (model {model}){keyless}",
        provider=provider,
        key_env=key_env,
    )


def resolve_target(call: ProviderCall, model: str, *, inherit: bool) -> Target:
    """Resolve one model of a call. `inherit`: the call's api_base and key apply to this model
    (the primary, and fallbacks of the same provider). A key the environment lacks is the
    server's configuration problem (ProviderNotConfigured), never the caller's."""
    provider = provider_of(model)
    local = TRANSPORTS.local.get(provider)
    if local is not None:
        return Target(model, provider, local, model, None, None, None, None)
    api_base = call.api_base if inherit else None
    if inherit and call.keyless:
        key_env, api_key = None, None
    else:
        key_env = (call.api_key_env if inherit else None) or TRANSPORTS.key_envs.get(provider)
        explicit_key = call.api_key if inherit else None
        api_key = explicit_key or (os.environ.get(key_env) if key_env else None)
    if key_env and not api_key:
        raise missing_key(provider, key_env, model, api_base)
    transport = TRANSPORTS.route(provider, api_base, call.via)
    _, rest = split_model(model)
    base_url = transport.base_url(provider, api_base)
    return Target(model, provider, transport, rest, base_url, api_base, api_key, key_env)
