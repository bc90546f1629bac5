"""The provider layer: one contract over the offline `echo` model, OpenAI's wire format on
pooled aiohttp sessions, and litellm for everything else. Importing it never imports litellm."""

from llmkit.providers.base import Fallback, ProviderCall, Usage, usage_of
from llmkit.providers.dispatch import aclose, complete, stream
from llmkit.providers.pricing import cost_of
from llmkit.providers.routing import key_env_of, key_is_set, provider_of

__all__ = [
    "Fallback",
    "ProviderCall",
    "Usage",
    "aclose",
    "complete",
    "cost_of",
    "key_env_of",
    "key_is_set",
    "provider_of",
    "stream",
    "usage_of",
]
