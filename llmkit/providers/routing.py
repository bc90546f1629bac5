"""Which provider a model string names, which key it needs, and which path serves it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from llmkit.errors import BadRequest, Unauthorized
from llmkit.providers.base import ProviderCall
from llmkit.providers.pricing import provider_in_price_table

Route = Literal["echo", "wire", "litellm"]

ECHO = "echo"

# Bare model names litellm sends to OpenAI.
OPENAI_BARE_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt-", "ft:gpt-")

# Providers reached over the OpenAI wire format without any configuration.
WIRE_DEFAULT_BASES: dict[str, tuple[str, tuple[str, ...]]] = {
    # provider: (default base URL, env vars that override it, first wins)
    "openai": ("https://api.openai.com/v1", ("OPENAI_BASE_URL", "OPENAI_API_BASE")),
    "openrouter": ("https://openrouter.ai/api/v1", ("OPENROUTER_API_BASE",)),
    "deepseek": ("https://api.deepseek.com/v1", ("DEEPSEEK_API_BASE",)),
    "ollama": ("http://localhost:11434", ("OLLAMA_API_BASE",)),
    "ollama_chat": ("http://localhost:11434", ("OLLAMA_API_BASE",)),
}

# Ollama serves its OpenAI-compatible API under /v1 of its base.
OLLAMA_PROVIDERS = ("ollama", "ollama_chat")

# Providers that speak OpenAI's wire format when given an explicit api_base.
OPENAI_COMPATIBLE = frozenset({
    "openai", "custom_openai", "openai_like", "hosted_vllm", "lm_studio", "together_ai",
    "groq", "fireworks_ai", "deepinfra", "xai", "cerebras", "perplexity", "nvidia_nim",
    "llamafile", "openrouter", "deepseek", "ollama", "ollama_chat",
})

KEY_ENVS: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "custom_openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "codestral": "CODESTRAL_API_KEY",
    "cohere": "COHERE_API_KEY",
    "cohere_chat": "COHERE_API_KEY",
    "groq": "GROQ_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "fireworks_ai": "FIREWORKS_API_KEY",
    "deepinfra": "DEEPINFRA_API_KEY",
    "xai": "XAI_API_KEY",
    "cerebras": "CEREBRAS_API_KEY",
    "perplexity": "PERPLEXITYAI_API_KEY",
    "nvidia_nim": "NVIDIA_NIM_API_KEY",
    "azure": "AZURE_API_KEY",
    "azure_ai": "AZURE_AI_API_KEY",
    "huggingface": "HUGGINGFACE_API_KEY",
    "replicate": "REPLICATE_API_KEY",
    "ai21": "AI21_API_KEY",
    "voyage": "VOYAGE_API_KEY",
    "anyscale": "ANYSCALE_API_KEY",
    "cloudflare": "CLOUDFLARE_API_KEY",
}

# Bare model names that are not OpenAI's and not in the price table's lookup.
BARE_PREFIXES: tuple[tuple[str, str], ...] = (("claude-", "anthropic"),)


def split_model(model: str) -> tuple[str, str]:
    """(prefix, rest) of "prefix/rest"; ("", model) for a bare name."""
    prefix, sep, rest = model.partition("/")
    return (prefix, rest) if sep else ("", model)


def provider_of(model: str) -> str:
    """The provider a litellm model string names: "echo", "openai", "anthropic", ...

    A prefixed name is taken at its word; a bare name is matched against OpenAI's families,
    then against litellm's price table; "unknown" when nothing claims it."""
    prefix, _ = split_model(model)
    if prefix:
        return prefix
    if model == ECHO:
        return ECHO
    if model.startswith(OPENAI_BARE_PREFIXES):
        return "openai"
    for start, provider in BARE_PREFIXES:
        if model.startswith(start):
            return provider
    return provider_in_price_table(model) or "unknown"


def key_env_of(model: str) -> str | None:
    """The environment variable holding the provider's key; None when it needs none that we know."""
    return KEY_ENVS.get(provider_of(model))


def key_is_set(model: str, api_key_env: str | None = None) -> bool:
    """Whether the key the model needs is present (always True for keyless providers)."""
    env = api_key_env or key_env_of(model)
    return env is None or bool(os.environ.get(env))


@dataclass(frozen=True)
class Target:
    """A model string resolved to the path that serves it and the credentials it uses."""

    model: str
    provider: str
    route: Route
    upstream_model: str
    base_url: str | None
    api_base: str | None
    api_key: str | None
    key_env: str | None


def resolve_target(call: ProviderCall, model: str, *, inherit: bool) -> Target:
    """Resolve one model of a call. `inherit`: the call's api_base and key apply to this model
    (the primary, and fallbacks of the same provider)."""
    provider = provider_of(model)
    if provider == ECHO:
        return Target(model, ECHO, "echo", model, None, None, None, None)
    api_base = call.api_base if inherit else None
    key_env = (call.api_key_env if inherit else None) or KEY_ENVS.get(provider)
    explicit_key = call.api_key if inherit else None
    api_key = explicit_key or (os.environ.get(key_env) if key_env else None)
    if key_env and not api_key:
        raise Unauthorized(f"No API key for {provider}: set {key_env}")
    route = _route(call, provider, api_base)
    _, rest = split_model(model)
    base_url = _wire_base(provider, api_base) if route == "wire" else None
    return Target(model, provider, route, rest, base_url, api_base, api_key, key_env)


def _route(call: ProviderCall, provider: str, api_base: str | None) -> Route:
    if call.via == "litellm":
        return "litellm"
    compatible = bool(api_base) and provider in OPENAI_COMPATIBLE
    wire_capable = provider in WIRE_DEFAULT_BASES or compatible
    if call.via == "wire" and not (wire_capable or api_base):
        raise BadRequest(
            f"Provider {provider} has no OpenAI-compatible base URL: "
            "give api_base, or drop via='wire'"
        )
    if call.via == "wire" or wire_capable:
        return "wire"
    return "litellm"


def _wire_base(provider: str, api_base: str | None) -> str:
    if api_base:
        base = api_base
    else:
        default, envs = WIRE_DEFAULT_BASES[provider]
        base = next((os.environ[e] for e in envs if os.environ.get(e)), default)
    base = base.rstrip("/")
    if provider in OLLAMA_PROVIDERS and not base.endswith("/v1"):
        base += "/v1"
    return base
