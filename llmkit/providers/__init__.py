"""The provider layer: one contract over the transports in `registry.py` (the offline `echo`
model, OpenAI's wire format on pooled aiohttp sessions, and litellm for everything else).
Importing it never imports litellm."""

from llmkit.providers.base import Fallback, ProviderCall, Usage, usage_of
from llmkit.providers.dispatch import aclose, complete, stream
from llmkit.providers.pool import PoolLimits
from llmkit.providers.pool import configure as configure_pool
from llmkit.providers.pricing import cost_of
from llmkit.providers.routing import key_env_of, key_is_set, provider_of

__all__ = [
    "Fallback",
    "PoolLimits",
    "ProviderCall",
    "Usage",
    "aclose",
    "complete",
    "configure_pool",
    "cost_of",
    "key_env_of",
    "key_is_set",
    "provider_of",
    "stream",
    "usage_of",
]
